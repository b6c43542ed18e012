"""The LSS-V2X view transform's geometry and BEV sum pooling, in NumPy, following the training code's float32 math.

Frustum point (d, h, w) is where the ray through feature pixel (h, w) meets the LiDAR-frame plane
z = dbound[0] + (dbound[1] - dbound[0]) * (d / D) ** alpha ("DID" height bins). Its BEV cell is found with
truncation toward zero, as upstream's `.long()` does, not floor. Pooling sums depth[d,h,w] * feat[h,w,c] over every
frustum point of a cell; the cell lists depend only on calibration, so they are computed once per calibration
(`PoolTable`) and pooling is a segment sum over precomputed indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

F32 = np.float32


def grid_params(xbound: Sequence[float], ybound: Sequence[float], zbound: Sequence[float]):
    """(dx, bx, nx) of the BEV grid exactly as upstream computes them: float32 cell size and centre of cell 0,
    int64 cell counts by truncation. The vtransform stores these as checkpoint parameters."""
    rows = (xbound, ybound, zbound)
    dx = np.array([r[2] for r in rows], F32)
    bx = np.array([r[0] + r[2] / 2.0 for r in rows], F32)
    nx = np.array([int((r[1] - r[0]) / r[2]) for r in rows], np.int64)
    return dx, bx, nx


def _bounds(recipe):
    vt = recipe.model.camera.vtransform
    return grid_params(vt.xbound, vt.ybound, vt.zbound)


def frustum(recipe):
    """(pixel rays [fH,fW,4], bin fractions [D]) on the feature grid: u = linspace(0, W-1, fW), v likewise."""
    h, w = recipe.input.image_size
    fh, fw = recipe.model.camera.vtransform.feature_size
    d = recipe.num_height_bins
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
    """Frustum points that land in the BEV grid, sorted by cell: pooling = segment sums over `order`."""
    order: np.ndarray      # flat (d, h, w) index of each kept point, sorted by cell
    starts: np.ndarray     # start of each non-empty cell's segment in `order`
    cells: np.ndarray      # flat BEV index ix * ny + iy of each segment
    shape: tuple           # (D, fH, fW) of the frustum
    grid: tuple            # (nx, ny)

    @property
    def num_points(self) -> int:
        return int(self.order.size)


def pool_table(recipe, geom: np.ndarray) -> PoolTable:
    dx, bx, nx = _bounds(recipe)
    idx = ((geom - (bx - dx / F32(2.0))) / dx).astype(np.int64)  # truncation toward zero, as torch .long()
    kept = np.all((idx >= 0) & (idx < nx), axis=-1).reshape(-1)
    flat = idx.reshape(-1, 3)[kept]
    cell = flat[:, 0] * nx[1] + flat[:, 1]  # z has a single bin
    points = np.flatnonzero(kept)
    sort = np.argsort(cell, kind="stable")
    cell, points = cell[sort], points[sort]
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    return PoolTable(points, starts, cell[starts], geom.shape[:3], (int(nx[0]), int(nx[1])))


def bev_pool(table: PoolTable, depth: np.ndarray, feat_hwc: np.ndarray) -> np.ndarray:
    """depth [D,fH,fW], features [fH,fW,C] -> BEV [C, nx, ny] (sum over each cell's frustum points)."""
    d, fh, fw = table.shape
    c = feat_hwc.shape[-1]
    hw = table.order % (fh * fw)
    weighted = depth.reshape(-1)[table.order, None] * feat_hwc.reshape(-1, c)[hw]
    sums = np.add.reduceat(weighted, table.starts, axis=0) if table.num_points else np.zeros((0, c), F32)
    out = np.zeros((table.grid[0] * table.grid[1], c), F32)
    out[table.cells] = sums
    return out.T.reshape(c, table.grid[0], table.grid[1])
