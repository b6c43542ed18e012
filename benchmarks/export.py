"""Wall time and peak memory of `bevport export` on the synthetic checkpoint, written to JSON.

    python benchmarks/export.py [--out benchmarks/results/export.json] [--repeat 1]

Each run is a fresh `bevport export` process, so its peak RSS is that of one whole export (load, trace, onnxsim,
OpenVINO parity). The synthetic checkpoint is written once beside the results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(argv):
    """One `bevport <argv>` in a fresh process; returns (wall seconds, that process's own peak RSS in MiB)."""
    child = ("import json, resource, sys\n"
             "from bevport.cli import main\n"
             "try:\n    main(sys.argv[1:])\n"
             "finally:\n    print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), file=sys.stderr)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child] + argv, check=True, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return seconds, round(peak_kib / 1024, 1)


def host() -> dict:
    """The machine a benchmark ran on: CPU model, cores, and the ISA OpenVINO's CPU plugin can use (AMX, AVX512 ...)
    with the precision it runs FP32 graphs in by default. Every benchmark JSON carries it."""
    import openvino as ov

    from bevport.runtime.precision import cpu_isa

    return dict(cpu_isa(ov.Core()), cores=os.cpu_count(), python=platform.python_version())


def synthetic_export(folder: Path) -> Path:
    """Untimed setup for the other benchmarks: the synthetic checkpoint and its export in `folder`."""
    run(["synth-ckpt", "--out", str(folder / "s.pth"), "-q"])
    run(["export", "--ckpt", str(folder / "s.pth"), "--out", str(folder / "onnx"), "-q"])
    return folder / "onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export.json"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = args.out.parent / f"synthetic_seed{args.seed}.pth"
    synth_s, _ = run(["synth-ckpt", "--seed", str(args.seed), "--out", str(ckpt), "-q"])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            seconds, peak = run(["export", "--ckpt", str(ckpt), "--out", os.path.join(tmp, f"onnx{i}"), "-q"])
            runs.append({"wall_s": round(seconds, 2), "peak_rss_mib": peak})
        parity = json.loads(Path(tmp, "onnx0", "parity.json").read_text())
    import torch

    result = {
        "benchmark": "bevport export (5 graphs + OpenVINO parity) on the synthetic checkpoint",
        "runs": runs,
        "synth_ckpt_wall_s": round(synth_s, 2),
        "worst_parity_rel_error": max(o["max_rel_error"] for g in parity["graphs"].values()
                                      for o in g["outputs"].values()),
        "host": dict(host(), torch=torch.__version__),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
