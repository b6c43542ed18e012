"""One frame through the four deploy graphs, as Intel's deploy binary runs them, with training's semantics.

    image ─ preprocess ─► camera ─► (feature NHWC, depth) ─ BEV pool (table per calibration) ─► cam_bev ─┐
    points ─ voxelize (file order, 100 slots, V rows) ─► PFE ─► pillar features ─ scatter ─► lidar_bev ─┴► fuser ─► head

Everything outside the graphs is NumPy. The per-graph feeds are kept on the result, so calibration can store exactly
the tensors each graph saw.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from bevport.contract import Contract
from bevport.data.dataset import Frame
from bevport.data.preprocess import CameraMetas, camera_metas, image_tensor
from bevport.errors import DatasetError
from bevport.geometry.lss import PoolTableCache, bev_pool
from bevport.geometry.voxelize import scatter, voxelize_for_deploy
from bevport.runtime.graphs import compile_graph, infer, read_graph

# The graphs a frame passes through, by contract key: the PFE is the static-V variant the deploy binary binds.
STAGES = ("camera", "lidar_pfe_static", "fuser", "head")


@dataclass
class FrameInputs:
    """A frame read and preprocessed: the camera input, its calibration and the PFE's padded voxels."""
    frame_id: str
    img: np.ndarray                 # [1,3,H,W] float32, normalised in the checkpoint's channel order
    metas: CameraMetas
    pfe: Dict[str, np.ndarray]      # the PFE graph's three named inputs
    num_voxels: int                 # non-empty pillars in the frame
    num_dropped: int                # pillars beyond the static V, not seen by the PFE


@dataclass
class FrameResult:
    inputs: FrameInputs
    feeds: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)    # graph key -> its named inputs
    outputs: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # graph key -> its named outputs
    seconds: Dict[str, float] = field(default_factory=dict)                  # stage -> wall time in this frame

    @property
    def head_outputs(self) -> Dict[str, np.ndarray]:
        return self.outputs["head"]


def scaled_points(recipe, points: np.ndarray) -> np.ndarray:
    """The point columns the model reads, with the recipe's intensity scale applied (a no-op at 1.0)."""
    points = points[:, : recipe.input.point_dims]
    scale = float(recipe.input.intensity_scale)
    if scale != 1.0:
        points = points.copy()
        points[:, 3] *= np.float32(scale)
    return points


def prepare_frame(recipe, contract: Contract, frame: Frame, channel_order: str = "training") -> FrameInputs:
    """Read one frame and compute every graph-independent input. Raises DatasetError on an unreadable frame."""
    img = image_tensor(recipe, frame.image(), channel_order, source=str(frame.image_path))
    metas = camera_metas(recipe, frame.calib)
    padded = voxelize_for_deploy(recipe, scaled_points(recipe, frame.points()))
    names = [t.name for t in contract["lidar_pfe_static"].inputs]
    pfe = dict(zip(names, (padded.features, padded.num_voxels, padded.coors)))
    valid = int(np.count_nonzero(padded.num_voxels))
    return FrameInputs(frame.id, img, metas, pfe, valid + padded.num_dropped, padded.num_dropped)


def prepared_frames(recipe, contract: Contract, dataset, start: int = 0, channel_order: str = "training",
                    on_bad_frame: str = "skip", warn: Callable[[str], None] = lambda m: None,
                    skipped: Optional[List[Dict]] = None) -> Iterator[Tuple[Frame, FrameInputs, float]]:
    """(frame, inputs, seconds spent reading and preprocessing) in dataset order from index `start`.

    An unreadable frame is skipped with a warning and recorded in `skipped`, or raised with on_bad_frame="fail".
    Pillars beyond the static V are warned about (the deploy binary drops them too)."""
    for index in range(start, len(dataset)):
        began = time.perf_counter()
        try:
            frame = dataset.frame(index)
            inputs = prepare_frame(recipe, contract, frame, channel_order)
        except DatasetError as exc:
            if on_bad_frame == "fail":
                raise
            warn(f"skipping frame {dataset.ids[index]}: {exc.message}")
            if skipped is not None:
                skipped.append({"id": dataset.ids[index], "reason": exc.message})
            continue
        if inputs.num_dropped:
            warn(f"frame {frame.id}: {inputs.num_voxels} pillars, {inputs.num_dropped} beyond "
                 f"V={recipe.export.static_voxels} are dropped (the deploy binary drops them too)")
        yield frame, inputs, time.perf_counter() - began


class Pipeline:
    """The four compiled graphs and the NumPy stages between them.

    The camera graph runs as an asynchronous request while the LiDAR branch (PFE + scatter) runs on the calling
    thread, as the deploy binary overlaps its two branches; pooling waits for the camera, then fuser and head run.
    """

    def __init__(self, recipe, contract: Contract, compiled: Dict[str, object]):
        self.recipe = recipe
        self.contract = contract
        self.compiled = compiled
        self.tables = PoolTableCache(recipe)
        self.seconds: Dict[str, float] = defaultdict(float)  # accumulated wall time per graph and NumPy stage
        self._camera_request = compiled["camera"].create_infer_request()

    @classmethod
    def from_files(cls, recipe, contract: Contract, files: Dict[str, Path], device: str = "CPU",
                   precision: str = "f32", core=None, config: Optional[Dict] = None) -> "Pipeline":
        """Compile each stage's graph file (ONNX or IR), after checking it against the contract."""
        import openvino as ov

        core = core or ov.Core()
        compiled = {key: compile_graph(core, read_graph(core, files[key], contract[key]), device, precision, config)
                    for key in STAGES}
        return cls(recipe, contract, compiled)

    @contextlib.contextmanager
    def timed(self, stage: str, result: Optional[FrameResult] = None):
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.seconds[stage] += seconds
        if result is not None:
            result.seconds[stage] = result.seconds.get(stage, 0.0) + seconds

    def _run(self, key: str, feed: Dict[str, np.ndarray], result: FrameResult) -> Dict[str, np.ndarray]:
        result.feeds[key] = feed
        with self.timed(key, result):
            result.outputs[key] = infer(self.compiled[key], self.contract[key], feed)
        return result.outputs[key]

    def _start_camera(self, result: FrameResult) -> float:
        spec = self.contract["camera"]
        result.feeds["camera"] = {spec.inputs[0].name: result.inputs.img}
        self._camera_request.start_async(result.feeds["camera"])
        return time.perf_counter()

    def _finish_camera(self, result: FrameResult, started: float) -> np.ndarray:
        spec = self.contract["camera"]
        self._camera_request.wait()
        seconds = time.perf_counter() - started
        self.seconds["camera"] += seconds
        result.seconds["camera"] = seconds
        out = {t.name: self._camera_request.get_tensor(t.name).data.copy() for t in spec.outputs}
        result.outputs["camera"] = out
        return self.pool(result, out)

    def pool(self, result: FrameResult, camera: Dict[str, np.ndarray]) -> np.ndarray:
        """The camera BEV [1,C,nx,ny] from the camera graph's outputs, with the frame's cached pool table."""
        feature, depth = (camera[t.name] for t in self.contract["camera"].outputs)
        # The feature's memory is NHWC under its declared NCHW shape (contract): view it as [fH, fW, C].
        _, c, fh, fw = feature.shape
        with self.timed("bev_pool", result):
            table = self.tables.get(*result.inputs.metas.geometry_args())
            return bev_pool(table, depth[0], feature.reshape(fh, fw, c))[None]

    def lidar_bev(self, result: FrameResult) -> np.ndarray:
        spec = self.contract["lidar_pfe_static"]
        pfe = result.inputs.pfe
        pillars = self._run("lidar_pfe_static", pfe, result)[spec.outputs[0].name]
        features, num_voxels, coors = (pfe[t.name] for t in spec.inputs)
        with self.timed("scatter", result):
            return scatter(pillars, coors, num_voxels, self.recipe.bev_shape)

    def run(self, inputs: FrameInputs) -> FrameResult:
        """All four graphs; every graph's feed and outputs are kept on the result, with per-stage timings."""
        result = FrameResult(inputs)
        fuser, head = self.contract["fuser"], self.contract["head"]
        started = self._start_camera(result)
        lidar_bev = self.lidar_bev(result)                   # overlaps the camera graph
        cam_bev = self._finish_camera(result, started)
        middle = self._run("fuser", {fuser.inputs[0].name: cam_bev, fuser.inputs[1].name: lidar_bev}, result)
        self._run("head", {head.inputs[0].name: middle[fuser.outputs[0].name]}, result)
        return result
