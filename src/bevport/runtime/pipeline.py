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
from typing import Dict

import numpy as np

from bevport.contract import Contract, GraphSpec
from bevport.data.dataset import Frame
from bevport.data.preprocess import CameraMetas, camera_metas, image_tensor
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


class Pipeline:
    """The four compiled graphs and the NumPy stages between them, for one device and precision per graph."""

    def __init__(self, recipe, contract: Contract, compiled: Dict[str, object]):
        self.recipe = recipe
        self.contract = contract
        self.compiled = compiled
        self.tables = PoolTableCache(recipe)
        self.seconds: Dict[str, float] = defaultdict(float)  # accumulated wall time per graph and NumPy stage

    @classmethod
    def from_files(cls, recipe, contract: Contract, files: Dict[str, Path], device: str = "CPU",
                   precision: str = "f32", core=None) -> "Pipeline":
        """Compile each stage's graph file (ONNX or IR), after checking it against the contract."""
        import openvino as ov

        core = core or ov.Core()
        compiled = {key: compile_graph(core, read_graph(core, files[key], contract[key]), device, precision)
                    for key in STAGES}
        return cls(recipe, contract, compiled)

    def _run(self, key: str, feed: Dict[str, np.ndarray], result: FrameResult) -> Dict[str, np.ndarray]:
        spec: GraphSpec = self.contract[key]
        result.feeds[key] = feed
        with self.timed(key):
            result.outputs[key] = infer(self.compiled[key], spec, feed)
        return result.outputs[key]

    @contextlib.contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - start

    def camera_bev(self, result: FrameResult) -> np.ndarray:
        spec = self.contract["camera"]
        out = self._run("camera", {spec.inputs[0].name: result.inputs.img}, result)
        feature, depth = (out[t.name] for t in spec.outputs)
        # The feature's memory is NHWC under its declared NCHW shape (contract): view it as [fH, fW, C].
        _, c, fh, fw = feature.shape
        with self.timed("bev_pool"):
            table = self.tables.get(*result.inputs.metas.geometry_args())
            return bev_pool(table, depth[0], feature.reshape(fh, fw, c))[None]

    def lidar_bev(self, result: FrameResult) -> np.ndarray:
        spec = self.contract["lidar_pfe_static"]
        pfe = result.inputs.pfe
        pillars = self._run("lidar_pfe_static", pfe, result)[spec.outputs[0].name]
        features, num_voxels, coors = (pfe[t.name] for t in spec.inputs)
        with self.timed("scatter"):
            return scatter(pillars, coors, num_voxels, self.recipe.bev_shape)

    def run(self, inputs: FrameInputs) -> FrameResult:
        """All four graphs in order; every graph's feed and outputs are kept on the result."""
        result = FrameResult(inputs)
        fuser, head = self.contract["fuser"], self.contract["head"]
        cam_bev, lidar_bev = self.camera_bev(result), self.lidar_bev(result)
        middle = self._run("fuser", {fuser.inputs[0].name: cam_bev, fuser.inputs[1].name: lidar_bev}, result)
        self._run("head", {head.inputs[0].name: middle[fuser.outputs[0].name]}, result)
        return result
