"""Stand-ins for the compiled ops the upstream inference path calls, with the extension modules' own signatures.

The training trees (MIT BEVFusion + CUDA-V2XFusion) compile their ops with nvcc; without a GPU they cannot be built.
The inference path calls exactly three of those extension modules:

* `mmdet3d.ops.voxel.voxel_layer`: `hard_voxelize` (the LiDAR voxelizer) and `dynamic_voxelize`;
* `mmdet3d.ops.bev_pool.bev_pool_ext`: `bev_pool_forward` (the LSS BEV pool);
* `mmdet3d.ops.iou3d.iou3d_cuda`: `nms_gpu`, `nms_normal_gpu`, `boxes_iou_bev_gpu`, `boxes_overlap_bev_gpu` (the
  CenterHead's rotated NMS).

Each stand-in fills the caller's output tensors and returns what the kernel returns, so the tree's own Python
wrappers (`Voxelization`, `QuickCumsumCuda`, `nms_gpu`) run unchanged around it. The voxelizer and the rotated IoU
are bevport's NumPy replicas of the kernels (`geometry.voxelize`, `runtime.nms`), the BEV pool is a PyTorch
segment sum; no compiled code is involved. Every other compiled module of the trees (spconv, point ops, RoI-aware
pooling, ...) is served as an *absent op*: importing it works, calling it raises an error naming it.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import torch

from bevport.geometry.voxelize import grid_size, voxelize
from bevport.runtime.nms import rotated_iou_bev, rotated_overlap_bev


# ------------------------------------------------------------------------------------ mmdet3d.ops.voxel.voxel_layer

def hard_voxelize(points: torch.Tensor, voxels: torch.Tensor, coors: torch.Tensor,
                  num_points_per_voxel: torch.Tensor, voxel_size: Sequence[float], coors_range: Sequence[float],
                  max_points: int, max_voxels: int, NDim: int = 3, deterministic: bool = True) -> int:  # noqa: N803
    """The deterministic hard voxelizer: voxels numbered by their first point in file order, the first
    `max_points` points of each kept, voxels beyond `max_voxels` dropped; coors as (x, y, z) cells (MIT's kernel
    does not reverse them). Fills the three output tensors and returns the voxel count."""
    v = voxelize(points.detach().cpu().float().numpy(), coors_range, voxel_size, int(max_points), int(max_voxels))
    m = v.num_voxels
    voxels[:m] = torch.from_numpy(v.features).to(voxels.dtype)
    coors[:m] = torch.from_numpy(v.coords).to(coors.dtype)
    num_points_per_voxel[:m] = torch.from_numpy(v.counts).to(num_points_per_voxel.dtype)
    return m


def dynamic_voxelize(points: torch.Tensor, coors: torch.Tensor, voxel_size: Sequence[float],
                     coors_range: Sequence[float], NDim: int = 3) -> None:  # noqa: N803
    """Each point's (x, y, z) cell, or -1 in all three where the point is outside the grid; fills `coors`."""
    lo = torch.tensor(coors_range[:3], dtype=torch.float32)
    size = torch.tensor(voxel_size, dtype=torch.float32)
    grid = torch.from_numpy(grid_size(coors_range, voxel_size))
    cell = torch.floor((points[:, :3].detach().cpu().float() - lo) / size)
    inside = ((cell >= 0) & (cell < grid)).all(dim=1, keepdim=True)
    coors[:] = torch.where(inside, cell, torch.full_like(cell, -1)).to(coors.dtype)


# ------------------------------------------------------------------------------------ mmdet3d.ops.bev_pool.bev_pool_ext

def bev_pool_forward(x: torch.Tensor, geom_feats: torch.Tensor, interval_lengths: torch.Tensor,
                     interval_starts: torch.Tensor, b: int, d: int, h: int, w: int) -> torch.Tensor:
    """[B, D, H, W, C]: each interval of consecutive rows of x (sorted by cell) summed into the cell of its first
    row, geom_feats rows being (x, y, z, batch) cells; cells without an interval stay zero (the kernel's layout)."""
    lengths = interval_lengths.long()
    starts = interval_starts.long()
    interval = torch.repeat_interleave(torch.arange(len(starts)), lengths)
    first_of_interval = torch.cumsum(lengths, 0) - lengths
    rows = starts[interval] + torch.arange(len(interval)) - first_of_interval[interval]
    sums = torch.zeros(len(starts), x.shape[1], dtype=x.dtype).index_add_(0, interval, x[rows])
    out = torch.zeros(b, d, h, w, x.shape[1], dtype=x.dtype)
    cell = geom_feats[starts].long()
    out[cell[:, 3], cell[:, 2], cell[:, 0], cell[:, 1]] = sums
    return out


def bev_pool_backward(*args) -> torch.Tensor:
    raise NotImplementedError("bev_pool_backward is a training op; bevport's stand-in covers inference only")


# ------------------------------------------------------------------------------------ mmdet3d.ops.iou3d.iou3d_cuda

def _xyxyr(boxes: torch.Tensor) -> np.ndarray:
    return boxes.detach().cpu().float().numpy().reshape(-1, 5)


def _quiet(fn: Callable) -> Callable:
    """Untrained weights decode to boxes whose sizes overflow float32; the kernel computes on them silently (they
    lose every IoU comparison), and so do the stand-ins."""
    def call(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args, **kwargs)
    call.__name__, call.__doc__ = fn.__name__, fn.__doc__
    return call


@_quiet
def boxes_iou_bev_gpu(boxes_a: torch.Tensor, boxes_b: torch.Tensor, ans_iou: torch.Tensor) -> None:
    """Rotated BEV IoU of [x1, y1, x2, y2, yaw] boxes, the kernel's geometry (corners rotated by -yaw)."""
    ans_iou[:] = torch.from_numpy(rotated_iou_bev(_xyxyr(boxes_a), _xyxyr(boxes_b))).to(ans_iou.dtype)


@_quiet
def boxes_overlap_bev_gpu(boxes_a: torch.Tensor, boxes_b: torch.Tensor, ans_overlap: torch.Tensor) -> None:
    ans_overlap[:] = torch.from_numpy(rotated_overlap_bev(_xyxyr(boxes_a), _xyxyr(boxes_b))).to(ans_overlap.dtype)


def _greedy_keep(suppress: np.ndarray, keep: torch.Tensor) -> int:
    """Greedy pass over boxes already sorted best first: box j goes when a kept box i < j has suppress[i, j]."""
    alive = np.ones(len(suppress), dtype=bool)
    kept = []
    for i in range(len(suppress)):
        if alive[i]:
            kept.append(i)
            alive[i + 1:] &= ~suppress[i, i + 1:]
    keep[: len(kept)] = torch.tensor(kept, dtype=keep.dtype)
    return len(kept)


@_quiet
def nms_gpu(boxes: torch.Tensor, keep: torch.Tensor, thresh: float, device_id=None) -> int:
    """Rotated NMS over boxes sorted by score: a box goes when its IoU with a kept box is > thresh."""
    b = _xyxyr(boxes)
    return _greedy_keep(rotated_iou_bev(b, b) > np.float32(thresh), keep)


@_quiet
def nms_normal_gpu(boxes: torch.Tensor, keep: torch.Tensor, thresh: float, device_id=None) -> int:
    """Axis-aligned NMS (the yaw column ignored), IoU = overlap / max(union, 1e-8) in float32 as the kernel."""
    b = _xyxyr(boxes)
    x1, y1, x2, y2 = (b[:, k] for k in range(4))
    w = np.maximum(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0)
    h = np.maximum(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0)
    overlap = w * h
    area = (x2 - x1) * (y2 - y1)
    iou = overlap / np.maximum(area[:, None] + area[None] - overlap, np.float32(1e-8))
    return _greedy_keep(iou > np.float32(thresh), keep)


# ------------------------------------------------------------------------------------------------ the registry

STANDINS: Dict[str, Dict[str, Callable]] = {
    "mmdet3d.ops.voxel.voxel_layer": {"hard_voxelize": hard_voxelize, "dynamic_voxelize": dynamic_voxelize},
    "mmdet3d.ops.bev_pool.bev_pool_ext": {"bev_pool_forward": bev_pool_forward,
                                          "bev_pool_backward": bev_pool_backward},
    "mmdet3d.ops.iou3d.iou3d_cuda": {"nms_gpu": nms_gpu, "nms_normal_gpu": nms_normal_gpu,
                                     "boxes_iou_bev_gpu": boxes_iou_bev_gpu,
                                     "boxes_overlap_bev_gpu": boxes_overlap_bev_gpu},
}

# The trees' other compiled modules (setup.py of MIT BEVFusion at db75150 / 326653d): imported by mmdet3d.ops at
# import time, never called on the inference path of either recipe.
ABSENT = (
    "mmdet3d.ops.spconv.sparse_conv_ext", "mmdet3d.ops.roiaware_pool3d.roiaware_pool3d_ext",
    "mmdet3d.ops.ball_query.ball_query_ext", "mmdet3d.ops.knn.knn_ext", "mmdet3d.ops.paconv.assign_score_withk_ext",
    "mmdet3d.ops.group_points.group_points_ext", "mmdet3d.ops.interpolate.interpolate_ext",
    "mmdet3d.ops.furthest_point_sample.furthest_point_sample_ext", "mmdet3d.ops.gather_points.gather_points_ext",
    "mmdet3d.ops.feature_decorator.feature_decorator_ext",
)

# CUDA-only packages a tree imports without calling them on the inference path: MIT BEVFusion's radar encoder
# (326653d) imports flash_attn's FlashMHA at module level. Served, with their submodules, as absent ops.
ABSENT_PACKAGES = ("flash_attn",)
