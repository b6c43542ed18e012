"""MIT BEVFusion camera-only detection (Swin-T + LSS, six cameras) on the torch-free side.

    6 images ─► image_encoder ─► camera_feature [6,256,32,88] ─► lift ─► (context [6,80,32,88], depth [6,118,32,88])
      ─► pool (rig tables: rows, mask, cells) ─► bev [1,80,256,256] ─► downsample ─► [1,80,128,128] ─► decoder ─► head

The five parts at Qualcomm AI Hub's boundaries, re-cut where theirs is slow or wrong: Qualcomm's Encoder1 is the
image encoder; their Encoder2 (lift + geometry + a run-time sort of 2 M frustum points) becomes `lift` (depthnet +
depth softmax) and `pool` (a gather, a batched MatMul and a scatter-add over tables computed once per camera rig on
the host, `bevport.geometry.lss_depth`); their Encoder3 (prefix sums over a fixed 58,999 intervals) has no
counterpart; their Encoder4 is `pool`'s scatter plus `downsample`; their Decoder is `decoder` (BEV backbone, neck
and the CenterHead's convolutions, the six tasks' maps packed along channels).

This module holds the recipe checks of the model section, the overlay of an upstream torchpack config, and the ports
of each exported graph.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from bevport.contract import GraphSpec, Port, center_head_graph, graph
from bevport.data.imageaug import camera_tensor, img_aug_matrix
from bevport.errors import DatasetError, GraphError, RecipeError
from bevport.geometry import lss_depth
from bevport.geometry.lss import depth_bins
from bevport.geometry.lss_depth import PoolTables
from bevport.recipe import cells, check, check_indices, check_numbers
from bevport.runtime import pipeline as base

ENCODER, LIFT, POOL, DOWNSAMPLE, DECODER = "image_encoder", "lift", "pool", "downsample", "decoder"


# ------------------------------------------------------------------------------------------------------- recipe

def swin_channels(recipe) -> list:
    """Channels of the Swin stages the neck reads (embed_dims doubles at every stage)."""
    sw = recipe.model.camera.backbone
    return [sw.embed_dims * 2 ** i for i in sw.out_indices]


def camera_stride(recipe) -> int:
    """Pixels per camera-feature cell: patch size, halved resolution per stage, at the neck's output level."""
    cam = recipe.model.camera
    return cam.backbone.patch_size * 2 ** cam.backbone.out_indices[cam.neck.start_level + cam.neck.output_level]


def head_grid(recipe) -> list:
    """[X, Y] of the head maps: the BEV grid after the vtransform's downsample and the decoder's strides."""
    dec = recipe.model.decoder
    stride = recipe.model.camera.vtransform.downsample
    for block in dec.backbone.blocks[: dec.neck.in_indices[1] % len(dec.backbone.blocks) + 1]:
        stride *= block[2]
    return [n // stride * dec.neck.scale_factor for n in recipe.bev_shape]


INTEGERS = ("input.cameras", "model.camera.backbone.embed_dims", "model.camera.backbone.window_size",
            "model.camera.backbone.mlp_ratio", "model.camera.backbone.patch_size", "model.camera.neck.out_channels",
            "model.camera.neck.start_level", "model.camera.neck.output_level", "model.camera.vtransform.in_channels",
            "model.camera.vtransform.out_channels", "model.camera.vtransform.downsample",
            "model.decoder.backbone.in_channels", "model.decoder.neck.out_channels", "model.decoder.neck.scale_factor",
            "model.head.in_channels", "model.head.share_conv_channel", "model.head.head_conv", "model.head.final_kernel",
            "model.head.num_heatmap_convs", "model.head.bbox_coder.max_num", "model.head.bbox_coder.out_size_factor",
            "model.head.test_cfg.pre_max_size", "model.head.test_cfg.post_max_size", "export.pool_groups",
            "export.pool_scatter_rows")
NUMBERS = ("input.resize", "model.head.init_bias", "model.head.bbox_coder.score_threshold",
           "model.head.test_cfg.score_threshold", "model.head.test_cfg.nms_thr")
VECTORS = {"input.raw_image_size": 2, "input.image_size": 2, "input.mean": 3, "input.std": 3,
           "input.bot_pct_lim": 2, "model.camera.backbone.depths": 0, "model.camera.backbone.num_heads": 0,
           "model.camera.backbone.out_indices": 0, "model.camera.neck.in_channels": 0,
           "model.camera.vtransform.feature_size": 2, "model.camera.vtransform.xbound": 3,
           "model.camera.vtransform.ybound": 3, "model.camera.vtransform.zbound": 3,
           "model.camera.vtransform.dbound": 3, "model.decoder.neck.in_indices": 2,
           "model.decoder.neck.in_channels": 2, "model.head.bbox_coder.pc_range": 6,
           "model.head.bbox_coder.post_center_range": 6, "model.head.bbox_coder.voxel_size": 2,
           "model.head.test_cfg.post_center_limit_range": 6}


def check_recipe(r) -> None:
    """Every model number the code reads is present, of the right kind, and agrees with the others."""
    check_numbers(r, INTEGERS, NUMBERS, VECTORS)
    inp, cam, m = r.input, r.model.camera, r.model
    sw, neck, vt = cam.backbone, cam.neck, cam.vtransform
    check(len(inp.camera_names) == inp.cameras, r, "input.camera_names", f"must name the {inp.cameras} cameras")
    check_indices(r, "model.camera.backbone.out_indices", sw.out_indices, len(sw.depths), "Swin stage")
    check(len(sw.depths) == len(sw.num_heads) and all(sw.embed_dims * 2 ** i % h == 0
                                                      for i, h in enumerate(sw.num_heads)), r,
          "model.camera.backbone", "needs one head count per stage, each dividing the stage's channels")
    check(list(neck.in_channels) == swin_channels(r), r, "model.camera.neck.in_channels",
          f"is {list(neck.in_channels)} but the Swin stages {list(sw.out_indices)} give {swin_channels(r)}")
    check(0 <= neck.output_level < len(neck.in_channels) - 1, r, "model.camera.neck.output_level",
          f"must index one of the {len(neck.in_channels) - 1} fused levels")
    check(vt.type == "LSSTransform", r, "model.camera.vtransform.type",
          f"is {vt.type}; the camera-only architecture uses LSSTransform (depth bins along the rays)")
    check(vt.in_channels == neck.out_channels, r, "model.camera.vtransform.in_channels",
          f"is {vt.in_channels} but the neck gives {neck.out_channels}")
    stride = camera_stride(r)
    feature = [s // stride for s in inp.image_size]
    check(list(vt.feature_size) == feature, r, "model.camera.vtransform.feature_size",
          f"is {list(vt.feature_size)} but image_size {list(inp.image_size)} at stride {stride} gives {feature}")
    check(vt.dbound[0] < vt.dbound[1] and vt.dbound[2] > 0, r, "model.camera.vtransform.dbound",
          f"is {list(vt.dbound)}; expected [depth_start, depth_stop, depth_step] in metres")
    check(cells(vt.zbound, r, "model.camera.vtransform.zbound") == 1, r, "model.camera.vtransform.zbound", "must span a single bin (BEV has one z cell)")
    check(vt.downsample in (1, 2), r, "model.camera.vtransform.downsample", "must be 1 or 2 (upstream's choices)")
    dec = m.decoder
    check(dec.backbone.in_channels == vt.out_channels, r, "model.decoder.backbone.in_channels",
          f"is {dec.backbone.in_channels} but the vtransform gives {vt.out_channels}")
    picked = [[b[1] for b in dec.backbone.blocks][i] for i in dec.neck.in_indices]
    check(list(dec.neck.in_channels) == picked, r, "model.decoder.neck.in_channels",
          f"is {list(dec.neck.in_channels)} but stages {list(dec.neck.in_indices)} give {picked}")
    check(m.head.in_channels == dec.neck.out_channels, r, "model.head.in_channels",
          f"is {m.head.in_channels} but the decoder gives {dec.neck.out_channels}")
    coder = m.head.bbox_coder
    cell = coder.out_size_factor * coder.voxel_size[0]
    grid = head_grid(r)
    check(abs(cell * grid[0] - (vt.xbound[1] - vt.xbound[0])) < 1e-6, r, "model.head.bbox_coder",
          f"decodes {cell:g} m per cell over a {grid[0]}-cell map, which does not span xbound {list(vt.xbound)}")
    ntasks = len(m.head.tasks)
    for key in ("nms_type", "min_radius", "nms_scale"):
        check(len(m.head.test_cfg[key]) == ntasks, r, f"model.head.test_cfg.{key}", f"needs one entry per task "
                                                                                     f"({ntasks})")
    check(r.export.pool_groups >= depth_bins(vt), r, "export.pool_groups",
          f"must be at least the {depth_bins(vt)} depth bins (one group per bin and column at the least)")
    graph_specs(r)  # every graph's tensor names fit its ports


def _pick(source: Dict[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    return {k: source[k] for k in keys if k in source and source[k] is not None}


def config_overlay(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Translate a merged upstream config (camera-only BEVFusion) into the recipe's layout."""
    try:
        model = cfg["model"]
        camera = model["encoders"]["camera"]
        head = model["heads"]["object"]
    except (KeyError, TypeError) as exc:
        raise RecipeError(f"config has no `model.{exc.args[0]}` section; is this a BEVFusion config?") from None
    if (model.get("encoders") or {}).get("lidar") or model.get("fuser"):
        raise RecipeError("config has a LiDAR encoder or a fuser; this recipe is camera-only "
                          "(pick a camera+LiDAR recipe with --recipe for a fused model)")
    for section, expected in ((camera["backbone"], "SwinTransformer"), (camera["neck"], "GeneralizedLSSFPN"),
                              (camera["vtransform"], "LSSTransform"),
                              (model["decoder"]["backbone"], "GeneralizedResNet"), (model["decoder"]["neck"], "LSSFPN"),
                              (head, "CenterHead")):
        if section.get("type", expected) != expected:
            raise RecipeError(f"config uses {section['type']} where this recipe's model has {expected}")
    vt = dict(camera["vtransform"])
    separate = head.get("separate_head") or {}
    neck = _pick(camera["neck"], ["in_channels", "out_channels", "start_level", "num_outs"])
    if "upsample_cfg" in camera["neck"]:
        neck["upsample"] = dict(camera["neck"]["upsample_cfg"])
    overlay: Dict[str, Any] = {
        "input": {},
        "model": {
            "camera": {
                "backbone": _pick(camera["backbone"], ["embed_dims", "depths", "num_heads", "window_size",
                                                       "mlp_ratio", "qkv_bias", "out_indices"]),
                "neck": neck,
                "vtransform": _pick(vt, ["type", "in_channels", "out_channels", "feature_size", "xbound", "ybound",
                                         "zbound", "dbound", "downsample"]),
            },
            "decoder": {"backbone": _pick(model["decoder"]["backbone"], ["in_channels", "blocks"]),
                        "neck": _pick(model["decoder"]["neck"], ["in_indices", "in_channels", "out_channels",
                                                                 "scale_factor"])},
            "head": dict(_pick(head, ["in_channels", "share_conv_channel", "tasks", "common_heads"]),
                         **_pick(separate, ["final_kernel", "init_bias"]),
                         bbox_coder=_pick(head.get("bbox_coder") or {}, ["pc_range", "post_center_range", "max_num",
                                                                         "score_threshold", "out_size_factor",
                                                                         "voxel_size", "code_size"]),
                         test_cfg=_pick(head.get("test_cfg") or {}, [
                             "post_center_limit_range", "score_threshold", "out_size_factor", "voxel_size",
                             "pre_max_size", "post_max_size", "nms_thr", "nms_type", "min_radius", "nms_scale"])),
        },
    }
    image_size = vt.get("image_size") or cfg.get("image_size")
    if image_size is not None:
        overlay["input"]["image_size"] = list(image_size)
    if "patch_size" in camera["backbone"]:
        overlay["model"]["camera"]["backbone"]["patch_size"] = camera["backbone"]["patch_size"]
    if "window_size" in camera["backbone"] and isinstance(camera["backbone"]["window_size"], (list, tuple)):
        raise RecipeError("config gives Swin a non-square window; bevport's Swin uses square windows")
    return overlay


# ------------------------------------------------------------------------------------------------------- graphs

def graph_specs(recipe) -> Dict[str, GraphSpec]:
    """The five exported parts' ports, in export order."""
    m = recipe.model
    n = recipe.input.cameras
    h, w = recipe.input.image_size
    fh, fw = m.camera.vtransform.feature_size
    vt = m.camera.vtransform
    d, c = depth_bins(vt), vt.out_channels
    bev = tuple(recipe.bev_shape)
    groups, rows = recipe.export.pool_groups, recipe.export.pool_scatter_rows
    down = tuple(b // vt.downsample for b in bev)
    return {
        ENCODER: graph(recipe, ENCODER, [Port((n, 3, h, w))], [Port((n, m.camera.neck.out_channels, fh, fw))]),
        LIFT: graph(recipe, LIFT, [Port((n, vt.in_channels, fh, fw))], [Port((n, c, fh, fw)), Port((n, d, fh, fw))]),
        POOL: graph(recipe, POOL, [Port((n, c, fh, fw)), Port((n, d, fh, fw)), Port((n * fw, groups), "int32"),
                                   Port((n * fw, groups, fh)), Port((bev[0] * bev[1] + 1,), "int32"),
                                   Port((rows,), "int32"), Port((rows,), "int32")],
                    [Port((1, c) + bev)]),
        DOWNSAMPLE: graph(recipe, DOWNSAMPLE, [Port((1, c) + bev)], [Port((1, c) + down)]),
        DECODER: center_head_graph(recipe, DECODER, [Port((1, c) + down)], head_grid(recipe)),
    }


# ----------------------------------------------------------------------------------------------------- pipeline

@dataclass
class CameraInputs(base.FrameInputs):
    """One frame read and preprocessed: the six normalised images, the rig's matrices and its pool tables."""
    img: np.ndarray                     # [N,3,H,W] float32
    camera2lidar: np.ndarray            # [N,4,4] float32, as the dataset stores it
    intrinsics: np.ndarray              # [N,4,4] float32
    tables: PoolTables
    rig_note: str = ""                  # set when this frame's rig built new tables

    def stats(self) -> Dict[str, int]:
        return {"pool_groups": self.tables.groups, "occupied_cells": self.tables.occupied}

    def notes(self) -> List[str]:
        return [self.rig_note] if self.rig_note else []


class Pipeline(base.Pipeline):
    """The five parts in order; the pool part takes the tables of the frame's camera rig, computed on the host once
    per rig (keyed by the matrices' bytes) from the checkpoint's frustum that export writes beside the graphs."""

    def __init__(self, recipe, contract, compiled, deploy_cap: bool = False):
        super().__init__(recipe, contract, compiled, deploy_cap)
        self.frustum: Optional[np.ndarray] = None
        self._tables: "OrderedDict[bytes, PoolTables]" = OrderedDict()
        self._lock = threading.Lock()

    def attach(self, folder: Path) -> None:
        path = Path(folder) / "frustum.npy"
        try:
            frustum = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise GraphError(f"{path}: cannot read the frustum ({exc})",
                             "`bevport export` writes frustum.npy beside the graphs; keep it with them") from None
        vt = self.recipe.model.camera.vtransform
        expected = (depth_bins(vt),) + tuple(vt.feature_size) + (3,)
        if frustum.shape != expected or frustum.dtype != np.float32:
            raise GraphError(f"{path}: frustum is {frustum.dtype} {list(frustum.shape)}, the recipe needs float32 "
                             f"{list(expected)}")
        self.frustum = frustum

    def prepare(self, frame, channel_order: str = "training") -> CameraInputs:
        names = list(self.recipe.input.camera_names)
        if [c.name for c in frame.cameras] != names:
            raise DatasetError(f"frame {frame.id}: cameras {[c.name for c in frame.cameras]}, the recipe reads {names}")
        img = camera_tensor(self.recipe, [c.image() for c in frame.cameras], [str(c.image_path) for c in frame.cameras])
        camera2lidar = np.stack([np.asarray(c.camera2lidar, np.float32) for c in frame.cameras])
        intrinsics = np.tile(np.eye(4, dtype=np.float32), (len(names), 1, 1))
        intrinsics[:, :3, :3] = np.stack([c.intrinsics for c in frame.cameras])
        tables, note = self.rig_tables(frame.id, camera2lidar, intrinsics)
        return CameraInputs(frame.id, img, camera2lidar, intrinsics, tables, note)

    def rig_tables(self, frame_id: str, camera2lidar: np.ndarray, intrinsics: np.ndarray):
        """(pool tables of this rig, a note when they were built for it now)."""
        if self.frustum is None:
            raise GraphError("the camera-only pipeline has no frustum: attach() the folder of its graphs first")
        key = camera2lidar.tobytes() + intrinsics.tobytes()
        with self._lock:
            tables = self._tables.get(key)
            if tables is not None:
                self._tables.move_to_end(key)
                return tables, ""
            r, vt = self.recipe, self.recipe.model.camera.vtransform
            ida, bda = img_aug_matrix(r), np.eye(4, dtype=np.float32)
            geom = np.stack([lss_depth.geometry(self.frustum, c2l, k, ida, bda)
                             for c2l, k in zip(camera2lidar, intrinsics)])
            cells, inside = lss_depth.cells(geom, vt.xbound, vt.ybound, vt.zbound)
            tables = lss_depth.pool_tables(cells, inside, r.bev_shape, r.export.pool_groups,
                                           r.export.pool_scatter_rows)
            self._tables[key] = tables
            while len(self._tables) > 8:
                self._tables.popitem(last=False)
        return tables, (f"frame {frame_id}: new camera rig, pool tables built ({tables.groups} groups, "
                        f"{tables.occupied} occupied cells)")

    def start(self, inputs: CameraInputs) -> base.FrameResult:
        result = base.FrameResult(inputs)
        feature = self.run_graph(ENCODER, self.feed(ENCODER, inputs.img), result)
        context, depth = self.run_graph(LIFT, self.feed(LIFT, *feature.values()), result).values()
        bev = self.run_graph(POOL, self.feed(POOL, context, depth, *inputs.tables.inputs()), result)
        down = self.run_graph(DOWNSAMPLE, self.feed(DOWNSAMPLE, *bev.values()), result)
        self.run_graph(DECODER, self.feed(DECODER, *down.values()), result)
        return result

    def finish(self, result: base.FrameResult) -> base.FrameResult:
        return result

    def settings(self) -> Dict[str, object]:
        return {"pool_groups": self.recipe.export.pool_groups,
                "pool_scatter_rows": self.recipe.export.pool_scatter_rows}
