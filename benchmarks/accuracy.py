"""Detection accuracy of the built-in trained demo weights at FP32, FP32 at the device default and INT8, to JSON.

    python benchmarks/accuracy.py [--eval-frames 60] [--calib-frames 64] [--work work/accuracy]
                                  [--out benchmarks/results/accuracy.json]

Setup (each step a fresh `bevport` process, skipped when its output exists in --work): `synth-ckpt --trained`,
`export`, calibration scenes of seed 0 (the demo's), evaluation scenes of seed 2000 (neither is the training seed),
`calibrate` + `quantize`. Then `bevport infer` runs the evaluation scenes once per configuration and bevport's
KITTI R40 evaluator scores each: every graph FP32 with the f32 hint, every graph FP32 at the device's default
precision (bf16 on AMX CPUs), every graph INT8, and INT8 one graph at a time (the others FP32 at f32), which
attributes the INT8 drop to a graph. AP per class and difficulty, 3D and BEV, with the drop against FP32.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export import host, run  # benchmarks/export.py: bevport commands in fresh processes

CLASSES = ("Car", "Pedestrian", "Cyclist")


def _once(path: Path, argv) -> None:
    if not path.exists():
        run(argv)


def prepare(work: Path, calib_frames: int, holdout: int, eval_frames: int, recipe: str) -> dict:
    r = ["--recipe", recipe]
    paths = {k: work / k for k in ("ckpt.pth", "onnx", "calib-scenes", "eval-scenes", "calib", "bundle")}
    _once(paths["ckpt.pth"], ["synth-ckpt", *r, "--trained", "--out", str(paths["ckpt.pth"]), "-q"])
    _once(paths["onnx"], ["export", *r, "--ckpt", str(paths["ckpt.pth"]), "--out", str(paths["onnx"]), "-q"])
    _once(paths["calib-scenes"], ["synth-data", *r, "--seed", "0", "--frames", str(calib_frames + holdout),
                                  "--out", str(paths["calib-scenes"]), "-q"])
    _once(paths["eval-scenes"], ["synth-data", *r, "--seed", "2000", "--frames", str(eval_frames),
                                 "--out", str(paths["eval-scenes"]), "-q"])
    _once(paths["calib"], ["calibrate", *r, "--onnx", str(paths["onnx"]), "--data", str(paths["calib-scenes"]),
                           "--num-samples", str(calib_frames), "--holdout", str(holdout),
                           "--out", str(paths["calib"]), "-q"])
    _once(paths["bundle"], ["quantize", *r, "--onnx", str(paths["onnx"]), "--calib", str(paths["calib"]),
                            "--out", str(paths["bundle"]), "-q"])
    return paths


def configurations(graphs):
    yield "fp32 (f32)", ["--fp32", "--inference-precision", "f32"]
    yield "fp32 (default)", ["--fp32", "--inference-precision", "default"]
    yield "int8", ["--int8"]
    for graph in graphs:
        yield f"int8 {graph} only", ["--int8-graphs", graph]


def score(ap_json: Path) -> dict:
    classes = json.loads(ap_json.read_text())["classes"]
    return {cls: {d: {"AP_3D": round(v["AP_3D"], 2), "AP_BEV": round(v["AP_BEV"], 2), "num_gt": v["num_gt"]}
                  for d, v in classes[cls].items()} for cls in CLASSES}


def drops(result: dict, reference: dict) -> dict:
    return {cls: {d: {m: round(reference[cls][d][m] - result[cls][d][m], 2) for m in ("AP_3D", "AP_BEV")}
                  for d in result[cls]} for cls in result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="v2xfusion-pp-r34")
    parser.add_argument("--eval-frames", type=int, default=60)
    parser.add_argument("--calib-frames", type=int, default=64)
    parser.add_argument("--holdout", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("work/accuracy"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.work, args.calib_frames, args.holdout, args.eval_frames, args.recipe)
    quantized = json.loads((paths["bundle"] / "quantize.json").read_text())
    int8_graphs = [g for g, e in quantized["graphs"].items() if e["precision"] == "int8"]
    results = {}
    for name, flags in configurations(int8_graphs):
        pred = args.work / "pred" / name.replace(" ", "_").replace("(", "").replace(")", "")
        run(["infer", "--recipe", args.recipe, "--bundle", str(paths["bundle"]), "--data", str(paths["eval-scenes"]),
             "--pred-dir", str(pred), "--no-cache", "-q", *flags])
        results[name] = score(pred / "ap.json")
        print(f"{name:>22}: " + "  ".join(f"{c} BEV {results[name][c]['moderate']['AP_BEV']:5.1f} "
                                          f"3D {results[name][c]['moderate']['AP_3D']:5.1f}" for c in CLASSES),
              file=sys.stderr)
    reference = results["fp32 (f32)"]
    out = {
        "benchmark": f"KITTI R40 AP of the trained demo weights on {args.eval_frames} synthetic frames (seed 2000); "
                     f"INT8 calibrated on {args.calib_frames} frames of seed 0",
        "checkpoint": "bevport synth-ckpt --trained",
        "quantize": {"settings": quantized["settings"],
                     "graphs": {g: {k: e.get(k) for k in ("precision", "fake_quantize_ops", "ignored_types")}
                                for g, e in quantized["graphs"].items()}},
        "ap": results,
        "drop_vs_fp32": {name: drops(r, reference) for name, r in results.items() if name != "fp32 (f32)"},
        "host": host(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
