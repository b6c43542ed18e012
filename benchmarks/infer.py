"""Per-stage latency, end-to-end frames per second and the non-model share of `bevport bench`, FP32 vs INT8.

    python benchmarks/infer.py [--frames 10] [--calib-frames 16] [--out benchmarks/results/infer.json]

Prepares (untimed) the synthetic checkpoint, its export, synthetic scenes and an INT8 bundle calibrated on
`--calib-frames` of them, then runs `bevport bench` on other scenes in a fresh process and copies its JSON,
adding the targets of the runtime issue: INT8 at least 3x FP32 end to end, non-model time under 15% at INT8.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from export import run, synthetic_export  # benchmarks/export.py: bevport commands in fresh processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--calib-frames", type=int, default=16)
    parser.add_argument("--throughput-frames", type=int, default=12)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/infer.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_export(tmp)
        run(["synth-data", "--frames", str(args.calib_frames + 2), "--out", str(tmp / "calib_scenes"), "-q"])
        run(["calibrate", "--onnx", str(tmp / "onnx"), "--data", str(tmp / "calib_scenes"), "--num-samples",
             str(args.calib_frames), "--holdout", "2", "--out", str(tmp / "calib"), "-q"])
        run(["quantize", "--onnx", str(tmp / "onnx"), "--calib", str(tmp / "calib"), "--latency-runs", "1",
             "--out", str(tmp / "ir"), "-q"])
        run(["synth-data", "--frames", str(args.frames), "--seed", "1", "--out", str(tmp / "scenes"), "-q"])
        seconds, peak = run(["bench", "--bundle", str(tmp / "ir"), "--data", str(tmp / "scenes"), "--device",
                             args.device, "--num-samples", str(args.frames), "--throughput-frames",
                             str(args.throughput_frames), "--no-cache", "--out", str(tmp / "bench.json"), "-q"])
        report = json.loads((tmp / "bench.json").read_text())
    int8, fp32 = report["precisions"]["int8"]["latency"], report["precisions"]["fp32"]["latency"]
    report["bench_process"] = {"wall_s": round(seconds, 1), "peak_rss_mib": peak}
    report["targets"] = {
        "int8_speedup_min": 3.0, "int8_speedup": report["int8_speedup"],
        "int8_speedup_met": report["int8_speedup"] >= 3.0,
        "int8_non_model_share_max": 0.15, "int8_non_model_share": int8["non_model_share"],
        "int8_non_model_share_met": int8["non_model_share"] < 0.15,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"INT8 {int8['fps']:.2f} fps vs FP32 {fp32['fps']:.2f} fps ({report['int8_speedup']:.2f}x); "
          f"non-model share at INT8 {int8['non_model_share']:.1%} -> {args.out}")


if __name__ == "__main__":
    main()
