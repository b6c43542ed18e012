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


@task(help={"frames": "number of scenes", "seed": "generator seed", "out": "dataset folder (KITTI layout)"})
def synth_data(c, frames=40, seed=0, out="work/demo/scenes"):
    """Write deterministic synthetic roadside scenes (the built-in default dataset)."""
    c.run(f"{PY} -m bevport synth-data --frames {frames} --seed {seed} --out {out} --overwrite",
          pty=sys.stdout.isatty())


@task(help={"onnx": "export folder", "data": "dataset root (default: synthetic scenes)",
            "num_samples": "calibration frames", "holdout": "held-out frames for the report", "out": "output folder"})
def calibrate(c, onnx="work/onnx", data=None, num_samples=None, holdout=None, out="work/calib",
              recipe="v2xfusion-pp-r34"):
    """Run the FP32 graphs over dataset frames and store each graph's inputs (the calibration set)."""
    extra = "".join(f" --{flag} {value}" for flag, value in
                    (("data", data), ("num-samples", num_samples), ("holdout", holdout)) if value is not None)
    c.run(f"{PY} -m bevport calibrate --recipe {recipe} --onnx {onnx} --out {out}{extra}", pty=sys.stdout.isatty())


@task(help={"onnx": "export folder", "calib": "calibration set", "out": "IR folder"})
def quantize(c, onnx="work/onnx", calib="work/calib", out="work/ir", recipe="v2xfusion-pp-r34"):
    """NNCF INT8 quantization of the four graphs, FP32 IRs and the drift/latency report."""
    c.run(f"{PY} -m bevport quantize --recipe {recipe} --onnx {onnx} --calib {calib} --out {out}",
          pty=sys.stdout.isatty())


def _runtime(c, command, bundle, data, device, extra):
    data_arg = f" --data {data}" if data else ""
    c.run(f"{PY} -m bevport {command} --bundle {bundle}{data_arg} --device {device}{extra}", pty=sys.stdout.isatty())


@task(help={"bundle": "IR folder or release bundle", "data": "dataset (default: synthetic scenes)",
            "device": "CPU, GPU, AUTO ...", "vis": "write pictures and a video"})
def infer(c, bundle="work/ir", data=None, device="CPU", vis=False, preds="work/preds"):
    """Run frames through the bundle: predictions (deploy + KITTI formats), AP when labels exist, pictures."""
    _runtime(c, "infer", bundle, data, device, f" --pred-dir {preds}" + (" --vis-dir work/vis --video" if vis else ""))


@task(help={"bundle": "IR folder or release bundle", "data": "dataset", "device": "OpenVINO device"})
def validate(c, bundle="work/ir", data=None, device="CPU"):
    """Compile every IR on the device and compare FP32 with INT8 on held-out frames -> validate.json."""
    _runtime(c, "validate", bundle, data, device, "")


@task(help={"bundle": "IR folder or release bundle", "data": "dataset", "device": "OpenVINO device"})
def benchmark(c, bundle="work/ir", data=None, device="CPU"):
    """Per-stage latency and FPS, FP32 vs INT8 -> bench.json (`invoke bench` runs the benchmark scripts)."""
    _runtime(c, "bench", bundle, data, device, "")


@task(help={"ckpt": "training checkpoint (.pth)", "data": "dataset root (default: synthetic scenes)",
            "config": "upstream training config", "runner": "docker (default) or local", "device": "CPU or GPU",
            "num_samples": "calibration frames", "force": "redo finished steps", "ca_bundle": "site CA for containers",
            "allow_drift": "report FP32-vs-INT8 drift beyond the recipe's bounds instead of failing"})
def convert(c, ckpt, data=None, config=None, recipe="v2xfusion-pp-r34", runner="docker", device="CPU",
            num_samples=300, holdout=8, work="work/convert", dist="dist", force=False, ca_bundle=None,
            sparsity=False, allow_drift=False):
    """Checkpoint -> ONNX -> calibration -> INT8 IRs -> validation -> release bundle in dist/ (resumable steps)."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.plan import ConvertRequest
    from bevport.convert.run import run_convert

    req = ConvertRequest(Path(ckpt), Path(work), Path(dist), recipe, Path(config) if config else None,
                         Path(data) if data else None, device, int(num_samples), int(holdout), sparsity, allow_drift)
    outcome = run_reporting_errors(run_convert, req, runner, force, Path(ca_bundle) if ca_bundle else None,
                                   progress=lambda m: console.print(f"[dim]convert:[/] {m}"))
    console.print(f"[green]converted[/] ({', '.join(f'{k} {v}' for k, v in outcome.items())}) -> {dist}")


@task
def demo(c, work="work/demo"):
    """Everything on built-in defaults: synthetic checkpoint and scenes -> ONNX -> INT8 IRs -> infer, bench."""
    synth_ckpt(c, out=f"{work}/synthetic_seed0.pth")
    export(c, ckpt=f"{work}/synthetic_seed0.pth", out=f"{work}/onnx")
    synth_data(c, out=f"{work}/scenes")
    calibrate(c, onnx=f"{work}/onnx", data=f"{work}/scenes", num_samples=32, holdout=8, out=f"{work}/calib")
    quantize(c, onnx=f"{work}/onnx", calib=f"{work}/calib", out=f"{work}/ir")
    synth_data(c, frames=8, seed=1, out=f"{work}/heldout")
    _runtime(c, "infer", f"{work}/ir", f"{work}/heldout", "CPU",
             f" --pred-dir {work}/preds --vis-dir {work}/vis --video")
    _runtime(c, "bench", f"{work}/ir", f"{work}/heldout", "CPU", " --num-samples 4")


@task(help={"slow": "run only the slow end-to-end tests", "k": "pytest -k expression"})
def test(c, slow=False, k=None):
    """The test suite CI runs (fast); --slow runs the end-to-end tests marked slow."""
    args = ["-q"] + (["-m", "slow"] if slow else []) + (["-k", f"'{k}'"] if k else [])
    c.run(f"{PY} -m pytest {' '.join(args)}", pty=sys.stdout.isatty())


@task
def bench(c):
    """Export, geometry, calibrate+quantize and inference benchmarks -> benchmarks/results/*.json."""
    c.run(f"{PY} benchmarks/export.py")
    c.run(f"{PY} benchmarks/pool.py")
    with c.cd("benchmarks"):
        c.run(f"{PY} quantize.py --out results/quantize.json")
        c.run(f"{PY} infer.py --out results/infer.json")
