"""`bevport infer`: frames through the deploy graphs on an OpenVINO device, to boxes, prediction files and pictures.

Precision per stage follows the deploy binary's flags: INT8 for every stage by default (`--int8`), `--fp32` for
none, and `--int8-camera/-pfe/-fuser/-head` switch single stages on. FP32 graphs compile with the f32 inference
precision unless `--inference-precision default` asks for the device's own (bf16 on AMX CPUs, f16 on GPUs).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from bevport.contract import build_contract
from bevport.data.dataset import Dataset, open_dataset
from bevport.errors import DatasetError
from bevport.runtime.decode import Detections, decode
from bevport.runtime.graphs import STAGE_OF_GRAPH, check_device, compile_graph, read_graph, resolve_graphs
from bevport.runtime.pipeline import FrameResult, Pipeline, prepared_frames

GRAPHS = tuple(STAGE_OF_GRAPH)          # camera, lidar_pfe, fuser, head
DEFAULT_CACHE = Path(os.environ.get("BEVPORT_CACHE", Path.home() / ".cache" / "bevport")) / "ov"


def stage_precisions(int8: bool = False, fp32: bool = False, only: Optional[List[str]] = None) -> Dict[str, bool]:
    """The deploy binary's rule: all INT8 unless --fp32; per-stage --int8-<graph> flags switch a stage on."""
    if int8 and fp32:
        raise ValueError("--int8 and --fp32 exclude each other")
    base = not fp32
    chosen = {graph: base for graph in GRAPHS}
    for graph in only or []:
        chosen[graph] = True
    return chosen


@dataclass
class RuntimeOptions:
    device: str = "CPU"
    int8: Dict[str, bool] = field(default_factory=lambda: stage_precisions())
    inference_precision: str = "f32"    # for FP32 graphs: "f32" or "default"
    cache_dir: Optional[Path] = DEFAULT_CACHE
    channel_order: str = "training"     # or "deploy-binary": true RGB order as Intel's split binary feeds it
    throughput: bool = False


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
    files = resolve_graphs(recipe, contract, bundle, options.int8, warn)
    hint = {"PERFORMANCE_HINT": "THROUGHPUT" if options.throughput else "LATENCY"}
    compiled, precision = {}, {}
    for stage, path in files.items():
        int8 = path.suffix == ".xml" and path.name.startswith("quantized_")
        precision[stage] = "int8" if int8 else "fp32"
        mode = "default" if int8 else options.inference_precision
        start = time.perf_counter()
        compiled[stage] = compile_graph(core, read_graph(core, path, contract[stage]), options.device, mode, hint)
        precision[stage + "_compile_s"] = round(time.perf_counter() - start, 3)
    return RuntimePipeline(recipe, contract, compiled, files, precision, options)


class RuntimePipeline(Pipeline):
    """A Pipeline that also decodes boxes, and remembers which file and precision each stage runs."""

    def __init__(self, recipe, contract, compiled, files: Dict[str, Path], precision: Dict, options: RuntimeOptions):
        super().__init__(recipe, contract, compiled)
        self.files = files
        self.precision = precision
        self.options = options

    def detect(self, result: FrameResult) -> Detections:
        with self.timed("decode", result):
            return decode(result.head_outputs, self.recipe, self.contract)

    def describe(self) -> Dict[str, Dict]:
        return {stage: {"file": path.name, "precision": self.precision[stage],
                        "compile_s": self.precision[stage + "_compile_s"]} for stage, path in self.files.items()}


@contextlib.contextmanager
def dataset_or_synthetic(data: Optional[os.PathLike], split: Optional[str], frames: int, seed: int,
                         progress: Callable, warn: Callable) -> Iterator[Dataset]:
    """The user's dataset, or `frames` synthetic scenes written to a temporary folder for the run."""
    if data is not None:
        yield open_dataset(data, split)
        return
    from bevport.data.scenes import write_synthetic_dataset

    warn(f"no --data: running on {frames} synthetic scenes (seed {seed})")
    with tempfile.TemporaryDirectory(prefix="bevport-scenes-") as tmp:
        progress(f"writing {frames} synthetic scenes")
        yield open_dataset(write_synthetic_dataset(Path(tmp) / "scenes", frames=frames, seed=seed))


@dataclass
class FrameOutcome:
    frame: object
    result: FrameResult
    detections: Detections
    seconds: Dict[str, float]


def iterate_frames(pipeline: RuntimePipeline, dataset: Dataset, limit: Optional[int], on_bad_frame: str,
                   warn: Callable, skipped: List[Dict], start: int = 0) -> Iterator[FrameOutcome]:
    """Read, run and decode frames in dataset order from index `start` (e.g. past the calibration frames); an
    unreadable frame is skipped and recorded, or raised."""
    if limit is not None and limit <= 0:
        return
    count = 0
    for frame, inputs, prepared in prepared_frames(pipeline.recipe, pipeline.contract, dataset, start,
                                                   pipeline.options.channel_order, on_bad_frame, warn, skipped):
        began = time.perf_counter()
        result = pipeline.run(inputs)
        detections = pipeline.detect(result)
        seconds = dict(result.seconds, read_preprocess_voxelize=prepared,
                       frame=prepared + time.perf_counter() - began)
        yield FrameOutcome(frame, result, detections, seconds)
        count += 1
        if limit is not None and count >= limit:
            return


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


def _ground_truth(frame, class_names):
    from bevport.runtime.kitti import kitti_class_labels, kitti_to_lidar_boxes

    objects = [o for o in (frame.objects or []) if hasattr(o, "location") and o.type != "DontCare"]
    if not objects:
        return None, None
    # Labels carry their own (dair2kitti) rotation convention; result2kitti's is for writing predictions.
    boxes = kitti_to_lidar_boxes(objects, frame.calib, heading="dair2kitti")
    return boxes, kitti_class_labels(objects, class_names)


def picture(recipe, outcome: FrameOutcome, show_gt: bool = True, show_latency: bool = True):
    """Camera view with projected boxes beside the BEV canvas, with a one-line HUD."""
    from bevport.runtime import vis

    frame, det = outcome.frame, outcome.detections
    names = recipe.class_names
    gt_boxes, gt_labels = _ground_truth(frame, names) if show_gt else (None, None)
    threshold = recipe.runtime.vis_score_threshold
    bev = vis.bev_image(frame.points(), det.boxes, det.labels, det.scores, gt_boxes, gt_labels, class_names=names,
                        score_threshold=threshold)
    camera = vis.camera_image(frame.image(), frame.calib, det.boxes, det.labels, det.scores, gt_boxes,
                              class_names=names, score_threshold=threshold)
    shown = int(np.count_nonzero(det.scores >= threshold))
    latency = outcome.seconds["frame"] * 1e3 if show_latency else None
    return vis.frame_picture(camera, bev, frame_id=frame.id, detections=shown, latency_ms=latency)


def _has_kitti_labels(dataset: Dataset) -> Optional[Path]:
    folder = dataset.data_root / "label_2"
    return folder if dataset.layout == "kitti" and folder.is_dir() else None


def run_infer(recipe, bundle: Path, data: Optional[os.PathLike], options: RuntimeOptions,
              num_samples: Optional[int] = None, split: Optional[str] = None, pred_dir: Optional[Path] = None,
              vis_dir: Optional[Path] = None, video: bool = False, on_bad_frame: str = "skip", seed: int = 0,
              first_frame: int = 0, timing_in_pictures: bool = True,
              progress: Callable = lambda m: None, warn: Callable = lambda m: None) -> Dict:
    """Run frames, write predictions (both formats), pictures and a video; evaluate when labels exist."""
    from bevport.runtime.kitti import write_predictions
    from bevport.runtime.vis import VideoWriter

    progress(f"compiling graphs for {options.device}")
    pipeline = open_pipeline(recipe, bundle, options, warn)
    per_frame, skipped, counts = [], [], []
    with dataset_or_synthetic(data, split, num_samples or 8, seed, progress, warn) as dataset, \
            contextlib.ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(Path(vis_dir) / "bevfusion.mp4")) if video and vis_dir else None
        ids = []
        for outcome in iterate_frames(pipeline, dataset, num_samples, on_bad_frame, warn, skipped, first_frame):
            frame, det = outcome.frame, outcome.detections
            ids.append(frame.id)
            progress(f"frame {frame.id}: {len(det.scores)} boxes in {outcome.seconds['frame'] * 1e3:.0f} ms")
            if pred_dir is not None:
                with Image.open(frame.image_path) as header:      # the size only: no second JPEG decode
                    size = header.size
                write_predictions(pred_dir, frame.id, det.boxes, det.scores, det.labels, recipe.class_names,
                                  frame.calib, size)
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
            "stages": pipeline.describe(), "frames": ids, "skipped": skipped,
            "boxes_per_frame": counts, "seconds": summarize_seconds(per_frame),
        }
        labels = _has_kitti_labels(dataset)
        if pred_dir is not None and labels is not None:
            from bevport.runtime.evaluate import evaluate, write_ap_json

            result = evaluate(labels, Path(pred_dir) / "kitti", ids)
            write_ap_json(Path(pred_dir) / "ap.json", result)
            summary["ap"] = str(Path(pred_dir) / "ap.json")
    if pred_dir is not None:
        json_dump(Path(pred_dir) / "infer.json", summary)
    return summary
