"""V2XFusion (CUDA-V2XFusion: ResNet34 camera + PointPillars LiDAR, CenterHead) on the torch-free side.

    image ─ preprocess ─► camera ─► (feature NHWC, depth) ─ BEV pool (table per calibration) ─► cam_bev ──┐
    points ─ voxelize (file order, 100 slots, V rows) ─► lidar_pfe ─► pillar features ─ scatter ─► lidar_bev ─┴► fuser ─► head

The four deploy graphs run as Intel's deploy binary runs them, with training's semantics; everything outside the
graphs is NumPy. This module also holds the recipe checks of the V2XFusion model section, the overlay of an upstream
torchpack config, and the ports of each exported graph.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from bevport.contract import GraphSpec, Port, center_head_graph, graph
from bevport.data.preprocess import CameraMetas, camera_metas, image_tensor
from bevport.errors import DatasetError, RecipeError
from bevport.geometry.lss import PoolTableCache, bev_pool, depth_bins
from bevport.geometry.voxelize import scatter, test_time_max_voxels, voxelize_for_deploy
from bevport.recipe import cells, check, check_indices, check_numbers
from bevport.runtime import pipeline as base

CAMERA, PFE_DYNAMIC, PFE, FUSER, HEAD = "camera", "lidar_pfe_dynamic", "lidar_pfe", "fuser", "head"


# ------------------------------------------------------------------------------------------------------- recipe

def camera_stride(recipe) -> int:
    """Pixels per camera-feature cell: the ResNet stage the neck's output level comes from."""
    neck = recipe.model.camera.neck
    stage = recipe.model.camera.backbone.out_indices[neck.start_level + neck.output_level]
    return 4 * 2 ** stage


def decoder_stride(recipe) -> int:
    """BEV cells per head cell: the decoder backbone's strides up to the neck's finer input, undone by its upsample."""
    dec = recipe.model.decoder
    strides = [b[2] for b in dec.backbone.blocks]
    stride = 1
    for s in strides[: dec.neck.in_indices[1] % len(strides) + 1]:
        stride *= s
    return stride


INTEGERS = ("input.point_dims", "model.camera.backbone.depth", "model.camera.neck.out_channels",
            "model.camera.neck.start_level", "model.camera.neck.output_level", "model.camera.vtransform.in_channels",
            "model.camera.vtransform.out_channels", "model.camera.vtransform.downsample",
            "model.lidar.voxelize.max_num_points", "model.lidar.scatter.in_channels", "model.fuser.out_channels",
            "model.decoder.backbone.in_channels", "model.decoder.neck.out_channels", "model.decoder.neck.scale_factor",
            "model.head.in_channels", "model.head.share_conv_channel", "model.head.head_conv", "model.head.final_kernel",
            "model.head.num_heatmap_convs", "model.head.bbox_coder.max_num", "model.head.bbox_coder.out_size_factor",
            "model.head.test_cfg.pre_max_size", "model.head.test_cfg.post_max_size", "export.static_voxels",
            "export.deploy_max_points")
NUMBERS = ("input.intensity_scale", "model.camera.vtransform.did_alpha", "model.lidar.pfn.input_bn_eps",
           "model.lidar.pfn.norm_eps", "model.head.init_bias", "model.head.bbox_coder.score_threshold",
           "model.head.test_cfg.score_threshold", "model.head.test_cfg.nms_thr")
VECTORS = {"input.raw_image_size": 2, "input.image_size": 2, "input.mean": 3, "input.std": 3,
           "model.camera.backbone.out_indices": 0, "model.camera.neck.in_channels": 0,
           "model.camera.vtransform.feature_size": 2, "model.camera.vtransform.xbound": 3,
           "model.camera.vtransform.ybound": 3, "model.camera.vtransform.zbound": 3,
           "model.camera.vtransform.dbound": 3, "model.lidar.voxelize.point_cloud_range": 6,
           "model.lidar.voxelize.voxel_size": 3, "model.lidar.pfn.feat_channels": 0,
           "model.lidar.scatter.output_shape": 2, "model.fuser.in_channels": 2, "model.decoder.neck.in_indices": 2,
           "model.decoder.neck.in_channels": 2, "model.head.bbox_coder.pc_range": 6,
           "model.head.bbox_coder.post_center_range": 6, "model.head.bbox_coder.voxel_size": 2,
           "model.head.test_cfg.post_center_limit_range": 6}


def check_recipe(r) -> None:
    """Every model number the code reads is present, of the right kind, and agrees with the others."""
    check_numbers(r, INTEGERS, NUMBERS, VECTORS)
    inp, cam, lidar, m = r.input, r.model.camera, r.model.lidar, r.model
    vt, neck, vox = cam.vtransform, cam.neck, lidar.voxelize
    check(cam.backbone.depth in (18, 34), r, "model.camera.backbone.depth",
          f"is {cam.backbone.depth}; bevport's camera backbone implements the BasicBlock ResNets 18 and 34")
    check(inp.point_dims >= 4 and inp.intensity_scale > 0, r, "input",
          "needs point_dims >= 4 (x, y, z, intensity) and intensity_scale > 0")
    check_indices(r, "model.camera.backbone.out_indices", cam.backbone.out_indices, 4, "ResNet stage")
    backbone_channels = [64 * 2 ** i for i in cam.backbone.out_indices]
    check(list(neck.in_channels) == backbone_channels, r, "model.camera.neck.in_channels",
          f"is {list(neck.in_channels)} but the ResNet stages {list(cam.backbone.out_indices)} give {backbone_channels}")
    check(0 <= neck.output_level < len(neck.in_channels) - 1, r, "model.camera.neck.output_level",
          f"must index one of the {len(neck.in_channels) - 1} fused levels")
    check(vt.type == "LSSV2XTransform", r, "model.camera.vtransform.type",
          f"is {vt.type}; the V2XFusion architecture uses LSSV2XTransform (height bins)")
    check(vt.in_channels == neck.out_channels, r, "model.camera.vtransform.in_channels",
          f"is {vt.in_channels} but the neck gives {neck.out_channels}")
    stride = camera_stride(r)
    feature = [s // stride for s in inp.image_size]
    check(list(vt.feature_size) == feature, r, "model.camera.vtransform.feature_size",
          f"is {list(vt.feature_size)} but image_size {list(inp.image_size)} at stride {stride} gives {feature}")
    check(vt.downsample == 1, r, "model.camera.vtransform.downsample", "must be 1 (the V2X transform has no downsample)")
    check(float(vt.dbound[2]).is_integer() and vt.dbound[2] >= 1 and vt.dbound[0] < vt.dbound[1], r,
          "model.camera.vtransform.dbound", f"is {list(vt.dbound)}; expected [height_min, height_max, num_bins]")
    check(cells(vt.zbound, r, "model.camera.vtransform.zbound") == 1, r, "model.camera.vtransform.zbound", "must span a single bin (BEV has one z cell)")
    grid = [cells([vox.point_cloud_range[i], vox.point_cloud_range[i + 3], vox.voxel_size[i]], r,
                  "model.lidar.voxelize.point_cloud_range") for i in range(3)]
    check(grid[2] == 1, r, "model.lidar.voxelize.voxel_size", f"must give one z cell (pillars), gives grid {grid}")
    check(grid[:2] == r.bev_shape, r, "model.lidar.voxelize", f"gives a {grid[:2]} pillar grid but the camera BEV "
          f"(xbound/ybound) is {r.bev_shape}")
    check(list(lidar.scatter.output_shape) == r.bev_shape, r, "model.lidar.scatter.output_shape",
          f"is {list(lidar.scatter.output_shape)} but the BEV grid is {r.bev_shape}")
    check(lidar.pfn.feat_channels[-1] == lidar.scatter.in_channels and len(lidar.pfn.feat_channels) == 1, r,
          "model.lidar.pfn.feat_channels", f"must be one layer of {lidar.scatter.in_channels} channels")
    check(not lidar.pfn.with_distance, r, "model.lidar.pfn.with_distance", "is not supported (V2XFusion trains without)")
    check(list(m.fuser.in_channels) == [vt.out_channels, lidar.scatter.in_channels], r, "model.fuser.in_channels",
          f"is {list(m.fuser.in_channels)}; camera BEV has {vt.out_channels} and LiDAR BEV "
          f"{lidar.scatter.in_channels} channels")
    dec = m.decoder
    check(dec.backbone.in_channels == m.fuser.out_channels, r, "model.decoder.backbone.in_channels",
          f"is {dec.backbone.in_channels} but the fuser gives {m.fuser.out_channels}")
    stage_channels = [b[1] for b in dec.backbone.blocks]
    picked = [stage_channels[i] for i in dec.neck.in_indices]
    check(list(dec.neck.in_channels) == picked, r, "model.decoder.neck.in_channels",
          f"is {list(dec.neck.in_channels)} but stages {list(dec.neck.in_indices)} give {picked}")
    head = m.head
    check(head.in_channels == dec.neck.out_channels, r, "model.head.in_channels",
          f"is {head.in_channels} but the decoder gives {dec.neck.out_channels}")
    head_size = [n // decoder_stride(r) * dec.neck.scale_factor for n in r.bev_shape]
    check(head_size == r.bev_shape, r, "model.decoder", f"outputs a {head_size} map but the BEV grid is {r.bev_shape}")
    coder = head.bbox_coder
    cell = coder.out_size_factor * coder.voxel_size[0]
    check(abs(cell - vt.xbound[2]) < 1e-6, r, "model.head.bbox_coder",
          f"decodes {cell:g} m per cell (out_size_factor x voxel_size) but the BEV cell is {vt.xbound[2]:g} m")
    ntasks = len(head.tasks)
    for key in ("nms_type", "min_radius", "nms_scale"):
        check(len(head.test_cfg[key]) >= ntasks, r, f"model.head.test_cfg.{key}", f"needs one entry per task ({ntasks})")
    limit = vox.max_voxels
    check(all(isinstance(n, int) and n > 0 for n in (limit if isinstance(limit, list) else [limit])), r,
          "model.lidar.voxelize.max_voxels", f"is {limit!r}; expected a positive integer or [train, test] integers")
    check(r.export.static_voxels > 0 and r.export.deploy_max_points >= vox.max_num_points, r, "export",
          f"static_voxels must be > 0 and deploy_max_points >= max_num_points ({vox.max_num_points})")
    graph_specs(r)  # every graph's tensor names fit its ports


def _pick(source: Dict[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    return {k: source[k] for k in keys if k in source and source[k] is not None}


def config_overlay(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Translate a merged upstream config into the recipe's layout (only the fields the config sets)."""
    try:
        model = cfg["model"]
        camera = model["encoders"]["camera"]
        lidar = model["encoders"]["lidar"]
        head = model["heads"]["object"]
    except (KeyError, TypeError) as exc:
        raise RecipeError(f"config has no `model.{exc.args[0]}` section; is this a camera+LiDAR BEVFusion config?") \
            from None
    for section, expected in ((camera["backbone"], "ResNet"), (camera["neck"], "GeneralizedLSSFPN"),
                              (camera["vtransform"], "LSSV2XTransform"),
                              (model["decoder"]["backbone"], "GeneralizedResNet"), (model["decoder"]["neck"], "LSSFPN"),
                              (model["fuser"], "ConvFuser"), (head, "CenterHead")):
        if section.get("type", expected) != expected:
            raise RecipeError(f"config uses {section['type']} where this recipe's model has {expected}")
    vt = dict(camera["vtransform"])
    image_size = vt.pop("image_size", None) or cfg.get("image_size")
    voxel_encoder = lidar["backbone"]["pts_voxel_encoder"]
    neck = _pick(camera["neck"], ["in_channels", "out_channels", "start_level", "num_outs"])
    if "upsample_cfg" in camera["neck"]:
        neck["upsample"] = dict(camera["neck"]["upsample_cfg"])
    separate = head.get("separate_head") or {}
    overlay: Dict[str, Any] = {
        "input": {},
        "model": {
            "camera": {
                "backbone": _pick(camera["backbone"], ["depth", "out_indices"]),
                "neck": neck,
                "vtransform": _pick(vt, ["type", "in_channels", "out_channels", "feature_size", "xbound", "ybound",
                                         "zbound", "dbound", "downsample"]),
            },
            "lidar": {
                "voxelize": _pick(lidar["voxelize"], ["max_num_points", "point_cloud_range", "voxel_size",
                                                      "max_voxels"]),
                "pfn": _pick(voxel_encoder, ["feat_channels", "with_distance"]),
                "scatter": _pick(lidar["backbone"]["pts_middle_encoder"], ["in_channels", "output_shape"]),
            },
            "fuser": _pick(model["fuser"], ["in_channels", "out_channels"]),
            "decoder": {"backbone": _pick(model["decoder"]["backbone"], ["in_channels", "blocks"]),
                        "neck": _pick(model["decoder"]["neck"], ["in_indices", "in_channels", "out_channels",
                                                                 "scale_factor"])},
            "head": dict(_pick(head, ["in_channels", "share_conv_channel", "tasks", "common_heads"]),
                         **_pick(separate, ["final_kernel", "init_bias"]),
                         bbox_coder=_pick(head.get("bbox_coder") or {}, ["pc_range", "post_center_range", "max_num",
                                                                         "score_threshold", "out_size_factor",
                                                                         "voxel_size", "code_size"]),
                         test_cfg=_test_cfg(head.get("test_cfg") or {}, len(head.get("tasks") or []))),
        },
    }
    if image_size is not None:
        overlay["input"]["image_size"] = list(image_size)
    if "in_channels" in voxel_encoder:
        overlay["input"]["point_dims"] = voxel_encoder["in_channels"]
    test_set = ((cfg.get("data") or {}).get("test") or {}).get("dataset") or {}
    if "H" in test_set and "W" in test_set:
        overlay["input"]["raw_image_size"] = [test_set["H"], test_set["W"]]
    overlay["input"].update({k: test_set[s] for k, s in (("mean", "img_mean"), ("std", "img_std"),
                                                         ("to_rgb", "to_rgb")) if s in test_set})
    if head.get("in_channels") is None and "neck" in model["decoder"]:
        overlay["model"]["head"]["in_channels"] = model["decoder"]["neck"]["out_channels"]
    return overlay


def _test_cfg(test_cfg: Dict[str, Any], ntasks: int) -> Dict[str, Any]:
    out = _pick(test_cfg, ["post_center_limit_range", "score_threshold", "out_size_factor", "voxel_size",
                           "pre_max_size", "post_max_size", "nms_thr"])
    # Upstream lists hold one entry per task of a 6-task head; only the first `ntasks` are read (spec §1.2).
    for key in ("nms_type", "min_radius", "nms_scale"):
        if key in test_cfg:
            value = test_cfg[key]
            out[key] = list(value[:ntasks]) if isinstance(value, list) else [value] * ntasks
    return out


# ------------------------------------------------------------------------------------------------------- graphs

def graph_specs(recipe) -> Dict[str, GraphSpec]:
    """The five exported graphs' ports, in export order."""
    m = recipe.model
    h, w = recipe.input.image_size
    fh, fw = m.camera.vtransform.feature_size
    bev = tuple(recipe.bev_shape)
    cam_c, lidar_c = m.camera.vtransform.out_channels, m.lidar.scatter.in_channels
    points = (recipe.export.deploy_max_points, recipe.input.point_dims)

    def pfe(key: str, v) -> GraphSpec:
        return graph(recipe, key, [Port((v,) + points), Port((v,), "int32"), Port((v, 4), "int32")],
                     [Port((v, lidar_c))])

    return {
        CAMERA: graph(recipe, CAMERA, [Port((1, 3, h, w))],
                      [Port((1, cam_c, fh, fw), layout="NHWC"),
                       Port((1, depth_bins(m.camera.vtransform), fh, fw))]),
        PFE_DYNAMIC: pfe(PFE_DYNAMIC, "V"),
        PFE: pfe(PFE, recipe.export.static_voxels),
        FUSER: graph(recipe, FUSER, [Port((1, cam_c) + bev), Port((1, lidar_c) + bev)],
                     [Port((1, m.decoder.neck.out_channels) + bev)]),
        HEAD: center_head_graph(recipe, HEAD, [Port((1, m.head.in_channels) + bev)], bev),
    }


# ----------------------------------------------------------------------------------------------------- pipeline

@dataclass
class V2XInputs(base.FrameInputs):
    """One frame read and preprocessed: the camera input, its calibration and the PFE's padded voxels."""
    img: np.ndarray                 # [1,3,H,W] float32, normalised in the checkpoint's channel order
    metas: CameraMetas
    pfe: Dict[str, np.ndarray]      # the PFE graph's three named inputs, a multiple of the static V rows
    num_voxels: int                 # non-empty pillars in the frame
    num_dropped: int                # pillars no PFE run sees (beyond the static V with --deploy-cap)
    static_voxels: int
    non_finite_points: int = 0      # points with nan/inf in a column the model reads, dropped

    @property
    def pfe_runs(self) -> int:
        """Static-V PFE runs this frame needs (1 unless it has more pillars than V)."""
        return len(next(iter(self.pfe.values()))) // self.static_voxels

    def pfe_chunks(self) -> List[Dict[str, np.ndarray]]:
        """The PFE feed of each run: consecutive blocks of V rows (views, no copies)."""
        v = self.static_voxels
        return [{name: a[start:start + v] for name, a in self.pfe.items()} for start in range(0, v * self.pfe_runs, v)]

    def stats(self) -> Dict[str, int]:
        return {"pillars": self.num_voxels, "dropped_pillars": self.num_dropped, "pfe_runs": self.pfe_runs}

    def notes(self) -> List[str]:
        notes = []
        if self.non_finite_points:
            notes.append(f"frame {self.frame_id}: {self.non_finite_points} points with nan/inf values dropped")
        if self.num_dropped:
            notes.append(f"frame {self.frame_id}: {self.num_voxels} pillars, {self.num_dropped} are dropped (beyond "
                         f"V={self.static_voxels} as the deploy binary binds it, or training's voxel limit)")
        return notes


def scaled_points(recipe, points: np.ndarray) -> np.ndarray:
    """The point columns the model reads, with the recipe's intensity scale applied (a no-op at 1.0). Rows with a
    nan or inf in those columns must be dropped first (`Pipeline.prepare` does)."""
    points = points[:, : recipe.input.point_dims]
    scale = float(recipe.input.intensity_scale)
    if scale != 1.0:
        points = points.copy()
        points[:, 3] *= np.float32(scale)
    return points


class Pipeline(base.Pipeline):
    """The camera graph runs as an asynchronous request while the LiDAR branch (PFE + scatter) runs on the calling
    thread, as the deploy binary overlaps its two branches; pooling waits for the camera, then fuser and head run."""

    def __init__(self, recipe, contract, compiled, deploy_cap: bool = False):
        super().__init__(recipe, contract, compiled, deploy_cap)
        self.tables = PoolTableCache(recipe)
        self._free_requests: deque = deque()  # camera requests not in flight; start() takes one, finish() returns it

    def prepare(self, frame, channel_order: str = "training") -> V2XInputs:
        if len(frame.cameras) != 1 or frame.points_path is None:
            raise DatasetError(f"frame {frame.id}: V2XFusion needs one camera and a point cloud, the frame has "
                               f"{len(frame.cameras)} camera(s) and {'a' if frame.points_path else 'no'} point cloud")
        camera = frame.cameras[0]
        img = image_tensor(self.recipe, camera.image(), channel_order, source=str(camera.image_path))
        metas = camera_metas(self.recipe, camera)
        points = frame.points()
        finite = np.isfinite(points[:, : self.recipe.input.point_dims]).all(axis=1)
        if not finite.all():
            points = points[finite]
        padded = voxelize_for_deploy(self.recipe, scaled_points(self.recipe, points), self.deploy_cap)
        pfe = self.feed(PFE, padded.features, padded.num_voxels, padded.coors)
        valid = int(np.count_nonzero(padded.num_voxels))
        return V2XInputs(frame.id, img, metas, pfe, valid + padded.num_dropped, padded.num_dropped,
                         self.recipe.export.static_voxels, int(np.count_nonzero(~finite)))

    def start(self, inputs: V2XInputs) -> base.FrameResult:
        result = base.FrameResult(inputs)
        request = self._free_requests.popleft() if self._free_requests else \
            self.compiled[CAMERA].create_infer_request()
        result.feeds[CAMERA] = self.feed(CAMERA, inputs.img)
        request.start_async(result.feeds[CAMERA], share_inputs=True)   # the feed lives on the result
        result.pending[CAMERA] = (request, time.perf_counter())
        result.pending["lidar_bev"] = self.lidar_bev(result)    # overlaps the camera graph
        return result

    def finish(self, result: base.FrameResult) -> base.FrameResult:
        request, started = result.pending.pop(CAMERA)
        request.wait()
        self.record(CAMERA, time.perf_counter() - started, result)
        result.outputs[CAMERA] = {t.name: request.get_tensor(t.name).data.copy() for t in self.contract[CAMERA].outputs}
        self._free_requests.append(request)
        cam_bev = self.pool(result)
        middle = self.run_graph(FUSER, self.feed(FUSER, cam_bev, result.pending.pop("lidar_bev")), result)
        self.run_graph(HEAD, self.feed(HEAD, *middle.values()), result)
        return result

    def pool(self, result: base.FrameResult) -> np.ndarray:
        """The camera BEV [1,C,nx,ny] from the camera graph's outputs, with the frame's cached pool table."""
        feature, depth = self.output(result, CAMERA, 0), self.output(result, CAMERA, 1)
        # The feature's memory is NHWC under its declared NCHW shape (contract): view it as [fH, fW, C].
        _, c, fh, fw = feature.shape
        with self.timed("bev_pool", result):
            table = self.tables.get(*result.inputs.metas.geometry_args())
            return bev_pool(table, depth[0], feature.reshape(fh, fw, c))[None]

    def lidar_bev(self, result: base.FrameResult) -> np.ndarray:
        """PFE over every pillar, V rows per run (features are per pillar, so the blocks equal one run over all of
        them), then the scatter. The result records the first run's feed and output as the PFE's."""
        inputs = result.inputs
        name = self.contract[PFE].outputs[0].name
        first, *rest = inputs.pfe_chunks()
        pillars = [self.run_graph(PFE, first, result)[name]]
        for chunk in rest:
            with self.timed(PFE, result):
                pillars.append(self.infer(PFE, chunk)[name])
        pillars = pillars[0] if len(pillars) == 1 else np.concatenate(pillars)
        _, num_voxels, coors = (inputs.pfe[t.name] for t in self.contract[PFE].inputs)
        with self.timed("scatter", result):
            return scatter(pillars, coors, num_voxels, self.recipe.bev_shape)

    def inspect(self, inputs: V2XInputs, warn: Callable[[str], None]) -> None:
        """Training read raw 0-255 intensity; a dataset converted to 0-1 would silently shift every pillar feature."""
        features = inputs.pfe[self.contract[PFE].inputs[0].name]
        peak = float(features[..., 3].max())
        scale = float(self.recipe.input.intensity_scale)
        if peak <= 1.0:
            warn(f"frame {inputs.frame_id}: intensity peaks at {peak:.3g} after scaling by {scale:g}; the checkpoint "
                 "was trained on raw 0-255 intensity. If this dataset was converted to 0-1 (velodyne/*.bin from "
                 "Intel's or DAIR's converter), pass --intensity-scale 255")
        elif peak > 255 * 1.01:
            warn(f"frame {inputs.frame_id}: intensity reaches {peak:.4g} after scaling by {scale:g}, above the 0-255 "
                 "range the checkpoint was trained on; check --intensity-scale")

    def settings(self) -> Dict[str, object]:
        return {"static_voxels": self.recipe.export.static_voxels,
                "intensity_scale": self.recipe.input.intensity_scale}
