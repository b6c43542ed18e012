"""bevport's graphs against the upstream training trees (`bevport parity --source`), both recipes, written to JSON.

    BEVPORT_REFERENCE_SRC=<folder> python benchmarks/reference_parity.py [--out benchmarks/results/reference_parity.json]

The folder holds one tree per recipe (DEVELOPERS.md). The runs take place in the export image (tree mounted
read-only at /src): V2X with the trained demo weights on seeded inputs and 3 synthetic roadside frames, the
camera-only model with seeded random weights (no trained weights exist for it) on seeded inputs and 2 synthetic
surround frames. Per graph: the largest OpenVINO error against the tree in float64 (seeded and on frames), the
tightest bound, bevport's native model in float64 against the tree, the decoded-box comparison and the extra checks;
and the wall time of each parity run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from export import host  # benchmarks/export.py

from bevport import __version__

IMAGE = f"bevport-export:{__version__}"
RUNS = {  # recipe: (synth-ckpt arguments, dataset frames)
    "v2xfusion-pp-r34": (["--trained"], 3),
    "bevfusion-cam-swint": (["--seed", "0"], 2),
}


def in_image(tree: Path, work: Path, args) -> None:
    argv = ["docker", "run", "--rm", "-u", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/work",
            "-v", f"{tree.resolve()}:/src:ro", "-v", f"{work}:/work", IMAGE, "bevport"] + list(args)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary(report: dict) -> dict:
    graphs = {}
    for key, g in report["graphs"].items():
        frames = g.get("frames") or []
        graphs[g["file"]] = {
            "openvino_rel_error": max(o["max_rel_error"] for o in g["outputs"].values()),
            "openvino_rel_error_frames": max((o["max_rel_error"] for f in frames for o in f["outputs"].values()),
                                             default=None),
            "bound": min(o["bound"] for o in g["outputs"].values()),
            "native_f64_rel_error": max(o.get("native_f64_rel_error", 0.0) for o in g["outputs"].values()),
            "decoded": g.get("decoded"), "decoded_frames": [f.get("decoded") for f in frames if f.get("decoded")],
            "checks": g.get("checks")}
    calls = {m: e["calls"] for m, e in report["reference"]["extensions"].items() if e["calls"]}
    return {"passed": report["passed"], "inputs": report["inputs"], "graphs": graphs, "standin_calls": calls,
            "shims": report["shims"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reference_parity.json"))
    args = parser.parse_args()
    src = os.environ.get("BEVPORT_REFERENCE_SRC")
    if not src:
        sys.exit("BEVPORT_REFERENCE_SRC is unset: the folder with the upstream training trees (DEVELOPERS.md)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, (ckpt_args, frames) in RUNS.items():
            tree, work = Path(src) / recipe, Path(tmp, recipe)
            work.mkdir()
            os.chmod(work, 0o777)
            in_image(tree, work, ["synth-ckpt", "--recipe", recipe, "--out", "/work/ckpt.pth", "-q"] + ckpt_args)
            in_image(tree, work, ["synth-data", "--recipe", recipe, "--frames", str(frames + 1), "--out",
                                  "/work/scenes", "-q"])
            start = time.perf_counter()
            in_image(tree, work, ["parity", "--recipe", recipe, "--ckpt", "/work/ckpt.pth", "--source", "/src",
                                  "--data", "/work/scenes", "--frames", str(frames), "--out", "/work/parity.json",
                                  "-q"])
            results[recipe] = dict(summary(json.loads((work / "parity.json").read_text())),
                                   checkpoint=" ".join(ckpt_args), wall_s=round(time.perf_counter() - start, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "bevport parity --source against the upstream trees (export image)",
                                    "image": IMAGE, "recipes": results, "host": host()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
