"""`bevport bench`: per-stage latency and frames per second of the whole pipeline, FP32 against INT8.

Both modes time the architecture pipeline's own `run` (`start` + `finish`); nothing here re-implements it. Latency
mode runs frames one at a time (within a frame the pipeline overlaps what it can, e.g. V2X's camera and LiDAR
branches), after three warm-up iterations on the first frame as the deploy binary does; it includes reading and
preprocessing. Throughput mode keeps two frames in flight: frame N+1 is started before frame N is finished, so one
frame's asynchronous graphs run while the previous frame's remaining graphs and decoding do. Its frames are read and
preprocessed before timing starts. Every report names the CPU and the ISA OpenVINO's CPU plugin can use.
"""
from __future__ import annotations

import resource
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from bevport.formats import dataset_or_synthetic
from bevport.runtime.graphs import deploy_graphs
from bevport.runtime.infer import (RuntimeOptions, graph_precisions, iterate_frames, open_core, open_pipeline,
                                   summarize_seconds, with_precisions)
from bevport.runtime.precision import cpu_isa

WARMUP = 3
IN_FLIGHT = 2


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def host_share(seconds: Dict[str, float], graphs) -> float:
    """The share of a frame's wall time spent in host work (every timed stage that is not a graph)."""
    host = sum(v for stage, v in seconds.items() if stage not in graphs and stage != "frame")
    return host / seconds["frame"]


def latency_run(runtime, dataset, frames: int, warn: Callable, start: int = 0) -> Dict:
    outcomes = list(iterate_frames(runtime, dataset, 1, "skip", warn, [], start))
    for _ in range(WARMUP):
        runtime.detect(runtime.run(outcomes[0].result.inputs))
    per_frame = [o.seconds for o in iterate_frames(runtime, dataset, frames, "skip", warn, [], start)]
    stages = summarize_seconds(per_frame)
    frame_ms = stages["frame"]["median_ms"]
    graphs = deploy_graphs(runtime.recipe)
    return {"frames": len(per_frame), "stages": stages, "fps": round(1e3 / frame_ms, 3),
            "non_model_share": round(float(np.median([host_share(f, graphs) for f in per_frame])), 4)}


def throughput_run(runtime, inputs: List, repeat: int) -> Dict:
    """Frames per second with IN_FLIGHT frames started before the oldest is finished."""
    pipeline = runtime.pipeline
    sequence = [inputs[i % len(inputs)] for i in range(repeat)]
    in_flight: List = []
    start = time.perf_counter()
    for frame_inputs in sequence:
        in_flight.append(pipeline.start(frame_inputs))
        if len(in_flight) == IN_FLIGHT:
            runtime.detect(pipeline.finish(in_flight.pop(0)))
    for result in in_flight:
        runtime.detect(pipeline.finish(result))
    seconds = time.perf_counter() - start
    return {"frames": repeat, "in_flight": IN_FLIGHT, "fps": round(repeat / seconds, 3)}


def run_bench(recipe, bundle, data, options: RuntimeOptions, precisions: List[str], frames: int = 10,
              split: Optional[str] = None, throughput_frames: int = 0, first_frame: int = 0,
              progress: Callable = lambda m: None,
              warn: Callable = lambda m: None) -> Dict:
    core = open_core(options)
    results = {}
    with dataset_or_synthetic(recipe, data, split, frames, 0, progress, warn) as (dataset, _):
        for precision in precisions:
            chosen = graph_precisions(recipe, int8=precision == "int8", fp32=precision == "fp32")
            progress(f"{precision}: latency over {frames} frames")
            runtime = open_pipeline(recipe, bundle, with_precisions(options, chosen, throughput=False), warn, core)
            entry = {"stages_files": runtime.describe(),
                     "latency": latency_run(runtime, dataset, frames, warn, first_frame)}
            if throughput_frames:
                progress(f"{precision}: throughput over {throughput_frames} frames")
                runtime = open_pipeline(recipe, bundle, with_precisions(options, chosen, throughput=True), warn, core)
                inputs = [o.result.inputs
                          for o in iterate_frames(runtime, dataset, min(frames, 4), "skip", warn, [], first_frame)]
                entry["throughput"] = throughput_run(runtime, inputs, throughput_frames)
            results[precision] = entry
    report = {"recipe": recipe.name, "bundle": str(bundle), "device": options.device,
              "device_name": core.get_property(options.device, "FULL_DEVICE_NAME"),
              "cpu": cpu_isa(core),
              "inference_precision_fp32": options.inference_precision, "precisions": results,
              "peak_rss_mib": round(_peak_rss_mib(), 1)}
    if "fp32" in results and "int8" in results:
        report["int8_speedup"] = round(results["int8"]["latency"]["fps"] / results["fp32"]["latency"]["fps"], 3)
    return report
