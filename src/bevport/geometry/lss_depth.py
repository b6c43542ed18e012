"""MIT BEVFusion's LSS view transform on the host: geometry and the rig's pooling tables, in NumPy float32.

Frustum point (n, d, h, w) of camera n sits at depth bin d along the ray of feature pixel (h, w). Upstream lifts
depth[n, d, h, w] * context[n, :, h, w] to that point and sums every point of a BEV cell (`bev_pool`). Which cell a
point falls in depends only on the camera rig (intrinsics, extrinsics, image augmentation), so the cells are computed
here once per rig, with upstream's float32 arithmetic in upstream's order: `((p - (bx - dx / 2)) / dx)` truncated
toward zero, points outside x, y or z dropped. Inside a graph an optimiser may rewrite `/ 0.4` as `* 2.5` and move
points across cell borders; on the host the division is the division.

`PoolTables` groups the points by (camera, feature column w, depth bin d, cell): the rows h of a group form a 0/1
mask. Pooling is then a gather of depth rows, a batched MatMul with the context column, a gather of each cell's
first group sum into the grid and one scatter-add of the cells' further sums: fixed shapes, no sort at run time,
every occupied cell kept, and padding lands in a spare row past the grid (never in a real cell).

The frustum itself is the checkpoint's `frustum` tensor, not recomputed: upstream computes it with torch.linspace,
whose float32 values depend on the CPU's vector width (AVX2 and AVX-512 round a few entries differently), and
loading the checkpoint replaces it with the training machine's values. Export ships that tensor with the graphs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from bevport.errors import DatasetError
from bevport.geometry.lss import grid_params

F32 = np.float32


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """matrix [3,3] @ points [..., 3] in float32, each row's three products summed left to right."""
    m = matrix.astype(F32)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([m[i, 0] * x + m[i, 1] * y + m[i, 2] * z for i in range(3)], -1).astype(F32)


def geometry(frustum_points: np.ndarray, camera2lidar: np.ndarray, intrinsics: np.ndarray, img_aug: np.ndarray,
             lidar_aug: np.ndarray) -> np.ndarray:
    """LiDAR-frame position [D, fH, fW, 3] float32 of one camera's frustum points, upstream's `get_geometry` step by
    step: undo the image augmentation, scale (u, v) by depth, camera -> LiDAR through K^-1, then the LiDAR
    augmentation (identity at test time)."""
    c2l, k, ida, bda = (np.asarray(m, F32) for m in (camera2lidar, intrinsics, img_aug, lidar_aug))
    points = frustum_points - ida[:3, 3]
    points = _apply(np.linalg.inv(ida[:3, :3]), points)
    points = np.concatenate([points[..., :2] * points[..., 2:3], points[..., 2:3]], -1)
    combine = (c2l[:3, :3] @ np.linalg.inv(k[:3, :3])).astype(F32)
    points = _apply(combine, points) + c2l[:3, 3]
    return (_apply(bda[:3, :3], points) + bda[:3, 3]).astype(F32)


def cells(geom: np.ndarray, xbound, ybound, zbound) -> Tuple[np.ndarray, np.ndarray]:
    """(flat cell x * ny + y of every point [same shape as geom[..., 0]] int64, inside-the-grid mask)."""
    dx, bx, nx = grid_params(xbound, ybound, zbound)
    index = np.trunc((geom - (bx - dx / F32(2.0))) / dx)        # float32 throughout, truncation toward zero
    inside = np.all((index >= 0) & (index < nx), axis=-1)
    index = np.where(inside[..., None], index, 0).astype(np.int64)
    return index[..., 0] * nx[1] + index[..., 1], inside


@dataclass
class PoolTables:
    """The rig's pooling structure, in the layout the pool graph takes, at its static sizes.

    Column q = n * fW + w holds up to G groups; group g of column q covers depth row `rows[q, g]` (index into the
    depth map laid out [N * D * fW, fH]) and the feature rows h with mask[q, g, h] = 1. Of the group sums, flat
    [N*fW*G, C], each BEV cell's first is gathered (`first[cell]`: a flat slot q * G + g; cells without points,
    and the spare row nx * ny, read an empty slot, whose sum is exactly 0) and the others are added on top:
    `order[r]` read and added into cell `cells[r]`, padding entries adding an empty slot into the spare row. So
    most sums are moved by a parallel gather, and the scatter-add only takes cells' second and later groups."""
    rows: np.ndarray       # [N*fW, G] int32
    mask: np.ndarray       # [N*fW, G, fH] float32, 0/1
    first: np.ndarray      # [nx*ny + 1] int32: flat group slot of each cell's first group, or an empty slot
    order: np.ndarray      # [R] int32: flat group slot of every further group, then empty slots
    cells: np.ndarray      # [R] int32: flat BEV cell x * ny + y of `order`'s groups, or nx * ny
    grid: Tuple[int, int]  # (nx, ny)
    points: int            # frustum points inside the grid
    occupied: int          # BEV cells with at least one point
    groups: int            # real groups
    further: int           # real entries of `order` (groups after their cell's first)
    width_needed: int      # the most groups any column has

    def inputs(self) -> Tuple[np.ndarray, ...]:
        """The tables in the pool graph's input order (after context and depth)."""
        return self.rows, self.mask, self.first, self.order, self.cells


def pool_tables(cell: np.ndarray, inside: np.ndarray, grid: Sequence[int], width: Optional[int] = None,
                scatter_rows: Optional[int] = None) -> PoolTables:
    """Tables for points of shape [N, D, fH, fW] (their flat `cell` and `inside` mask), `width` groups per column
    and `scatter_rows` further group sums (default: as many as this rig needs; a rig that needs more than given is
    a DatasetError naming the setting)."""
    n_cams, depth_bins, fh, fw = inside.shape
    n, d, h, w = np.nonzero(inside)
    column = n * fw + w
    spare = grid[0] * grid[1]
    key = (column * depth_bins + d) * spare + cell[n, d, h, w]
    unique, group_of_point = np.unique(key, return_inverse=True)
    group_column = unique // (depth_bins * spare)
    starts = np.searchsorted(group_column, np.arange(n_cams * fw))
    slot = np.arange(unique.size) - starts[group_column]              # group's place within its column
    needed = int(slot.max()) + 1 if unique.size else 1
    width = needed if width is None else int(width)
    if needed > width:
        raise DatasetError(f"the camera rig puts up to {needed} groups of frustum points in one image column; the "
                           f"pool part takes export.pool_groups = {width}",
                           "export with a larger export.pool_groups in the recipe")
    counts = np.bincount(group_column, minlength=n_cams * fw)
    if counts.min() >= width:                                         # no empty slot to read zeros from
        raise DatasetError(f"every image column of the camera rig fills all export.pool_groups = {width} slots; the "
                           "pool part needs one empty slot", "export with a larger export.pool_groups in the recipe")
    empty = int(np.argmin(counts)) * width + int(counts.min())
    slots = (group_column * width + slot).astype(np.int32)
    group_cell = (unique % spare).astype(np.int32)
    by_cell = np.argsort(group_cell, kind="stable")                   # each cell's groups together, in key order
    is_first = np.r_[True, group_cell[by_cell][1:] != group_cell[by_cell][:-1]] if unique.size else np.zeros(0, bool)
    further = by_cell[~is_first]
    scatter_rows = further.size if scatter_rows is None else int(scatter_rows)
    if further.size > scatter_rows:
        raise DatasetError(f"the camera rig has {further.size} groups of frustum points beyond each BEV cell's first; "
                           f"the pool part takes export.pool_scatter_rows = {scatter_rows}",
                           "export with a larger export.pool_scatter_rows in the recipe")
    rows = np.zeros((n_cams * fw, width), np.int32)
    mask = np.zeros((n_cams * fw, width, fh), F32)
    group_depth = (unique // spare) % depth_bins
    cam, col_w = group_column // fw, group_column % fw
    rows[group_column, slot] = (cam * depth_bins + group_depth) * fw + col_w
    mask[group_column[group_of_point], slot[group_of_point], h] = 1.0
    first = np.full(spare + 1, empty, np.int32)
    first[group_cell[by_cell[is_first]]] = slots[by_cell[is_first]]
    order = np.full(scatter_rows, empty, np.int32)
    cells_out = np.full(scatter_rows, spare, np.int32)
    order[:further.size] = slots[further]
    cells_out[:further.size] = group_cell[further]
    occupied = int(np.unique(cell[inside]).size)
    return PoolTables(rows, mask, first, order, cells_out, (int(grid[0]), int(grid[1])), int(n.size), occupied,
                      int(unique.size), int(further.size), needed)


def pool(tables: PoolTables, depth: np.ndarray, context: np.ndarray) -> np.ndarray:
    """BEV [1, C, nx, ny]: what the pool graph computes, in NumPy (depth [N,D,fH,fW], context [N,C,fH,fW])."""
    n_cams, d, fh, fw = depth.shape
    c = context.shape[1]
    depth_rows = depth.transpose(0, 1, 3, 2).reshape(n_cams * d * fw, fh)
    weights = depth_rows[tables.rows] * tables.mask                               # [N*fW, G, fH]
    columns = context.transpose(0, 3, 2, 1).reshape(n_cams * fw, fh, c)             # [N*fW, fH, C]
    sums = np.matmul(weights, columns).reshape(-1, c)
    bev = sums[tables.first]                                                       # [nx*ny + 1, C]
    np.add.at(bev, tables.cells, sums[tables.order])
    nx, ny = tables.grid
    return bev[:-1].reshape(nx, ny, c).transpose(2, 0, 1)[None].astype(F32)
