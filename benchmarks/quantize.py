"""Wall time and peak memory of `bevport calibrate` + `bevport quantize` on synthetic frames, written to JSON.

    python benchmarks/quantize.py [--frames 32] [--holdout 4] [--out benchmarks/results/quantize.json]

Each step is a fresh `bevport` process (peak RSS is that process's own). The synthetic checkpoint, its export and
the synthetic scenes are prepared first and not timed. The FP32-inference share is the time the calibration
pipeline spends inside the four FP32 graphs over the whole calibrate + quantize wall time; NNCF's own statistics
passes (also FP32 inference) are inside `nncf_seconds`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from export import host, run, synthetic_export  # benchmarks/export.py: bevport commands in fresh processes



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="calibration frames")
    parser.add_argument("--holdout", type=int, default=4, help="held-out frames for the report")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quantize.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_export(tmp)
        run(["synth-data", "--frames", str(args.frames + args.holdout), "--out", str(tmp / "scenes"), "-q"])
        calib_s, calib_mib = run(["calibrate", "--onnx", str(tmp / "onnx"), "--data", str(tmp / "scenes"),
                                  "--num-samples", str(args.frames), "--holdout", str(args.holdout),
                                  "--out", str(tmp / "calib"), "-q"])
        quant_s, quant_mib = run(["quantize", "--onnx", str(tmp / "onnx"), "--calib", str(tmp / "calib"),
                                  "--out", str(tmp / "ir"), "-q"])
        manifest = json.loads((tmp / "calib" / "manifest.json").read_text())
        summary = json.loads((tmp / "ir" / "quantize.json").read_text())
        report = json.loads((tmp / "ir" / "report.json").read_text())
        calib_bytes = sum(p.stat().st_size for p in (tmp / "calib").rglob("*.npz"))
    fp32_inference = sum(manifest["seconds"].get(graph, 0.0) for graph in manifest["graphs"])
    total = calib_s + quant_s
    result = {
        "benchmark": f"bevport calibrate ({args.frames} + {args.holdout} held-out synthetic frames) + quantize",
        "calibrate": {"wall_s": round(calib_s, 2), "peak_rss_mib": calib_mib, "stage_seconds": manifest["seconds"],
                      "calibration_set_mib": round(calib_bytes / 2 ** 20, 1)},
        "quantize": {"wall_s": round(quant_s, 2), "peak_rss_mib": quant_mib,
                     "nncf_seconds": {g: e["nncf_seconds"] for g, e in summary["graphs"].items()},
                     "report_seconds": summary.get("report_seconds")},
        "total_wall_s": round(total, 2),
        "fp32_inference_s": round(fp32_inference, 2),
        "fp32_inference_share": round(fp32_inference / total, 3),
        "int8_latency_ms": {g: r["latency"]["int8 (default)"]["median_ms"] for g, r in report["graphs"].items()},
        "fp32_f32_latency_ms": {g: r["latency"]["fp32 (f32)"]["median_ms"] for g, r in report["graphs"].items()},
        "host": dict(host(), nncf=summary["versions"]["nncf"]),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"calibrate {calib_s:.1f} s ({calib_mib:.0f} MiB peak), quantize {quant_s:.1f} s ({quant_mib:.0f} MiB peak); "
          f"FP32 inference {100 * result['fp32_inference_share']:.0f}% of {total:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
