"""A frame through the INT8 bundle: where its time goes, FP32 (f32) / FP32 (device default) / INT8 side by side,
latency, stream and throughput FPS, compile times on first and second start, and the camera graph against a plain
ResNet34 at the same input size.

    python benchmarks/infer.py [--frames 10] [--calib-frames 16] [--out benchmarks/results/infer.json]

Untimed setup: the trained demo checkpoint, its export, an INT8 bundle calibrated on `--calib-frames` synthetic
scenes of seed 0 (the quantize step times every graph alone at the three precisions), and held-out scenes of seed
2000. Then `bevport bench` runs twice in fresh processes with a fresh model cache: the first run measures the frames
and the first-start compile times, the second only the second-start compile times (from the cache). Last, in this
process, the camera INT8 IR and a plain ResNet34 (classifier, quantized with the same NNCF call) at the camera's
input size, timed alternately on the same core budget. The JSON names the CPU and the ISA OpenVINO used; the goals
are those of the runtime-speed issue, each recorded as met or not.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from export import host, run  # benchmarks/export.py: bevport commands in fresh processes, the host's facts

GOALS = {"host_share_max": 0.10, "int8_vs_fp32_f32_min": 8.0, "int8_vs_fp32_default_min": 2.0,
         "camera_vs_resnet34_max": 1.2, "int8_frame_ms_max": 100.0}


def build_bundle(tmp: Path, calib_frames: int, frames: int, latency_runs: int) -> Path:
    run(["synth-ckpt", "--trained", "--out", str(tmp / "trained.pth"), "-q"])
    run(["export", "--ckpt", str(tmp / "trained.pth"), "--out", str(tmp / "onnx"), "-q"])
    run(["synth-data", "--frames", str(calib_frames + 2), "--seed", "0", "--out", str(tmp / "calib_scenes"), "-q"])
    run(["calibrate", "--onnx", str(tmp / "onnx"), "--data", str(tmp / "calib_scenes"), "--num-samples",
         str(calib_frames), "--holdout", "2", "--out", str(tmp / "calib"), "-q"])
    run(["quantize", "--onnx", str(tmp / "onnx"), "--calib", str(tmp / "calib"), "--latency-runs",
         str(latency_runs), "--out", str(tmp / "ir"), "-q"])
    run(["synth-data", "--frames", str(frames), "--seed", "2000", "--out", str(tmp / "scenes"), "-q"])
    return tmp / "ir"


def bench(tmp: Path, bundle: Path, name: str, frames: int, throughput_frames: int) -> dict:
    out = tmp / f"{name}.json"
    argv = ["bench", "--bundle", str(bundle), "--data", str(tmp / "scenes"), "--num-samples", str(frames),
            "--cache-dir", str(tmp / "ov-cache"), "--out", str(out), "-q"]
    if throughput_frames:
        argv += ["--throughput-frames", str(throughput_frames)]
    seconds, peak = run(argv)
    report = json.loads(out.read_text())
    report["bench_process"] = {"wall_s": round(seconds, 1), "peak_rss_mib": peak}
    return report


def compile_seconds(report: dict) -> dict:
    return {p: {g: d["compile_s"] for g, d in e["stages_files"].items()}
            for p, e in report["precisions"].items() if "same_as" not in e}


def plain_resnet34_onnx(path: Path, shape) -> Path:
    """torchvision's ResNet34 classifier layout (bevport's ResNet34 stages + global pool + 1000-way fc)."""
    import inspect

    import torch
    from torch import nn

    from bevport.models.resnet import ResNet

    class ResNet34(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = ResNet(34, out_indices=(3,))
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            return self.fc(self.body(x)[0].mean(dim=(2, 3)))

    torch.manual_seed(0)
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(ResNet34().eval(), (torch.zeros(shape),), str(path), input_names=["img"],
                      output_names=["logits"], opset_version=13, **kwargs)
    return path


def time_alternately(compiled: dict, feeds: dict, runs: int) -> dict:
    """Median ms per model, the models interleaved run by run so that both see the same machine state."""
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    for k, r in requests.items():
        for _ in range(3):
            r.infer(feeds[k])
    times = {k: [] for k in compiled}
    for _ in range(runs):
        for k, r in requests.items():
            began = time.perf_counter()
            r.infer(feeds[k])
            times[k].append((time.perf_counter() - began) * 1e3)
    return {k: round(float(np.median(v)), 2) for k, v in times.items()}


def camera_vs_resnet34(tmp: Path, bundle: Path, runs: int) -> dict:
    import nncf
    import openvino as ov

    camera = ov.Core().read_model(str(bundle / "quantized_camera.xml"))
    shape = list(camera.inputs[0].get_partial_shape().to_shape())
    calib = [np.load(f)["img"] for f in sorted((tmp / "calib" / "camera").glob("*.npz"))[:8]]
    onnx = plain_resnet34_onnx(tmp / "resnet34.onnx", shape)
    resnet = nncf.quantize(ov.convert_model(str(onnx)), nncf.Dataset(calib), subset_size=len(calib))
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    compiled = {"camera_int8": core.compile_model(camera, "CPU", config),
                "resnet34_int8": core.compile_model(resnet, "CPU", config)}
    feeds = {"camera_int8": calib[0], "resnet34_int8": calib[0]}
    medians = time_alternately(compiled, feeds, runs)
    return {"input_shape": shape, "median_ms": medians, "runs": runs,
            "ratio": round(medians["camera_int8"] / medians["resnet34_int8"], 3)}


def graphs_alone(bundle: Path) -> dict:
    report = json.loads((bundle / "report.json").read_text())
    return {g: {label: round(m["median_ms"], 2) for label, m in r["latency"].items()}
            for g, r in report["graphs"].items()}


def summary(report: dict, alone: dict, resnet: dict) -> dict:
    prec = report["precisions"]
    int8 = prec["int8"]["latency"]
    frame = {p: e["latency"]["stages"]["frame"]["median_ms"] for p, e in prec.items()}
    graphs = list(alone)
    stages = int8["stages"]
    host_ms = {s: v["median_ms"] for s, v in stages.items() if s not in graphs and s != "frame"}
    graphs_ms = {g: stages[g]["median_ms"] for g in graphs if g in stages}
    share = int8["non_model_share"]
    return {
        "int8_frame_ms": frame["int8"], "fp32_f32_frame_ms": frame["fp32"],
        "fp32_default_frame_ms": frame["fp32-default"],
        "int8_host_stages_ms": host_ms, "int8_graph_stages_ms": graphs_ms, "int8_host_share": share,
        "pfe_alone_ms": alone.get("lidar_pfe"),
        "fps": {p: {mode: e[mode]["fps"] for mode in ("latency", "stream", "throughput") if mode in e}
                for p, e in prec.items()},
        "goals": {
            "host_share": {"max": GOALS["host_share_max"], "value": share, "met": share <= GOALS["host_share_max"]},
            "int8_vs_fp32_f32": _ratio_goal(frame["fp32"], frame["int8"], GOALS["int8_vs_fp32_f32_min"]),
            "int8_vs_fp32_default": _ratio_goal(frame["fp32-default"], frame["int8"],
                                                GOALS["int8_vs_fp32_default_min"]),
            "camera_vs_resnet34": {"max": GOALS["camera_vs_resnet34_max"], "value": resnet["ratio"],
                                   "met": resnet["ratio"] <= GOALS["camera_vs_resnet34_max"]},
            "int8_frame_ms": {"max": GOALS["int8_frame_ms_max"], "value": frame["int8"],
                              "met": frame["int8"] <= GOALS["int8_frame_ms_max"]},
        },
    }


def _ratio_goal(reference_ms: float, int8_ms: float, minimum: float) -> dict:
    ratio = round(reference_ms / int8_ms, 3)
    return {"min": minimum, "value": ratio, "met": ratio >= minimum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--calib-frames", type=int, default=16)
    parser.add_argument("--throughput-frames", type=int, default=10)
    parser.add_argument("--latency-runs", type=int, default=20, help="per graph and precision, timed alone")
    parser.add_argument("--resnet-runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/infer.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = build_bundle(tmp, args.calib_frames, args.frames, args.latency_runs)
        first = bench(tmp, bundle, "first", args.frames, args.throughput_frames)
        second = bench(tmp, bundle, "second", 1, 0)
        alone = graphs_alone(bundle)
        resnet = camera_vs_resnet34(tmp, bundle, args.resnet_runs)
    result = {
        "benchmark": "bevport bench on the INT8 bundle of the trained demo checkpoint, held-out synthetic scenes",
        "host": host(),
        "summary": summary(first, alone, resnet),
        "graphs_alone_ms": alone,
        "camera_vs_plain_resnet34": resnet,
        "compile_s": {"first_start": compile_seconds(first), "second_start": compile_seconds(second)},
        "bench": first,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    print(f"INT8 frame {s['int8_frame_ms']:.0f} ms (host share {s['int8_host_share']:.1%}), FP32 f32 "
          f"{s['fp32_f32_frame_ms']:.0f} ms, FP32 default {s['fp32_default_frame_ms']:.0f} ms; camera/ResNet34 "
          f"{resnet['ratio']:.2f} -> {args.out}")


if __name__ == "__main__":
    main()
