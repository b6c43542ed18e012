"""`bevport infer`: frames through the deploy graphs on an OpenVINO device, to boxes, prediction files and pictures.

Precision per graph follows the deploy binary: INT8 for every deploy graph by default (`--int8`), `--fp32` for none,
`--int8-graphs a,b` for exactly those. FP32 graphs compile with the f32 inference precision unless
`--inference-precision default` asks for the device's own (bf16 on AMX CPUs, f16 on GPUs); a graph whose IR pins f32
(an INT8 IR that NNCF left FP32) runs at f32 either way. The recipe's dataset format reads frames, writes predictions
and evaluates them.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from bevport.contract import build_contract
from bevport.errors import BevportError, DatasetError
from bevport.formats import dataset_format, dataset_or_synthetic
from bevport.runtime.decode import Detections, decode
from bevport.runtime.graphs import (check_device, compile_graph, deploy_graphs, model_folder, read_graph,
                                   resolve_graphs)
from bevport.runtime.pipeline import (PREFETCH, FrameInputs, FrameResult, pipeline_class, prefetched,
                                     prepared_frames)
from bevport.runtime.precision import HINT, compile_config

DEFAULT_CACHE = Path(os.environ.get("BEVPORT_CACHE", Path.home() / ".cache" / "bevport")) / "ov"


def graph_precisions(recipe, int8: bool = False, fp32: bool = False,
                     only: Optional[Sequence[str]] = None) -> Dict[str, bool]:
    """INT8 or not per deploy graph: all INT8 unless --fp32; `only` names exactly the INT8 graphs."""
    graphs = deploy_graphs(recipe)
    if int8 and fp32:
        raise BevportError("--int8 and --fp32 exclude each other")
    if only:
        unknown = [g for g in only if g not in graphs]
        if unknown:
            raise BevportError(f"--int8-graphs names {', '.join(unknown)}; the deploy graphs of {recipe.name} are "
                               f"{', '.join(graphs)}")
        return {g: g in only for g in graphs}
    return {g: not fp32 for g in graphs}


@dataclass
class RuntimeOptions:
    device: str = "CPU"
    int8: Optional[Dict[str, bool]] = None   # per deploy graph; None: every graph INT8
    inference_precision: str = "f32"    # for FP32 graphs: "f32" or "default"
    cache_dir: Optional[Path] = DEFAULT_CACHE
    channel_order: str = "training"     # or "deploy-binary": true RGB order as Intel's split binary feeds it
    throughput: bool = False
    deploy_cap: bool = False            # the deploy binary's input limits (V2X: first static-V pillars only)


def open_core(options: RuntimeOptions):
    import openvino as ov

    core = ov.Core()
    check_device(core, options.device)
    if options.cache_dir:
        Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(options.cache_dir)})
    return core


def open_pipeline(recipe, bundle: Path, options: RuntimeOptions, warn: Callable = lambda m: None,
                  core=None) -> "RuntimePipeline":
    contract = build_contract(recipe)
    core = core or open_core(options)
    int8 = options.int8 if options.int8 is not None else graph_precisions(recipe)
    files = resolve_graphs(recipe, contract, bundle, int8, warn)
    hint = {"PERFORMANCE_HINT": "THROUGHPUT" if options.throughput else "LATENCY"}
    compiled, described = {}, {}
    for graph, path in files.items():
        quantized = path.suffix == ".xml" and path.name.startswith("quantized_")
        start = time.perf_counter()
        model = read_graph(core, path, contract[graph])
        request = "default" if quantized else options.inference_precision
        compiled[graph] = compile_graph(core, model, options.device, request, hint)
        described[graph] = {"file": path.name, "precision": "int8" if quantized else "fp32",
                            "inference_precision": compile_config(model, request).get(HINT, "default"),
                            "compile_s": round(time.perf_counter() - start, 3)}
    pipeline = pipeline_class(recipe)(recipe, contract, compiled, options.deploy_cap)
    pipeline.attach(model_folder(recipe, bundle))
    return RuntimePipeline(pipeline, described, options)


class RuntimePipeline:
    """The architecture's pipeline on one device, plus decoding, and which file and precision each graph runs."""

    def __init__(self, pipeline, described: Dict[str, Dict], options: RuntimeOptions):
        self.pipeline = pipeline
        self.recipe = pipeline.recipe
        self.contract = pipeline.contract
        self.described = described
        self.options = options

    def run(self, inputs: FrameInputs) -> FrameResult:
        return self.pipeline.run(inputs)

    def detect(self, result: FrameResult) -> Detections:
        with self.pipeline.timed("decode", result):
            return decode(self.pipeline.head_outputs(result), self.recipe, self.contract)

    def describe(self) -> Dict[str, Dict]:
        return self.described


@dataclass
class FrameOutcome:
    frame: object
    result: FrameResult
    detections: Detections
    seconds: Dict[str, float] = field(default_factory=dict)


def iterate_frames(runtime: RuntimePipeline, dataset, limit: Optional[int], on_bad_frame: str, warn: Callable,
                   skipped: List[Dict], start: int = 0, prefetch: int = PREFETCH) -> Iterator[FrameOutcome]:
    """Read, run and decode frames in dataset order from index `start` (e.g. past the calibration frames); an
    unreadable frame is skipped and recorded, or raised. With `prefetch` > 0 the next frames are read and preprocessed
    on a background thread while this one runs.

    Per-frame seconds: each pipeline stage, `prepare` (what the loop waited for the frame's inputs: all of their
    preparation without prefetch), `prepare_background` (with prefetch: the preparation's own time, overlapped) and
    `frame` (the frame's wall time on the loop: prepare + run + decode)."""
    if limit is not None and limit <= 0:
        return
    frames = itertools.islice(prepared_frames(runtime.pipeline, dataset, start, runtime.options.channel_order,
                                              on_bad_frame, warn, skipped), limit)   # nothing read past the limit
    waiting = time.perf_counter()
    for frame, inputs, prepared in prefetched(frames, prefetch):
        began = time.perf_counter()
        result = runtime.run(inputs)
        detections = runtime.detect(result)
        waited = began - waiting
        seconds = dict(result.seconds, prepare=waited, frame=waited + time.perf_counter() - began)
        if prefetch > 0:
            seconds["prepare_background"] = prepared
        yield FrameOutcome(frame, result, detections, seconds)
        waiting = time.perf_counter()


def json_dump(path: Path, data: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def summarize_seconds(per_frame: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Median and p90 in ms per stage over frames."""
    stages = sorted({k for f in per_frame for k in f})
    out = {}
    for stage in stages:
        values = np.array([f[stage] for f in per_frame if stage in f]) * 1e3
        out[stage] = {"median_ms": round(float(np.median(values)), 2),
                      "p90_ms": round(float(np.percentile(values, 90)), 2), "frames": int(values.size)}
    return out


def picture(recipe, outcome: FrameOutcome, show_gt: bool = True, show_latency: bool = True):
    """The recipe's dataset format draws the frame (its cameras, its labels) with the detections and a HUD."""
    latency = outcome.seconds["frame"] * 1e3 if show_latency else None
    return dataset_format(recipe).picture(recipe, outcome.frame, outcome.detections, show_gt, latency)


def run_infer(recipe, bundle: Path, data: Optional[os.PathLike], options: RuntimeOptions,
              num_samples: Optional[int] = None, split: Optional[str] = None, pred_dir: Optional[Path] = None,
              vis_dir: Optional[Path] = None, video: bool = False, on_bad_frame: str = "skip", seed: int = 0,
              first_frame: int = 0, timing_in_pictures: bool = True,
              progress: Callable = lambda m: None, warn: Callable = lambda m: None) -> Dict:
    """Run frames, write predictions, pictures and a video; evaluate when the dataset has labels."""
    from bevport.runtime.vis import VideoWriter

    fmt = dataset_format(recipe)
    for wanted, function, option in ((pred_dir, "write_predictions", "--pred-dir"), (vis_dir, "picture", "--vis-dir")):
        if wanted is not None and not hasattr(fmt, function):
            raise BevportError(f"recipe {recipe.name}: the {recipe.dataset.format} dataset format does not write "
                               f"{'predictions' if function == 'write_predictions' else 'pictures'} yet",
                               f"run without {option}")
    progress(f"compiling graphs for {options.device}")
    runtime = open_pipeline(recipe, bundle, options, warn)
    per_frame, skipped, counts = [], [], []
    with dataset_or_synthetic(recipe, data, split, num_samples or 8, seed, progress, warn) as (dataset, _), \
            contextlib.ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(Path(vis_dir) / "bevfusion.mp4")) if video and vis_dir else None
        ids = []
        for outcome in iterate_frames(runtime, dataset, num_samples, on_bad_frame, warn, skipped, first_frame):
            frame, det = outcome.frame, outcome.detections
            ids.append(frame.id)
            progress(f"frame {frame.id}: {len(det.scores)} boxes in {outcome.seconds['frame'] * 1e3:.0f} ms")
            if pred_dir is not None:
                fmt.write_predictions(pred_dir, frame, det, recipe)
            if vis_dir is not None:
                image = picture(recipe, outcome, show_latency=timing_in_pictures)
                Path(vis_dir).mkdir(parents=True, exist_ok=True)
                image.save(Path(vis_dir) / f"frame_{frame.id}.png")
                if writer is not None:
                    writer.write(image)
            per_frame.append(outcome.seconds)
            counts.append(len(det.scores))
        if not ids:
            raise DatasetError(f"{dataset.root}: no frame could be run ({len(skipped)} skipped)")
        summary = {
            "recipe": recipe.name, "bundle": str(bundle), "device": options.device,
            "stages": runtime.describe(), "frames": ids, "skipped": skipped,
            "boxes_per_frame": counts, "seconds": summarize_seconds(per_frame),
        }
        if pred_dir is not None and hasattr(fmt, "write_results"):     # formats with one results file per run
            summary["results"] = str(fmt.write_results(dataset, pred_dir, ids, recipe))
        ap = fmt.evaluate(dataset, pred_dir, ids, warn=warn) if pred_dir is not None else None
        if ap is not None:
            summary["ap"] = str(ap)
    if pred_dir is not None:
        json_dump(Path(pred_dir) / "infer.json", summary)
    return summary


def with_precisions(options: RuntimeOptions, int8: Dict[str, bool], **changes) -> RuntimeOptions:
    """The same options with other per-graph precisions (and any other field changed)."""
    return replace(options, int8=int8, **changes)
