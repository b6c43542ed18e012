"""Camera-only BEVFusion (bevfusion-cam-swint) on this CPU: table vs sort-based pooling, and per-part latency.

bevport's pool tables against a sort-based pooling in Qualcomm AI Hub's style, and the five parts' latency at FP32
(f32), FP32 (device default) and INT8.

    python benchmarks/camera_only.py [--runs 10] [--parts/--no-parts] [--frames 3] [--calib-frames 4]
                                     [--model-dir IR_FOLDER] [--out benchmarks/results/camera_only.json]

Pooling (`pooling`, `speedup`, `rig`): both poolings run in OpenVINO (CPU, f32) in one process on the same frame of
the synthetic surround dataset's rig (seed 0: nuScenes' six-camera mounting with a jitter of a few tenths of a degree;
118 depth bins x 32 x 88 pixels per camera, a 256 x 256 BEV grid):

- tables (bevport's `pool` part): per-rig index tables computed once on the host; a gather, a batched MatMul and
  one scatter-add run per frame.
- sort-based (benchmark-only baseline, after Qualcomm's Encoder2-4): the lifted tensor depth x context of every
  frustum point [2 M, 80] is materialised, cell ranks are computed in the graph from the points' geometry, sorted
  (TopK over all points), the features gathered in rank order, prefix-summed, read at the run ends (found with
  NonZero, so every occupied cell is kept, unlike a fixed 58,999), differenced and scattered into the grid. The
  geometry is given precomputed (Qualcomm computes it per frame inside the graph too, which would only add time).

The JSON records each median, the ratio, and both outputs' largest error (relative to the largest cell) against
upstream's pooling with exact sums: every point in the cell upstream's float32 index arithmetic gives it, summed in
float64. The prefix sums over 2 M rows lose precision in float32, and cell indices computed inside a graph can move
points that lie close to a cell border into the neighbouring cell.

Parts (`parts`, on unless --no-parts): the model folder is built in a temporary directory with bevport's own APIs
(untimed, in a spawned child process so that torch's and NNCF's leftovers do not share the cores with the timed
runs): a synthetic checkpoint of random weights (seed 0; the parts' latency does not depend on the values,
decoding's a little), export, the synthetic surround scenes of seed 0, calibration on --calib-frames of them (+1
held out), quantization; or --model-dir reuses a `bevport quantize` folder. Then `bevport.runtime.bench.run_bench`
(what `bevport bench` runs) times the pipeline's own stages frame by frame: three warm-up iterations, then --frames
frames past the calibration ones, one at a time, for every part FP32 compiled with INFERENCE_PRECISION_HINT=f32,
FP32 at the device's default precision (bf16 on AMX CPUs; where that is f32, as on this AMD host, the f32 run is
recorded once and the default entry says `same_as`, as benchmarks/infer.py does), and INT8 (the quantized IRs).
Recorded: per-part median ms, frame ms and frames per second (a frame: read + preprocess + five parts + decode), the
CPU model and ISA, the ratio pool INT8 / image_encoder INT8 against the issue's goal (at most 0.2), and Qualcomm AI
Hub's published per-part latencies beside bevport's as context only (float, on Snapdragon NPUs: other hardware,
other precision).

The machine is shared (2 cores): before starting, the script waits for the 1-min load average to fall under
--max-load, and before each timed phase (pooling, parts) for other processes to use at most --max-other-cores
(sampled over 10 s; the load average counts this process too); --max-wait seconds in all, then it runs anyway with a
note. `load_average` records the load averages at start and end, `other_processes` the other processes' CPU use
during each timed phase.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from export import host  # benchmarks/export.py: the host's facts

RECIPE = "bevfusion-cam-swint"
PARTS = ("image_encoder", "lift", "pool", "downsample", "decoder")     # the recipe's graphs, in pipeline order
SEED = 0                                                                # checkpoint and scenes: the pooling's rig
# bevport.runtime.bench's precision names -> this JSON's; fp32 must run before fp32-default (bench's `same_as`)
PRECISIONS = {"fp32": "fp32_f32", "fp32-default": "fp32_default", "int8": "int8"}
POOL_VS_ENCODER_MAX = 0.2   # the goal: pooling at most 0.2x the image encoder, both INT8

# Qualcomm AI Hub's published latencies of its five-part BEVFusion (ms per inference, float on the NPU), per device:
# part -> (QNN context binary, precompiled QNN ONNX).
QUALCOMM_SOURCE = "qai-hub-models bevfusion_det perf.yaml v0.46.0"
QUALCOMM_RUNTIMES = ("qnn_context_binary", "precompiled_qnn_onnx")
QUALCOMM_MS = {
    "Snapdragon 8 Elite Gen 5 QRD": {"Encoder1": (350.6, 432.1), "Encoder2": (2186.3, 2189.5),
                                     "Encoder3": (369.4, 335.3), "Encoder4": (6.77, 7.12), "Decoder": (5.73, 6.20)},
    "Samsung Galaxy S25": {"Encoder1": (420.4, 508.6), "Encoder2": (2439.8, 2390.5), "Encoder3": (499.8, 374.4),
                           "Encoder4": (7.78, 8.08), "Decoder": (7.60, 7.89)},
    "Snapdragon X Elite CRD": {"Encoder1": (683.1, 816.0), "Encoder2": (3419.4, 3251.9), "Encoder3": (700.1, 513.5),
                               "Encoder4": (11.88, 12.08), "Decoder": (13.08, 13.20)},
}
# Which bevport parts do the work of which Qualcomm parts: Encoder2 (lift + geometry + rank sort), Encoder3 (cumsum)
# and Encoder4 (interval differences + scatter + BEV downsample) together are bevport's lift + pool + downsample.
QUALCOMM_GROUPS = {"image_encoder": (("Encoder1",), ("image_encoder",)),
                   "lift+pool+downsample": (("Encoder2", "Encoder3", "Encoder4"), ("lift", "pool", "downsample")),
                   "decoder": (("Decoder",), ("decoder",))}


def say(message: str) -> None:
    print(f"[camera_only {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sort_pool_model(cameras: int, depth_bins: int, feature_size, channels: int, grid, lower, cell):
    """The baseline graph: (geometry [N,D,fH,fW,3], depth [N,D,fH,fW], context [N,C,fH,fW]) -> bev [1,C,nx,ny]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fh, fw = feature_size
    nx, ny = grid
    points = cameras * depth_bins * fh * fw
    consts = {"lower": np.asarray(lower, np.float32), "cell": np.asarray(cell, np.float32),
              "limits": np.array([nx, ny, 1], np.int64), "zero_i": np.array(0, np.int64),
              "ny": np.array(ny, np.int64), "k": np.array([points], np.int64), "axis0": np.array([0], np.int64),
              "axis1": np.array([1], np.int64), "axis_last": np.array([-1], np.int64),
              "one": np.array([1], np.int64), "spare": np.array([nx * ny], np.int64),
              "shape_points": np.array([points, 3], np.int64), "shape_lifted": np.array([points, channels], np.int64),
              "shape_canvas": np.array([nx * ny + 1, channels], np.int64), "grid_cells": np.array([nx * ny], np.int64),
              "shape_bev": np.array([nx, ny, channels], np.int64), "col": np.array([-1, 1], np.int64),
              "zero_row": np.zeros((1, channels), np.float32), "minus_one": np.array([-1], np.int64)}
    node = helper.make_node
    nodes = [node("Constant", [], [name], value=numpy_helper.from_array(value, name)) for name, value in consts.items()]
    nodes += [
        # lift: depth x context of every frustum point, [N*D*fH*fW, C] (Qualcomm's 638 MB tensor)
        node("Unsqueeze", ["depth", "axis_last"], ["depth_5d"]),
        node("Transpose", ["context"], ["context_hwc"], perm=[0, 2, 3, 1]),
        node("Unsqueeze", ["context_hwc", "axis1"], ["context_5d"]),
        node("Mul", ["depth_5d", "context_5d"], ["lifted_5d"]),
        node("Reshape", ["lifted_5d", "shape_lifted"], ["lifted"]),
        # each point's cell, in the graph (points outside the grid get the spare rank nx*ny)
        node("Reshape", ["geometry", "shape_points"], ["xyz"]),
        node("Sub", ["xyz", "lower"], ["shifted"]),
        node("Div", ["shifted", "cell"], ["scaled"]),
        node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),                     # truncation toward zero
        node("GreaterOrEqual", ["index", "zero_i"], ["above"]),
        node("Less", ["index", "limits"], ["below"]),
        node("And", ["above", "below"], ["in_axis"]),
        node("Cast", ["in_axis"], ["in_axis_i"], to=TensorProto.INT64),
        node("ReduceMin", ["in_axis_i"], ["kept"], axes=[1], keepdims=0),
        node("Split", ["index"], ["ix", "iy", "iz"], axis=1),
        node("Mul", ["ix", "ny"], ["row"]),
        node("Add", ["row", "iy"], ["flat_col"]),
        node("Squeeze", ["flat_col", "one"], ["flat"]),
        node("Sub", ["flat", "spare"], ["flat_minus"]),
        node("Mul", ["flat_minus", "kept"], ["masked"]),
        node("Add", ["masked", "spare"], ["ranks"]),
        # run-time sort of every point by rank, prefix sums in rank order
        node("TopK", ["ranks", "k"], ["sorted_ranks", "order"], axis=0, largest=0, sorted=1),
        node("Gather", ["lifted", "order"], ["sorted_feats"], axis=0),
        node("CumSum", ["sorted_feats", "axis0"], ["prefix"]),
        # run ends (every occupied cell: NonZero, not a fixed count), differenced
        node("Slice", ["sorted_ranks", "one", "k", "axis0"], ["next_ranks"]),
        node("Concat", ["next_ranks", "spare"], ["next_padded"], axis=0),
        node("Equal", ["sorted_ranks", "next_padded"], ["same"]),
        node("Not", ["same"], ["ends_mask"]),
        node("NonZero", ["ends_mask"], ["ends_2d"]),
        node("Squeeze", ["ends_2d", "axis0"], ["ends"]),
        node("Gather", ["prefix", "ends"], ["at_ends"], axis=0),
        node("Gather", ["sorted_ranks", "ends"], ["end_cells"], axis=0),
        node("Concat", ["zero_row", "at_ends"], ["with_zero"], axis=0),
        node("Slice", ["with_zero", "axis0", "minus_one", "axis0"], ["previous"]),
        node("Sub", ["at_ends", "previous"], ["sums"]),
        node("Reshape", ["end_cells", "col"], ["end_cells_col"]),
        node("ConstantOfShape", ["shape_canvas"], ["canvas"],
             value=helper.make_tensor("zero_f", TensorProto.FLOAT, [1], [0.0])),
        node("ScatterND", ["canvas", "end_cells_col", "sums"], ["cells"]),           # one write per cell
        node("Slice", ["cells", "axis0", "grid_cells", "axis0"], ["grid_only"]),
        node("Reshape", ["grid_only", "shape_bev"], ["bev_xyc"]),
        node("Transpose", ["bev_xyc"], ["bev_cxy"], perm=[2, 0, 1]),
        node("Unsqueeze", ["bev_cxy", "axis0"], ["bev"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "sort_pool", [
        helper.make_tensor_value_info("geometry", f, [cameras, depth_bins, fh, fw, 3]),
        helper.make_tensor_value_info("depth", f, [cameras, depth_bins, fh, fw]),
        helper.make_tensor_value_info("context", f, [cameras, channels, fh, fw])],
        [helper.make_tensor_value_info("bev", f, [1, channels, nx, ny])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bevport-bench")
    onnx.checker.check_model(model)
    return model


def intrinsics_4x4(k: np.ndarray) -> np.ndarray:
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = k
    return m


def exact_pool(cell, inside, depth, context, grid) -> np.ndarray:
    """Upstream's pooling with exact sums: each point in the cell upstream's float32 arithmetic gives it (`cell`,
    `inside` from lss_depth.cells), depth x context summed in float64."""
    n, d, fh, fw = depth.shape
    c = context.shape[1]
    cam, _, h, w = np.nonzero(inside)
    feats = depth[inside].astype(np.float64)[:, None] * context[cam, :, h, w].astype(np.float64)
    bev = np.zeros((grid[0] * grid[1], c))
    np.add.at(bev, cell[inside], feats)
    return bev.reshape(grid[0], grid[1], c).transpose(2, 0, 1)[None]


def median_ms(request, feed, runs: int) -> float:
    request.infer(feed)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        request.infer(feed)
        times.append((time.perf_counter() - began) * 1e3)
    return round(float(np.median(times)), 2)


# ----------------------------------------------------------------------------------------- machine and source

def source_state() -> Dict:
    """The commit measured, and whether bevport's sources differed from it (the numbers then belong to the work
    tree, not to the commit)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted_changes_in_src": bool(git("status", "--porcelain", "--", "src"))}


def load_average() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds() -> Tuple[float, float, float]:
    """(busy CPU seconds of the whole machine since boot, this process's own CPU seconds with all its threads, CPU
    seconds the hypervisor gave to other guests while this one wanted them: steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (user + nice + system + irq + softirq) / tick, own.user + own.system, steal / tick


class OthersCpu:
    """Cores' worth of CPU time other processes used while the block ran: the machine's busy time less this
    process's own. The load average cannot tell that apart (it counts this process too, and lags by a minute)."""

    def __enter__(self) -> "OthersCpu":
        self.start, self.began, self.cores = cpu_seconds(), time.monotonic(), 0.0
        return self

    def __exit__(self, *exc) -> None:
        busy, own, steal = cpu_seconds()
        seconds = max(time.monotonic() - self.began, 1e-6)
        self.cores = round(max((busy - self.start[0]) - (own - self.start[1]), 0.0) / seconds, 2)
        self.own_cores = round((own - self.start[1]) / seconds, 2)
        self.steal_cores = round((steal - self.start[2]) / seconds, 2)


class MachineWatch:
    """The 2 shared cores: another engineer's tests running beside a timed phase would inflate every median. Before
    the run, wait for the 1-min load average to fall under max_load; before each timed phase, for other processes to
    use at most max_other_cores (sampled over a few seconds); all waits share one budget of max_wait_s, after which
    the script runs anyway and says so. Records the load averages and the other processes' CPU use during each timed
    phase, so that a contended median can be recognised in the JSON."""

    def __init__(self, max_load: float, max_other_cores: float, max_wait_s: float, sample_s: float = 10.0):
        self.max_load, self.max_other_cores, self.sample_s = max_load, max_other_cores, sample_s
        self.deadline = time.monotonic() + max_wait_s
        self.load: Dict = {"max_load": max_load}
        self.phases: Dict[str, Dict] = {}
        self.notes: List[str] = []

    def wait_for_low_load(self, poll_s: float = 60.0) -> None:
        self.load["first_check"] = load_average()
        began = time.monotonic()
        while os.getloadavg()[0] > self.max_load and time.monotonic() < self.deadline:
            say(f"1-min load average {os.getloadavg()[0]:.2f} > {self.max_load}: waiting")
            time.sleep(poll_s)
        self.load.update(start=load_average(), waited_s=round(time.monotonic() - began))
        if self.load["start"][0] > self.max_load:
            self._note(f"1-min load average still {self.load['start'][0]} > {self.max_load} at the start: "
                       "measured anyway")

    @contextlib.contextmanager
    def phase(self, name: str):
        """Wait for idle cores, then run the timed block, measuring the other processes' CPU use during it."""
        began = time.monotonic()
        while True:
            with OthersCpu() as before:
                time.sleep(self.sample_s)
            if before.cores <= self.max_other_cores or time.monotonic() >= self.deadline:
                break
            say(f"{name}: other processes use {before.cores} cores > {self.max_other_cores}: waiting")
        waited = round(time.monotonic() - began)
        if before.cores > self.max_other_cores:
            self._note(f"{name}: other processes still used {before.cores} cores before it: measured anyway")
        with OthersCpu() as during:
            yield
        self.phases[name] = {"waited_s": waited, "others_cores_before": before.cores,
                             "others_cores_during": during.cores, "own_cores_during": during.own_cores,
                             "steal_cores_during": during.steal_cores}
        if during.cores > self.max_other_cores:
            self._note(f"{name}: other processes used {during.cores} cores of {os.cpu_count()} while it was timed: "
                       "its medians are inflated")

    def _note(self, message: str) -> None:
        self.notes.append(message)
        say(message)

    def record(self) -> Dict:
        """The JSON's `load_average`, `other_processes` and `machine_notes`."""
        return {"load_average": dict(self.load, end=load_average()),
                "other_processes": {"max_cores": self.max_other_cores, "phases": self.phases,
                                    "what": "CPU time of other processes during each timed phase, in cores; "
                                            "own: this process's; steal: the hypervisor's other guests'"},
                "machine_notes": self.notes}


# ------------------------------------------------------------------------------------ pooling: tables vs sort

def compare_pooling(runs: int) -> Dict:
    """bevport's pool tables against the sort-based baseline on the seed-0 rig: the `rig`, `pooling`, `speedup`
    and `goal` fields of the JSON (unchanged since the first version of this benchmark; the README cites them)."""
    import openvino as ov
    import torch
    import yaml

    from bevport.data.imageaug import img_aug_matrix
    from bevport.data.surround import dataset_cameras
    from bevport.export.pool_onnx import pool_model
    from bevport.geometry import lss_depth
    from bevport.models.bevfusion_cam import BEVFusionCamera
    from bevport.recipe import Node

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / f"{RECIPE}.yaml").read_text())
    vt = recipe["model"]["camera"]["vtransform"]
    model = BEVFusionCamera(Node(recipe["model"], "model"), recipe["input"]["image_size"]).eval()
    frustum = model.vtransform.frustum.numpy()
    cameras = dataset_cameras(SEED)
    img_aug, lidar_aug = img_aug_matrix(Node(recipe, "", "recipe")), np.eye(4, dtype=np.float32)
    began = time.perf_counter()
    geom = np.stack([lss_depth.geometry(frustum, cam.camera2lidar.astype(np.float32), intrinsics_4x4(cam.K), img_aug,
                                        lidar_aug) for cam in cameras])
    cell, inside = lss_depth.cells(geom, vt["xbound"], vt["ybound"], vt["zbound"])
    tables = lss_depth.pool_tables(cell, inside, (256, 256), recipe["export"]["pool_groups"],
                                   recipe["export"]["pool_scatter_rows"])
    tables_s = time.perf_counter() - began

    rng = np.random.default_rng(0)
    n, d, fh, fw = inside.shape
    depth = torch.from_numpy(rng.normal(size=(n, d, fh, fw)).astype(np.float32)).softmax(dim=1)
    context = torch.from_numpy(rng.normal(size=(n, 80, fh, fw)).astype(np.float32))
    reference = exact_pool(cell, inside, depth.numpy(), context.numpy(), (256, 256))
    groups, rows = recipe["export"]["pool_groups"], recipe["export"]["pool_scatter_rows"]
    names = recipe["export"]["graphs"]["pool"]["inputs"]
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    ours = core.compile_model(core.read_model(pool_model(names, "bev", n, d, (fh, fw), 80, groups, rows, (256, 256))
                                              .SerializeToString(), b""), "CPU", config)
    dx, bx, _ = lss_depth.grid_params(vt["xbound"], vt["ybound"], vt["zbound"])
    baseline_model = sort_pool_model(n, d, (fh, fw), 80, (256, 256), bx - dx / np.float32(2.0), dx)
    baseline = core.compile_model(core.read_model(baseline_model.SerializeToString(), b""), "CPU", config)
    ours_feed = dict(zip(names, (context.numpy(), depth.numpy()) + tables.inputs()))
    base_feed = {"geometry": geom, "depth": depth.numpy(), "context": context.numpy()}
    ours_req, base_req = ours.create_infer_request(), baseline.create_infer_request()
    result = {}
    for name, request, feed in (("tables", ours_req, ours_feed), ("sort_based", base_req, base_feed)):
        request.infer(feed)
        bev = request.get_output_tensor(0).data.astype(np.float64)
        result[name] = {"median_ms": median_ms(request, feed, runs),
                        "max_rel_error": float(np.abs(bev - reference).max() / np.abs(reference).max())}
    speedup = round(result["sort_based"]["median_ms"] / result["tables"]["median_ms"], 1)
    return {
        "rig": {"cameras": n, "frustum_points": int(inside.size), "points_in_grid": tables.points,
                "occupied_cells": tables.occupied, "groups": tables.groups,
                "groups_per_column_needed": tables.width_needed,
                "table_width": int(tables.rows.shape[1]), "further_groups": tables.further,
                "scatter_rows": int(tables.order.size),
                "tables_build_s": round(tables_s, 2)},
        "pooling": result,
        "speedup": speedup,
        "goal": {"speedup_min": 40.0, "met": speedup >= 40.0},
    }


# ------------------------------------------------------------------------------- parts: the model folder

def write_scenes(recipe, folder: Path, frames: int) -> Path:
    """The synthetic surround scenes of seed SEED (one rig for all of them: the pooling comparison's)."""
    from bevport.formats import dataset_format

    return dataset_format(recipe).write_synthetic(folder, frames, SEED)


def build_model_folder(tmp: Path, scenes: Path, calib_frames: int) -> Tuple[Path, List[str]]:
    """synth-ckpt -> export -> calibrate -> quantize with bevport's Python APIs, as the tests call them; returns
    the `bevport quantize` folder (FP32 and INT8 IRs + frustum.npy) and the warnings said on the way."""
    from bevport.export.onnx_export import export
    from bevport.models.synthetic import write_synthetic_checkpoint
    from bevport.quantize.calibrate import calibrate
    from bevport.quantize.ptq import quantize
    from bevport.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    warnings: List[str] = []
    warn = warnings.append
    say("synthetic checkpoint (random weights, seed 0)")
    write_synthetic_checkpoint(recipe, SEED, tmp / "cam.pth")
    say("export")
    export(recipe, tmp / "cam.pth", tmp / "onnx", progress=say, warn=warn)
    say(f"calibrate on {calib_frames} frames (+1 held out)")
    calibrate(recipe, tmp / "onnx", scenes, tmp / "calib", num_samples=calib_frames, holdout=1, progress=say,
              warn=warn)
    # report=False: the quantize report times each graph alone at every precision, which the bench below measures
    # in the pipeline anyway; skipping it keeps the script within its time budget on 2 cores
    say("quantize (NNCF)")
    quantize(recipe, tmp / "onnx", tmp / "calib", tmp / "ir", report=False, progress=say, warn=warn)
    return tmp / "ir", warnings


def build_in_child(tmp: Path, scenes: Path, calib_frames: int, warn: Callable) -> Path:
    """build_model_folder in a fresh (spawned) process: export and NNCF leave torch's and NNCF's state (thread
    pools, gigabytes of memory) in the process that ran them, and the timed runs should not share the 2 cores or the
    memory with any of it."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as child:
        bundle, warnings = child.submit(build_model_folder, tmp, scenes, calib_frames).result()
    for message in warnings:
        warn(message)
    return bundle


# ------------------------------------------------------------------------------------ parts: measurement

def run_part_bench(recipe, bundle: Path, scenes: Path, first_frame: int, frames: int, warn: Callable) -> Dict:
    """`bevport bench` in this process: per-stage medians per precision (bench handles warm-up, the same_as of a
    device default that is f32, and the CPU's facts). No model cache: every compile is fresh and nothing is
    written outside the temporary folder."""
    from bevport.runtime.bench import run_bench
    from bevport.runtime.infer import RuntimeOptions

    return run_bench(recipe, bundle, scenes, RuntimeOptions(cache_dir=None), list(PRECISIONS), frames=frames,
                     first_frame=first_frame, progress=say, warn=warn)


def precision_summary(entry: Dict) -> Dict:
    """One precision's per-part medians, frame time and FPS from a run_bench entry."""
    latency = entry["latency"]
    stages = latency["stages"]
    summary = {
        "parts_ms": {part: stages[part]["median_ms"] for part in PARTS},
        "host_ms": {s: v["median_ms"] for s, v in stages.items() if s not in PARTS and s != "frame"},
        "frame_ms": stages["frame"]["median_ms"],
        "fps": latency["fps"],
        "frames": latency["frames"],
        "files": {g: d["file"] for g, d in entry["stages_files"].items()},
        "inference_precision": {g: d["inference_precision"] for g, d in entry["stages_files"].items()},
    }
    summary["parts_total_ms"] = round(sum(summary["parts_ms"].values()), 2)
    return summary


def qualcomm_published() -> Dict:
    """Qualcomm's figures per device, and summed into bevport's grouping of the parts."""
    devices = {device: {part: dict(zip(QUALCOMM_RUNTIMES, ms)) for part, ms in parts.items()}
               for device, parts in QUALCOMM_MS.items()}
    grouped = {device: {runtime: {group: round(sum(parts[q][runtime] for q in qparts), 2)
                                  for group, (qparts, _) in QUALCOMM_GROUPS.items()}
                        for runtime in QUALCOMM_RUNTIMES}
               for device, parts in devices.items()}
    return {"source": QUALCOMM_SOURCE,
            "note": "float models on Qualcomm NPUs (Hexagon), other hardware and precision than bevport's CPU INT8: "
                    "quoted as context only, not a like-for-like comparison",
            "unit": "ms per inference", "runtimes": list(QUALCOMM_RUNTIMES),
            "mapping": {group: {"qualcomm": list(q), "bevport": list(b)} for group, (q, b) in QUALCOMM_GROUPS.items()},
            "devices": devices, "grouped": grouped}


def parts_section(report: Dict, model: Dict) -> Dict:
    """The JSON's `parts`: per precision the part medians, then the goal ratio and Qualcomm's figures."""
    precisions = {}
    for bench_name, name in PRECISIONS.items():
        entry = report["precisions"][bench_name]
        summary = precision_summary(entry)
        if "same_as" in entry:
            summary.update(same_as=PRECISIONS[entry["same_as"]], note=entry["note"])
        precisions[name] = summary
    int8, f32 = precisions["int8"]["parts_ms"], precisions["fp32_f32"]["parts_ms"]
    ratio = round(int8["pool"] / int8["image_encoder"], 4)
    return {
        "recipe": RECIPE,
        "what": "bevport.runtime.bench latency mode: per-stage medians over frames run one at a time after 3 warm-up "
                "iterations; a frame = read + preprocess (prepare) + the five parts + decode",
        "model": model,
        "device": report["device"], "device_name": report["device_name"], "cpu": report["cpu"],
        "device_default_precision": report["device_default_precision"],
        "precisions": precisions,
        "int8_speedup_vs_fp32_f32": {"frame": report.get("int8_speedup"),
                                     "parts": {p: round(f32[p] / int8[p], 3) for p in PARTS}},
        "pool_vs_image_encoder_int8": {"value": ratio, "max": POOL_VS_ENCODER_MAX,
                                       "met": ratio <= POOL_VS_ENCODER_MAX},
        "bevport_grouped_ms": {name: {group: round(sum(p["parts_ms"][b] for b in bparts), 2)
                                      for group, (_, bparts) in QUALCOMM_GROUPS.items()}
                               for name, p in precisions.items()},
        "qualcomm_published": qualcomm_published(),
        "peak_rss_mib": report["peak_rss_mib"],
        "bench": report,
    }


def measure_parts(args, watch: MachineWatch, warn: Callable) -> Dict:
    """Build (or reuse) the model folder, write the scenes and bench the three precisions."""
    from bevport.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    with tempfile.TemporaryDirectory(prefix="bevport-camera-only-") as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        # calibration frames + 1 held out, then the timed frames: timing never runs a calibration frame
        first_frame = args.calib_frames + 1
        scenes = write_scenes(recipe, tmp / "scenes", first_frame + args.frames)
        if args.model_dir:
            bundle, built = args.model_dir, f"reused {args.model_dir}"
            model = {"folder": built}
        else:
            built = "built in a temporary folder"
            bundle = build_in_child(tmp, scenes, args.calib_frames, warn)
            model = {"folder": built, "checkpoint": f"synthetic, random weights (seed {SEED})",
                     "calibration_frames": args.calib_frames, "holdout_frames": 1}
        last = first_frame + args.frames - 1
        model.update(scenes=f"synthetic surround, seed {SEED}; timed frames {first_frame}-{last}",
                     setup_s=round(time.perf_counter() - began, 1))
        began = time.perf_counter()
        with watch.phase("parts"):
            report = run_part_bench(recipe, bundle, scenes, first_frame, args.frames, warn)
        report["bundle"] = built
        model["bench_s"] = round(time.perf_counter() - began, 1)
    return parts_section(report, model)


# ------------------------------------------------------------------------------------------------- printing

def print_parts(parts: Dict) -> None:
    names = list(parts["precisions"])
    rows = [(p, [parts["precisions"][n]["parts_ms"][p] for n in names]) for p in PARTS]
    rows += [("frame", [parts["precisions"][n]["frame_ms"] for n in names])]
    print(f"\nbevport parts on {parts['cpu']['cpu_model']} ({parts['cpu']['isa']}, default precision "
          f"{parts['device_default_precision']}), ms per frame (median of {parts['precisions']['int8']['frames']})")
    print(f"{'part':<22}" + "".join(f"{n:>14}" for n in names))
    for part, values in rows:
        print(f"{part:<22}" + "".join(f"{v:>14.1f}" for v in values))
    print(f"{'FPS':<22}" + "".join(f"{parts['precisions'][n]['fps']:>14.3f}" for n in names))
    for n in names:
        if "same_as" in parts["precisions"][n]:
            print(f"  {n} = {parts['precisions'][n]['same_as']}: {parts['precisions'][n]['note']}")
    goal = parts["pool_vs_image_encoder_int8"]
    print(f"pool / image_encoder (INT8): {goal['value']:.3f} (goal <= {goal['max']}: "
          f"{'met' if goal['met'] else 'not met'})")
    qc = parts["qualcomm_published"]
    print(f"\nbeside Qualcomm AI Hub's published latencies ({qc['source']}; {qc['note']}), ms, "
          f"ctx-binary / precompiled-ONNX:")
    groups = list(QUALCOMM_GROUPS)
    print(f"{'':<30}" + "".join(f"{g:>24}" for g in groups))
    for name in names:
        values = parts["bevport_grouped_ms"][name]
        print(f"{'bevport ' + name:<30}" + "".join(f"{values[g]:>24.1f}" for g in groups))
    for device, runtimes in qc["grouped"].items():
        cells = [f"{runtimes[QUALCOMM_RUNTIMES[0]][g]:.1f} / {runtimes[QUALCOMM_RUNTIMES[1]][g]:.1f}" for g in groups]
        print(f"{device:<30}" + "".join(f"{c:>24}" for c in cells))


# ----------------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each pooling")
    parser.add_argument("--parts", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the five parts at FP32 (f32), FP32 (default) and INT8 (default: on)")
    parser.add_argument("--frames", type=int, default=3, help="timed frames per precision, after 3 warm-up runs")
    parser.add_argument("--calib-frames", type=int, default=4, help="calibration frames when building the model")
    parser.add_argument("--model-dir", type=Path, help="reuse this `bevport quantize` folder of the recipe")
    parser.add_argument("--max-load", type=float, default=1.5, help="1-min load average to wait for before starting")
    parser.add_argument("--max-other-cores", type=float, default=0.25,
                        help="other processes' CPU use (cores) to wait for before each timed phase")
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait for a quiet machine, in all")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/camera_only.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    watch = MachineWatch(args.max_load, args.max_other_cores, args.max_wait)
    watch.wait_for_low_load()
    warnings: List[str] = []

    def warn(message: str) -> None:
        if message not in warnings:         # e.g. the rig's tables, built once per precision's pipeline
            warnings.append(message)
        say(f"warning: {message}")

    say(f"pooling: tables vs sort-based, {args.runs} runs each")
    began = time.perf_counter()
    with watch.phase("pooling"):
        pooling = compare_pooling(args.runs)
    pooling_s = time.perf_counter() - began
    print(f"pooling: tables {pooling['pooling']['tables']['median_ms']} ms, sort-based "
          f"{pooling['pooling']['sort_based']['median_ms']} ms ({pooling['speedup']}x)")
    report = {
        "benchmark": "camera-only BEV pooling in OpenVINO (CPU, f32): rig tables vs sort-based (Qualcomm style)",
        "host": host(),
        **pooling,
        "source": source_state(),
    }
    if args.parts:
        report["parts"] = measure_parts(args, watch, warn)
        print_parts(report["parts"])
    report.update(watch.record())
    report["seconds"] = {"pooling": round(pooling_s, 1), "script": round(time.perf_counter() - started, 1)}
    report["warnings"] = warnings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    load = report["load_average"]
    print(f"\nload average start {load['start']}, end {load['end']}; other processes' cores during the timed "
          f"phases {({k: v['others_cores_during'] for k, v in watch.phases.items()})}; "
          f"{report['seconds']['script']:.0f} s -> {args.out}")
    for note in watch.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
