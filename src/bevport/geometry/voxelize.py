"""Hard voxelization (pillars) and the PointPillars scatter, in NumPy, matching mmdet3d's deterministic CPU kernel.

Points are visited in file order. A point's cell is floor((p - range_min) / voxel_size) per axis, computed in float32
like the kernel; points outside the grid are dropped. Voxels are numbered in the order of the first point that falls
into them, keep their first `max_points` points, and voxels numbered `max_voxels` or higher are dropped. The deploy
binary's SYCL voxelizer fills slots through atomics instead, so its order differs only in voxels holding more than
`max_points` points or frames with more than `max_voxels` voxels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

F32 = np.float32


@dataclass
class Voxels:
    """Output of `voxelize`; M voxels, P point slots, C point channels."""
    features: np.ndarray       # [M, P, C] float32, raw points, zero in unused slots
    coords: np.ndarray         # [M, 3] int32, (ix, iy, iz)
    counts: np.ndarray         # [M] int32, points kept per voxel (<= P)
    num_dropped_voxels: int    # non-empty voxels numbered >= max_voxels
    num_points_in_range: int   # points inside the grid, kept or not

    @property
    def num_voxels(self) -> int:
        return int(self.counts.size)

    @property
    def total_voxels(self) -> int:
        """Non-empty voxels before the `max_voxels` limit."""
        return self.num_voxels + self.num_dropped_voxels


class PaddedVoxels(NamedTuple):
    """The PFE graph's inputs at a static V, and how many voxels did not fit."""
    features: np.ndarray      # [V, P, C] float32
    num_voxels: np.ndarray    # [V] int32, 0 on padding rows
    coors: np.ndarray         # [V, 4] int32, (batch=0, ix, iy, iz), zero on padding rows
    num_dropped: int          # voxels beyond V


def grid_size(point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> np.ndarray:
    """Cells per axis, round((max - min) / voxel) in float32 as the kernel computes it; int64 [3]."""
    lo, hi = _range(point_cloud_range)
    return np.round((hi - lo) / np.asarray(voxel_size, F32)).astype(np.int64)


def _range(point_cloud_range: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    bounds = np.asarray(point_cloud_range, F32)
    return bounds[:3], bounds[3:6]


def _cells(xyz: np.ndarray, point_cloud_range, voxel_size, grid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(indices of points inside the grid, their cells [3, K] int64 as rows ix, iy, iz).
    Comparing the floats before the integer cast drops NaNs; axis-major layout keeps every pass contiguous."""
    lo, _ = _range(point_cloud_range)
    cell = np.floor((np.ascontiguousarray(xyz.T) - lo[:, None]) / np.asarray(voxel_size, F32)[:, None])
    inside = np.flatnonzero(np.all((cell >= 0) & (cell < grid[:, None]), axis=0))
    return inside, cell[:, inside].astype(np.int64)


def _flat_cell(ijk: np.ndarray, grid: np.ndarray) -> np.ndarray:
    flat = (ijk[0] * grid[1] + ijk[1]) * grid[2] + ijk[2]
    # a stable sort of keys that fit 16 bits is a radix sort in NumPy
    return flat.astype(np.uint16) if grid.prod() <= np.iinfo(np.uint16).max + 1 else flat


class _Assignment(NamedTuple):
    """Where each kept point goes: features.reshape(-1, C)[rows] = points[sources]."""
    rows: np.ndarray           # voxel * max_points + slot
    sources: np.ndarray        # index of the point
    coords: np.ndarray         # [M, 3] int32
    counts: np.ndarray         # [M] int32
    num_dropped_voxels: int
    num_points_in_range: int


def _as_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, F32)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [N, C>=3] (x, y, z, ...), got shape {points.shape}")
    return points


def _assign(points: np.ndarray, point_cloud_range, voxel_size, max_points: int, max_voxels: int) -> _Assignment:
    grid = grid_size(point_cloud_range, voxel_size)
    inside, ijk = _cells(points[:, :3], point_cloud_range, voxel_size, grid)
    key = _flat_cell(ijk, grid)
    by_cell = np.argsort(key, kind="stable")          # file order within each cell
    sorted_key = key[by_cell]
    new_cell = np.r_[True, sorted_key[1:] != sorted_key[:-1]] if key.size else np.zeros(0, bool)
    starts = np.flatnonzero(new_cell)
    group = np.cumsum(new_cell) - 1                   # cell group of each sorted point
    first_point = by_cell[starts]
    voxel_of_group = np.empty(starts.size, np.int64)
    voxel_of_group[np.argsort(first_point)] = np.arange(starts.size)   # numbered by first appearance
    voxel = voxel_of_group[group]
    slot = np.arange(key.size) - starts[group]
    keep = (slot < max_points) & (voxel < max_voxels)
    m = min(starts.size, max_voxels)
    kept_groups = voxel_of_group < max_voxels
    counts = np.zeros(m, np.int32)
    counts[voxel_of_group[kept_groups]] = np.minimum(np.diff(np.r_[starts, key.size])[kept_groups], max_points)
    coords = np.zeros((m, 3), np.int32)
    coords[voxel_of_group[kept_groups]] = ijk[:, first_point[kept_groups]].T
    return _Assignment(voxel[keep] * max_points + slot[keep], inside[by_cell[keep]], coords, counts,
                       int(starts.size - m), int(inside.size))


def _features(points: np.ndarray, assignment: _Assignment, num_rows: int, max_points: int) -> np.ndarray:
    features = np.zeros((num_rows, max_points, points.shape[1]), F32)
    features.reshape(-1, points.shape[1])[assignment.rows] = points[assignment.sources]
    return features


def _padded(features: np.ndarray, counts: np.ndarray, coords: np.ndarray, num_dropped: int) -> PaddedVoxels:
    num_voxels = np.zeros(features.shape[0], np.int32)
    num_voxels[: counts.size] = counts
    coors = np.zeros((features.shape[0], 4), np.int32)
    coors[: counts.size, 1:] = coords
    return PaddedVoxels(features, num_voxels, coors, num_dropped)


def voxelize(points: np.ndarray, point_cloud_range: Sequence[float], voxel_size: Sequence[float],
             max_points: int, max_voxels: int) -> Voxels:
    """points [N, C >= 3] (x, y, z, ...) -> the first `max_voxels` voxels of up to `max_points` points each."""
    points = _as_points(points)
    a = _assign(points, point_cloud_range, voxel_size, max_points, max_voxels)
    features = _features(points, a, a.counts.size, max_points)
    return Voxels(features, a.coords, a.counts, a.num_dropped_voxels, a.num_points_in_range)


def voxelize_padded(points: np.ndarray, point_cloud_range: Sequence[float], voxel_size: Sequence[float],
                    max_points: int, num_slots: int, max_voxels: Optional[int] = None) -> PaddedVoxels:
    """`voxelize(..., max_voxels)` laid out as rows for a PFE of `num_slots` rows, filled directly, without an
    intermediate copy. max_voxels defaults to num_slots (one PFE run, voxels beyond it dropped); a larger one gives a
    multiple of num_slots rows (one PFE run per block of num_slots rows). Rows beyond the voxel count are zero."""
    points = _as_points(points)
    max_voxels = num_slots if max_voxels is None else max(int(max_voxels), num_slots)
    a = _assign(points, point_cloud_range, voxel_size, max_points, max_voxels)
    rows = max(1, -(-a.counts.size // num_slots)) * num_slots
    return _padded(_features(points, a, rows, max_points), a.counts, a.coords, a.num_dropped_voxels)


def test_time_max_voxels(recipe) -> int:
    """The voxel limit of the checkpoint's test-time voxelizer (`max_voxels` is [train, test] or one number)."""
    limit = recipe.model.lidar.voxelize.max_voxels
    return int(limit[-1] if isinstance(limit, (list, tuple)) else limit)


def voxelize_for_deploy(recipe, points: np.ndarray, deploy_cap: bool = False) -> PaddedVoxels:
    """The static PFE's inputs from the recipe's first `input.point_dims` point columns, `export.deploy_max_points`
    slots per voxel. Every voxel training's test-time voxelizer keeps, in blocks of `export.static_voxels` rows (one
    PFE run each); with deploy_cap, only the first `export.static_voxels` voxels, as the deploy binary binds them.
    `num_dropped` counts the voxels left out."""
    vox = recipe.model.lidar.voxelize
    limit = recipe.export.static_voxels if deploy_cap else test_time_max_voxels(recipe)
    return voxelize_padded(np.asarray(points, F32)[:, : recipe.input.point_dims], vox.point_cloud_range,
                           vox.voxel_size, recipe.export.deploy_max_points, recipe.export.static_voxels, limit)


def scatter(pillar_features: np.ndarray, coors: np.ndarray, valid: Union[int, np.ndarray],
            grid: Sequence[int]) -> np.ndarray:
    """Pillar features [M, C] -> BEV canvas [1, C, nx, ny] float32, canvas[0, :, ix, iy] = feature.

    `coors` is [M, 3] (ix, iy, iz) or [M, 4] (batch, ix, iy, iz). `valid` is either the number of leading valid rows
    or per-row point counts (rows with 0 are padding and are not written)."""
    feats = np.asarray(pillar_features, F32)
    coors = np.asarray(coors)
    rows = np.arange(int(valid)) if np.ndim(valid) == 0 else np.flatnonzero(np.asarray(valid) > 0)
    nx, ny = int(grid[0]), int(grid[1])
    canvas = np.zeros((feats.shape[1], nx * ny), F32)
    canvas[:, coors[rows, -3] * ny + coors[rows, -2]] = feats[rows].T
    return canvas.reshape(1, feats.shape[1], nx, ny)
