"""`bevport bench`: per-stage latency and frames per second of the whole pipeline, FP32 against INT8.

Latency mode runs frames one at a time (camera and LiDAR branches overlapped), after three warm-up iterations on
the first frame as the deploy binary does. Throughput mode keeps several camera requests in flight through an
AsyncInferQueue, so one frame's camera graph runs while the previous frame's fuser, head and decoding do.
Frames are read and preprocessed before timing starts in throughput mode; latency mode includes reading.
"""
from __future__ import annotations

import resource
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from bevport.runtime.infer import (RuntimeOptions, dataset_or_synthetic, iterate_frames, open_core, open_pipeline,
                                   stage_precisions, summarize_seconds)
from bevport.runtime.pipeline import FrameResult

MODEL_STAGES = ("camera", "fuser", "head")      # the LiDAR graph runs inside the camera graph's window
NUMPY_STAGES = ("read_preprocess_voxelize", "bev_pool", "scatter", "decode")
WARMUP = 3


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def latency_run(pipeline, dataset, frames: int, warn: Callable, start: int = 0) -> Dict:
    outcomes = list(iterate_frames(pipeline, dataset, 1, "skip", warn, [], start))
    for _ in range(WARMUP):
        pipeline.detect(pipeline.run(outcomes[0].result.inputs))
    per_frame = [o.seconds for o in iterate_frames(pipeline, dataset, frames, "skip", warn, [], start)]
    stages = summarize_seconds(per_frame)
    frame_ms = stages["frame"]["median_ms"]
    overhead = [sum(f.get(s, 0.0) for s in NUMPY_STAGES) / f["frame"] for f in per_frame]
    return {"frames": len(per_frame), "stages": stages, "fps": round(1e3 / frame_ms, 3),
            "non_model_share": round(float(np.median(overhead)), 4)}


def throughput_run(pipeline, inputs: List, repeat: int) -> Dict:
    """Frames per second with the camera graph pipelined across frames (AsyncInferQueue)."""
    import openvino as ov

    spec = pipeline.contract["camera"]
    queue = ov.AsyncInferQueue(pipeline.compiled["camera"], 0)
    done: Dict[int, Dict[str, np.ndarray]] = {}
    queue.set_callback(lambda request, i: done.__setitem__(
        i, {t.name: request.get_tensor(t.name).data.copy() for t in spec.outputs}))
    sequence = [inputs[i % len(inputs)] for i in range(repeat)]
    pending: Dict[int, tuple] = {}
    start = time.perf_counter()
    for i, frame_inputs in enumerate(sequence):
        queue.start_async({spec.inputs[0].name: frame_inputs.img}, i)
        result = FrameResult(frame_inputs)
        pending[i] = (result, pipeline.lidar_bev(result))
        _finish_ready(pipeline, done, pending, block=False)
    queue.wait_all()
    _finish_ready(pipeline, done, pending, block=True)
    seconds = time.perf_counter() - start
    return {"frames": repeat, "jobs": len(queue), "fps": round(repeat / seconds, 3)}


def _finish_ready(pipeline, done, pending, block: bool) -> None:
    for i in sorted(pending):
        if i not in done:
            if block:
                raise RuntimeError(f"camera request {i} did not complete")
            return
        result, lidar_bev = pending.pop(i)
        camera = done.pop(i)
        result.outputs["camera"] = camera
        cam_bev = pipeline.pool(result, camera)
        fuser, head = pipeline.contract["fuser"], pipeline.contract["head"]
        middle = pipeline._run("fuser", {fuser.inputs[0].name: cam_bev, fuser.inputs[1].name: lidar_bev}, result)
        pipeline._run("head", {head.inputs[0].name: middle[fuser.outputs[0].name]}, result)
        pipeline.detect(result)


def run_bench(recipe, bundle, data, options: RuntimeOptions, precisions: List[str], frames: int = 10,
              split: Optional[str] = None, throughput_frames: int = 0, first_frame: int = 0,
              progress: Callable = lambda m: None,
              warn: Callable = lambda m: None) -> Dict:
    core = open_core(options)
    results = {}
    with dataset_or_synthetic(data, split, frames, 0, progress, warn) as dataset:
        for precision in precisions:
            chosen = stage_precisions(int8=precision == "int8", fp32=precision == "fp32")
            run_options = RuntimeOptions(options.device, chosen, options.inference_precision, options.cache_dir,
                                         options.channel_order, False)
            progress(f"{precision}: latency over {frames} frames")
            pipeline = open_pipeline(recipe, bundle, run_options, warn, core)
            entry = {"stages_files": pipeline.describe(),
                     "latency": latency_run(pipeline, dataset, frames, warn, first_frame)}
            if throughput_frames:
                progress(f"{precision}: throughput over {throughput_frames} frames")
                run_options.throughput = True
                pipeline = open_pipeline(recipe, bundle, run_options, warn, core)
                inputs = [o.result.inputs
                          for o in iterate_frames(pipeline, dataset, min(frames, 4), "skip", warn, [], first_frame)]
                entry["throughput"] = throughput_run(pipeline, inputs, throughput_frames)
            results[precision] = entry
    report = {"recipe": recipe.name, "bundle": str(bundle), "device": options.device,
              "device_name": core.get_property(options.device, "FULL_DEVICE_NAME"),
              "inference_precision_fp32": options.inference_precision, "precisions": results,
              "peak_rss_mib": round(_peak_rss_mib(), 1)}
    if "fp32" in results and "int8" in results:
        report["int8_speedup"] = round(results["int8"]["latency"]["fps"] / results["fp32"]["latency"]["fps"], 3)
    return report
