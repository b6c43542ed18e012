"""`bevport bench`: per-stage latency and frames per second of the whole pipeline, INT8 against FP32 at f32 and at
the device's default precision (bf16 on AMX CPUs).

Both modes time the architecture pipeline's own `start` / `finish`; nothing here re-implements it. Latency mode runs
frames one at a time, each read and preprocessed before it starts (within a frame the pipeline overlaps what it can,
e.g. V2X's camera and LiDAR branches), after three warm-up iterations on the first frame as the deploy binary does.
Stream and throughput modes stream frames: the next ones are read and preprocessed on a background thread while
IN_FLIGHT frames run (frame N+1 is started before frame N is finished, so one frame's asynchronous graphs run while
the previous frame's remaining graphs and decoding do). Stream mode compiles the graphs as latency mode does (every
request on all cores); throughput mode with OpenVINO's THROUGHPUT hint (several streams of fewer cores each), which
pays off on many cores and not on two. Every report names the CPU and the ISA OpenVINO's CPU plugin can use.
"""
from __future__ import annotations

import itertools
import resource
import time
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from bevport.formats import dataset_or_synthetic
from bevport.runtime.graphs import deploy_graphs
from bevport.runtime.infer import (RuntimeOptions, graph_precisions, iterate_frames, open_core, open_pipeline,
                                   summarize_seconds, with_precisions)
from bevport.runtime.pipeline import PREFETCH, prefetched, prepared_frames
from bevport.runtime.precision import cpu_isa, default_precision

# What `--precision` names: every deploy graph INT8; every graph FP32 at the runtime's FP32 precision (--inference-
# precision, f32 unless asked otherwise); every graph FP32 at the device's own default (bf16 on AMX, f16 on GPUs).
PRECISIONS = ("int8", "fp32", "fp32-default")

WARMUP = 3
IN_FLIGHT = 2


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def host_share(seconds: Dict[str, float], graphs) -> float:
    """The share of a frame's wall time spent in host work: every timed stage that is not a graph, except preparation
    overlapped on the prefetch thread."""
    host = sum(v for stage, v in seconds.items()
               if stage not in graphs and stage not in ("frame", "prepare_background"))
    return host / seconds["frame"]


def latency_run(runtime, dataset, frames: int, warn: Callable, start: int = 0) -> Dict:
    """One frame at a time, each read and preprocessed before it runs: the latency of a frame from its files."""
    outcomes = list(iterate_frames(runtime, dataset, 1, "skip", warn, [], start, prefetch=0))
    for _ in range(WARMUP):
        runtime.detect(runtime.run(outcomes[0].result.inputs))
    per_frame = [o.seconds for o in iterate_frames(runtime, dataset, frames, "skip", warn, [], start, prefetch=0)]
    stages = summarize_seconds(per_frame)
    frame_ms = stages["frame"]["median_ms"]
    graphs = deploy_graphs(runtime.recipe)
    return {"frames": len(per_frame), "stages": stages, "fps": round(1e3 / frame_ms, 3),
            "non_model_share": round(float(np.median([host_share(f, graphs) for f in per_frame])), 4)}


def _frame_stream(runtime, dataset, start: int, warn: Callable) -> Iterator:
    """The dataset's prepared frames from `start`, over and over."""
    while True:
        any_frame = False
        for item in prepared_frames(runtime.pipeline, dataset, start, runtime.options.channel_order, "skip", warn):
            any_frame = True
            yield item
        if not any_frame:
            return


def throughput_run(runtime, dataset, repeat: int, warn: Callable, start: int = 0) -> Dict:
    """Frames per second over `repeat` frames streamed from the dataset: read and preprocessed PREFETCH ahead on a
    background thread, IN_FLIGHT frames started before the oldest is finished."""
    pipeline = runtime.pipeline
    frames = prefetched(itertools.islice(_frame_stream(runtime, dataset, start, warn), repeat), PREFETCH)
    in_flight: List = []
    began = time.perf_counter()
    for _, frame_inputs, _ in frames:
        in_flight.append(pipeline.start(frame_inputs))
        if len(in_flight) == IN_FLIGHT:
            runtime.detect(pipeline.finish(in_flight.pop(0)))
    for result in in_flight:
        runtime.detect(pipeline.finish(result))
    seconds = time.perf_counter() - began
    return {"frames": repeat, "in_flight": IN_FLIGHT, "prefetch": PREFETCH, "fps": round(repeat / seconds, 3)}


def _fp32_request(precision: str, options: RuntimeOptions) -> str:
    return "default" if precision == "fp32-default" else options.inference_precision


def run_bench(recipe, bundle, data, options: RuntimeOptions, precisions: List[str], frames: int = 10,
              split: Optional[str] = None, throughput_frames: int = 0, first_frame: int = 0,
              progress: Callable = lambda m: None,
              warn: Callable = lambda m: None) -> Dict:
    core = open_core(options)
    device_default = default_precision(core, options.device)
    results: Dict[str, Dict] = {}
    with dataset_or_synthetic(recipe, data, split, frames, 0, progress, warn) as (dataset, _):
        for precision in precisions:
            request = _fp32_request(precision, options)
            if precision == "fp32-default" and "fp32" in results \
                    and options.inference_precision in ("default", device_default):
                # the device's default is the precision fp32 already ran at: the same compiled graphs, measured once
                results[precision] = dict(results["fp32"], same_as="fp32",
                                          note=f"{options.device} runs FP32 graphs in {device_default} by default")
                continue
            chosen = graph_precisions(recipe, int8=precision == "int8", fp32=precision != "int8")
            run_options = with_precisions(options, chosen, inference_precision=request)
            progress(f"{precision}: latency over {frames} frames")
            runtime = open_pipeline(recipe, bundle, with_precisions(run_options, chosen, throughput=False), warn, core)
            entry = {"stages_files": runtime.describe(),
                     "latency": latency_run(runtime, dataset, frames, warn, first_frame)}
            if throughput_frames:
                # "stream": each request on every core (LATENCY hint), overlap from prefetch and frames in flight;
                # "throughput": OpenVINO's THROUGHPUT hint (several streams, fewer cores each) on top of that
                progress(f"{precision}: stream over {throughput_frames} frames")
                entry["stream"] = throughput_run(runtime, dataset, throughput_frames, warn, first_frame)
                progress(f"{precision}: throughput over {throughput_frames} frames")
                runtime = open_pipeline(recipe, bundle, with_precisions(run_options, chosen, throughput=True), warn,
                                        core)
                entry["throughput"] = throughput_run(runtime, dataset, throughput_frames, warn, first_frame)
            results[precision] = entry
    report = {"recipe": recipe.name, "bundle": str(bundle), "device": options.device,
              "device_name": core.get_property(options.device, "FULL_DEVICE_NAME"),
              "cpu": cpu_isa(core), "device_default_precision": device_default,
              "inference_precision_fp32": options.inference_precision, "precisions": results,
              "peak_rss_mib": round(_peak_rss_mib(), 1)}
    int8 = results.get("int8", {}).get("latency", {}).get("fps")
    for reference in ("fp32", "fp32-default"):
        if int8 and reference in results:
            key = "int8_speedup" if reference == "fp32" else "int8_speedup_vs_fp32_default"
            report[key] = round(int8 / results[reference]["latency"]["fps"], 3)
    return report
