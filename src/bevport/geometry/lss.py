"""The LSS-V2X view transform's geometry and BEV sum pooling, in NumPy, following the training code's float32 math.

Frustum point (d, h, w) is where the ray through feature pixel (h, w) meets the LiDAR-frame plane
z = dbound[0] + (dbound[1] - dbound[0]) * (d / D) ** alpha ("DID" height bins). Its BEV cell is found with
truncation toward zero, as upstream's `.long()` does, not floor. Pooling sums depth[d,h,w] * feat[h,w,c] over every
frustum point of a cell; the cell lists depend only on calibration, so they are computed once per calibration
(`PoolTable`, cached per calibration by `PoolTableCache`) and pooling is two sparse products over them.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.sparse import csr_matrix

F32 = np.float32


def grid_params(xbound: Sequence[float], ybound: Sequence[float], zbound: Sequence[float]):
    """(dx, bx, nx) of the BEV grid exactly as upstream computes them: float32 cell size and centre of cell 0,
    int64 cell counts by truncation. The vtransform stores these as checkpoint parameters."""
    rows = (xbound, ybound, zbound)
    dx = np.array([r[2] for r in rows], F32)
    bx = np.array([r[0] + r[2] / 2.0 for r in rows], F32)
    nx = np.array([int((r[1] - r[0]) / r[2]) for r in rows], np.int64)
    return dx, bx, nx


# What `dbound` means depends on the view transform (both read it from the same config key upstream):
#   LSSV2XTransform (V2XFusion, BEVHeight's DID bins): [height_min, height_max, num_bins] in the LiDAR frame;
#   LSSTransform (MIT BEVFusion): [depth_start, depth_stop, depth_step] in metres along the camera ray,
#   bins = torch.arange(start, stop, step).
VIEW_TRANSFORMS = ("LSSV2XTransform", "LSSTransform")


def depth_bins(vtransform) -> int:
    """Number of depth (or height) bins of a view transform's `dbound`, by the transform's own reading of it."""
    start, stop, third = (float(v) for v in vtransform.dbound)
    if vtransform.type == "LSSV2XTransform":
        return int(third)
    if vtransform.type == "LSSTransform":
        return len(np.arange(start, stop, third, dtype=np.float32))
    raise ValueError(f"unknown view transform {vtransform.type!r}; known: {', '.join(VIEW_TRANSFORMS)}")


def _bounds(recipe):
    vt = recipe.model.camera.vtransform
    return grid_params(vt.xbound, vt.ybound, vt.zbound)


def frustum(recipe):
    """(pixel rays [fH,fW,4], bin fractions [D]) on the feature grid: u = linspace(0, W-1, fW), v likewise."""
    h, w = recipe.input.image_size
    fh, fw = recipe.model.camera.vtransform.feature_size
    d = depth_bins(recipe.model.camera.vtransform)
    xs, ys = np.meshgrid(np.linspace(0, w - 1, fw), np.linspace(0, h - 1, fh))
    rays = np.stack([xs, ys, np.ones_like(xs), np.ones_like(xs)], -1).astype(F32)
    fractions = (np.power(np.arange(d) / d, recipe.model.camera.vtransform.did_alpha)).astype(F32)
    return rays, fractions


def geometry(recipe, intrinsics: np.ndarray, camera2lidar: np.ndarray, img_aug: np.ndarray,
             lidar_aug: np.ndarray, denorm: Sequence[float]) -> np.ndarray:
    """LiDAR-frame position of every frustum point, [D, fH, fW, 3] float32 (one camera)."""
    dbound = recipe.model.camera.vtransform.dbound
    k, c2l, ida, bda = (np.asarray(m, F32) for m in (intrinsics, camera2lidar, img_aug, lidar_aug))
    rays, fractions = frustum(recipe)
    origin = (np.linalg.inv(c2l) @ np.array([0, 0, 0, 1], F32))[:3]       # LiDAR origin in the camera frame
    normal = np.asarray(denorm, F32)[:3]
    normal = normal / np.linalg.norm(normal)                               # LiDAR +z in the camera frame
    p0, p1 = origin + F32(dbound[0]) * normal, origin + F32(dbound[1]) * normal
    inv_ida = np.linalg.inv(ida)
    dirs = (rays @ (np.linalg.inv(k) @ inv_ida).T)[..., :3]
    dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    along = dirs @ normal
    t0, t1 = (normal @ p0) / along, (normal @ p1) / along                  # distances to the two planes
    d = len(fractions)
    points = np.broadcast_to(rays, (d,) + rays.shape).copy()
    points[..., 2] = (t0[None] - fractions[:, None, None] * (t0 - t1)[None]) * dirs[None, ..., 2]
    points = points @ inv_ida.T
    points[..., :2] *= points[..., 2:3]
    matrix = bda @ (c2l @ np.linalg.inv(k))
    return (points @ matrix.T)[..., :3].astype(F32)


@dataclass
class PoolTable:
    """Which frustum points pool into which BEV cell, as two sparse matrices.

    Many frustum points of one pixel (neighbouring height bins) share a BEV cell, so pooling factors into
    (1) summing each (cell, pixel) pair's depth weights and (2) a sparse [cells x pixels] @ [pixels x C] product."""
    gather: csr_matrix     # [pairs, D*fH*fW] of ones: row q sums the depth weights of pair q's frustum points
    pixels: np.ndarray     # [pairs] int32 feature pixel h * fW + w of each pair, pairs sorted by cell
    indptr: np.ndarray     # [nx*ny + 1] int32: the pairs of flat BEV cell ix * ny + iy are indptr[i]:indptr[i+1]
    shape: tuple           # (D, fH, fW) of the frustum
    grid: tuple            # (nx, ny)

    @property
    def num_points(self) -> int:
        """Frustum points inside the BEV grid."""
        return int(self.gather.nnz)

    @property
    def num_pairs(self) -> int:
        return int(self.pixels.size)

    @property
    def num_cells(self) -> int:
        """BEV cells hit by at least one frustum point."""
        return int(np.count_nonzero(np.diff(self.indptr)))


def _kept_cells(recipe, geom: np.ndarray):
    """(flat frustum index, flat BEV cell) of every frustum point inside the grid, in frustum order."""
    dx, bx, nx = _bounds(recipe)
    idx = ((geom - (bx - dx / F32(2.0))) / dx).astype(np.int64)  # truncation toward zero, as torch .long()
    kept = np.all((idx >= 0) & (idx < nx), axis=-1).reshape(-1)
    flat = idx.reshape(-1, 3)[kept]
    return np.flatnonzero(kept), flat[:, 0] * nx[1] + flat[:, 1]  # z has a single bin


def pool_table(recipe, geom: np.ndarray) -> PoolTable:
    """The pooling structure of frustum geometry [D, fH, fW, 3] (from `geometry`)."""
    d, fh, fw = geom.shape[:3]
    num_pixels = fh * fw
    _, _, nx = _bounds(recipe)
    points, cell = _kept_cells(recipe, geom)
    pair = cell * num_pixels + points % num_pixels
    by_pair = np.argsort(pair, kind="stable")
    pair = pair[by_pair]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]]) if pair.size else np.zeros(0, np.int64)
    pair_cell, pair_pixel = np.divmod(pair[starts], num_pixels)
    num_cells = int(nx[0] * nx[1])
    indptr = np.searchsorted(pair_cell, np.arange(num_cells + 1)).astype(np.int32)
    gather = csr_matrix((np.ones(points.size, F32), points[by_pair].astype(np.int32),
                         np.r_[starts, points.size].astype(np.int32)), shape=(starts.size, d * num_pixels))
    return PoolTable(gather, pair_pixel.astype(np.int32), indptr, (d, fh, fw), (int(nx[0]), int(nx[1])))


def bev_pool(table: PoolTable, depth: np.ndarray, feat_hwc: np.ndarray) -> np.ndarray:
    """depth [D,fH,fW], features [fH,fW,C] -> BEV [C, nx, ny] float32 (sum over each cell's frustum points)."""
    _, fh, fw = table.shape
    feat = np.asarray(feat_hwc, F32).reshape(fh * fw, -1)
    weights = table.gather @ np.asarray(depth, F32).reshape(-1)
    cells = csr_matrix((weights, table.pixels, table.indptr), shape=(table.indptr.size - 1, fh * fw))
    return np.ascontiguousarray((cells @ feat).T).reshape(feat.shape[1], table.grid[0], table.grid[1])


def calibration_key(intrinsics, camera2lidar, img_aug, lidar_aug, denorm) -> tuple:
    """Hashable identity of one camera's calibration, at the float32 precision `geometry` computes in."""
    arrays = (np.ascontiguousarray(m, F32) for m in (intrinsics, camera2lidar, img_aug, lidar_aug, denorm))
    return tuple((a.shape, a.tobytes()) for a in arrays)


class PoolTableCache:
    """Pool tables by calibration, least recently used evicted first: a runtime builds each table once."""

    def __init__(self, recipe, max_size: int = 8):
        self.recipe = recipe
        self.max_size = max_size
        self.builds = 0
        self._tables = OrderedDict()  # calibration key -> PoolTable, oldest first
        self._lock = threading.Lock()

    def get(self, intrinsics, camera2lidar, img_aug, lidar_aug, denorm) -> PoolTable:
        key = calibration_key(intrinsics, camera2lidar, img_aug, lidar_aug, denorm)
        with self._lock:
            table = self._tables.get(key)
            if table is None:
                geom = geometry(self.recipe, intrinsics, camera2lidar, img_aug, lidar_aug, denorm)
                table = pool_table(self.recipe, geom)
                self.builds += 1
            self._tables[key] = table
            self._tables.move_to_end(key)
            while len(self._tables) > self.max_size:
                self._tables.popitem(last=False)
            return table

    def __len__(self) -> int:
        return len(self._tables)
