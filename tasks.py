"""invoke tasks: thin wrappers that resolve paths and call the `bevport` CLI (all logic lives in the package)."""
from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

ROOT = Path(__file__).resolve().parent
PY = sys.executable


@task(help={"seed": "generator seed", "out": "checkpoint to write"})
def synth_ckpt(c, seed=0, out="work/demo/synthetic_seed0.pth", recipe="v2xfusion-pp-r34"):
    """Write the deterministic synthetic checkpoint (the built-in default)."""
    c.run(f"{PY} -m bevport synth-ckpt --recipe {recipe} --seed {seed} --out {out}", pty=sys.stdout.isatty())


@task(help={"ckpt": "training checkpoint (.pth)", "config": "upstream training config (optional)",
            "out": "output folder", "sparsity": "apply 2:4 sparsity masks"})
def export(c, ckpt, out="work/onnx", recipe="v2xfusion-pp-r34", config=None, sparsity=False):
    """Checkpoint -> the deploy graphs as ONNX, with an OpenVINO parity check (runs in this Python env)."""
    extra = (f" --config {config}" if config else "") + (" --sparsity" if sparsity else "")
    c.run(f"{PY} -m bevport export --recipe {recipe} --ckpt {ckpt} --out {out}{extra}", pty=sys.stdout.isatty())


@task
def demo(c, work="work/demo"):
    """Everything on built-in defaults: synthetic checkpoint, then export."""
    synth_ckpt(c, out=f"{work}/synthetic_seed0.pth")
    export(c, ckpt=f"{work}/synthetic_seed0.pth", out=f"{work}/onnx")


@task(help={"slow": "run only the slow end-to-end tests", "k": "pytest -k expression"})
def test(c, slow=False, k=None):
    """The test suite CI runs (fast); --slow runs the end-to-end tests marked slow."""
    args = ["-q"] + (["-m", "slow"] if slow else []) + (["-k", f"'{k}'"] if k else [])
    c.run(f"{PY} -m pytest {' '.join(args)}", pty=sys.stdout.isatty())


@task
def bench(c):
    """Export wall time and peak memory -> benchmarks/results/export.json."""
    c.run(f"{PY} benchmarks/export.py")
