"""Hard voxelization and scatter against plain loops that follow mmdet3d's deterministic kernel step by step."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bevport.geometry.voxelize import PaddedVoxels, scatter, voxelize, voxelize_for_deploy, voxelize_padded

RANGE = [0.0, -51.2, -5.0, 102.4, 51.2, 3.0]
VOXEL = [0.8, 0.8, 8.0]


def pad_to(voxels, num_slots):
    """The first `num_slots` voxels in the PFE layout, copied from `voxelize`'s output; rows beyond are zero."""
    m = min(voxels.num_voxels, num_slots)
    features = np.zeros((num_slots,) + voxels.features.shape[1:], np.float32)
    features[:m] = voxels.features[:m]
    num_voxels = np.zeros(num_slots, np.int32)
    num_voxels[:m] = voxels.counts[:m]
    coors = np.zeros((num_slots, 4), np.int32)
    coors[:m, 1:] = voxels.coords[:m]
    return PaddedVoxels(features, num_voxels, coors, voxels.num_voxels - m)


def voxelize_for_recipe(recipe, points, max_points=None, max_voxels=None):
    """`voxelize` of the recipe's first `input.point_dims` point columns; limits default to the test-time config
    (max_num_points, max_voxels[1])."""
    vox = recipe.model.lidar.voxelize
    return voxelize(np.asarray(points, np.float32)[:, : recipe.input.point_dims], vox.point_cloud_range,
                    vox.voxel_size, vox.max_num_points if max_points is None else max_points,
                    vox.max_voxels[1] if max_voxels is None else max_voxels)


def loop_voxelize(points, point_cloud_range, voxel_size, max_points, max_voxels):
    """One point at a time in file order, float32 arithmetic, as the C++ kernel does."""
    lo = [np.float32(v) for v in point_cloud_range[:3]]
    size = [np.float32(v) for v in voxel_size]
    grid = [int(round((np.float32(point_cloud_range[j + 3]) - lo[j]) / size[j])) for j in range(3)]
    voxel_of_cell, feats, coords, counts = {}, [], [], []
    in_range, dropped = 0, set()
    for p in points:
        cell = tuple(math.floor((p[j] - lo[j]) / size[j]) for j in range(3))
        if any(c < 0 or c >= g for c, g in zip(cell, grid)):
            continue
        in_range += 1
        if cell not in voxel_of_cell:
            if len(feats) >= max_voxels:
                dropped.add(cell)
                continue
            voxel_of_cell[cell] = len(feats)
            feats.append(np.zeros((max_points, points.shape[1]), np.float32))
            coords.append(cell)
            counts.append(0)
        v = voxel_of_cell[cell]
        if counts[v] < max_points:
            feats[v][counts[v]] = p
            counts[v] += 1
    return (np.array(feats, np.float32).reshape(-1, max_points, points.shape[1]),
            np.array(coords, np.int32).reshape(-1, 3), np.array(counts, np.int32), len(dropped), in_range)


def cloud(rng, n, crowded=0):
    """Points around and beyond the range, some exactly on cell borders and range bounds, `crowded` in one pillar."""
    pts = np.c_[rng.uniform(-5, 110, n), rng.uniform(-56, 56, n), rng.uniform(-6, 4, n), rng.uniform(0, 1, n)]
    border = rng.choice(n, n // 5, replace=False)
    pts[border, 0] = rng.integers(-1, 130, border.size) * np.float32(0.8)
    pts[border, 1] = np.float32(-51.2) + rng.integers(-1, 130, border.size) * np.float32(0.8)
    pts[:4, :3] = [[0, -51.2, -5], [102.4, 0, 0], [50, 51.2, 0], [50, 0, 3]]
    pts[4:4 + crowded, :3] = [10.3, -40.1, 0.0] + rng.uniform(0, 0.4, (crowded, 3))
    return pts.astype(np.float32)


def assert_same(voxels, expected):
    feats, coords, counts, dropped, in_range = expected
    np.testing.assert_array_equal(voxels.features, feats)
    np.testing.assert_array_equal(voxels.coords, coords)
    np.testing.assert_array_equal(voxels.counts, counts)
    assert (voxels.num_dropped_voxels, voxels.num_points_in_range) == (dropped, in_range)
    assert voxels.features.dtype == np.float32 and voxels.coords.dtype == voxels.counts.dtype == np.int32


@pytest.mark.parametrize("seed, n, crowded, max_points, max_voxels", [
    (0, 3000, 0, 10, 160000),
    (1, 3000, 40, 10, 160000),     # one voxel overflows its slots
    (2, 5000, 25, 5, 300),         # voxels beyond max_voxels are dropped
    (3, 200, 150, 100, 7000),
])
def test_voxelize_matches_kernel_loop(seed, n, crowded, max_points, max_voxels):
    pts = cloud(np.random.default_rng(seed), n, crowded)
    expected = loop_voxelize(pts, RANGE, VOXEL, max_points, max_voxels)
    assert_same(voxelize(pts, RANGE, VOXEL, max_points, max_voxels), expected)


def test_voxelize_fine_grid_beyond_16_bit_keys():
    pts = cloud(np.random.default_rng(4), 4000, 30)
    voxel = [0.1, 0.1, 0.5]   # 1024 x 1024 x 16 cells
    assert_same(voxelize(pts, RANGE, voxel, 6, 1500), loop_voxelize(pts, RANGE, voxel, 6, 1500))


def test_border_points_floor_and_drop():
    pts = np.array([[0, -51.2, -5, 1], [102.4, 0, 0, 1], [0, 51.2, 0, 1], [0, 0, 3, 1],
                    [-1e-4, 0, 0, 1], [np.nan, 0, 0, 1], [0.8, 0.8, 0, 1]], np.float32)
    v = voxelize(pts, RANGE, VOXEL, 10, 100)
    assert v.num_points_in_range == 2
    np.testing.assert_array_equal(v.coords, [[0, 0, 0], [1, 65, 0]])


def test_empty_cloud():
    v = voxelize(np.zeros((0, 4), np.float32), RANGE, VOXEL, 10, 100)
    assert v.features.shape == (0, 10, 4) and v.coords.shape == (0, 3) and v.counts.shape == (0,)
    padded = pad_to(v, 7)
    assert not padded.features.any() and not padded.num_voxels.any() and not padded.coors.any()
    assert scatter(padded.features[:, 0], padded.coors, padded.num_voxels, (128, 128)).shape == (1, 4, 128, 128)


def test_orientation():
    v = voxelize(np.array([[10.0, -50.0, 0.0, 0.5]], np.float32), RANGE, VOXEL, 10, 100)
    np.testing.assert_array_equal(v.coords, [[12, 1, 0]])


def test_pad_to_zero_rows_and_reports_overflow():
    pts = cloud(np.random.default_rng(5), 3000, 20)
    v = voxelize(pts, RANGE, VOXEL, 10, 160000)
    padded = pad_to(v, v.num_voxels + 5)
    assert padded.num_dropped == 0
    assert padded.features.shape == (v.num_voxels + 5, 10, 4)
    assert padded.num_voxels.dtype == padded.coors.dtype == np.int32
    np.testing.assert_array_equal(padded.coors[: v.num_voxels, 1:], v.coords)
    assert not padded.coors[:, 0].any()
    assert not padded.features[v.num_voxels:].any() and not padded.num_voxels[v.num_voxels:].any()
    assert not padded.coors[v.num_voxels:].any()
    cut = pad_to(v, 100)
    assert cut.num_dropped == v.num_voxels - 100
    np.testing.assert_array_equal(cut.features, v.features[:100])


@pytest.mark.parametrize("num_slots", [100, 5000])
def test_voxelize_padded_equals_voxelize_then_pad(num_slots):
    pts = cloud(np.random.default_rng(8), 3000, 30)
    direct = voxelize_padded(pts, RANGE, VOXEL, 20, num_slots)
    v = voxelize(pts, RANGE, VOXEL, 20, 160000)
    padded = pad_to(v, num_slots)
    for a, b in zip(direct, padded):
        np.testing.assert_array_equal(a, b)
    assert direct.num_dropped == max(v.num_voxels - num_slots, 0)


def test_recipe_and_deploy_shapes(recipe):
    pts = np.c_[cloud(np.random.default_rng(6), 2000, 120), np.ones(2000, np.float32)]   # 5 columns, 4 used
    v = voxelize_for_recipe(recipe, pts)
    assert v.features.shape[1:] == (10, 4)
    deploy = voxelize_for_deploy(recipe, pts)
    for a, b in zip(deploy, pad_to(voxelize_for_recipe(recipe, pts, 100, 7000), 7000)):
        np.testing.assert_array_equal(a, b)
    assert deploy.features.shape == (7000, 100, 4) and deploy.num_voxels.shape == (7000,)
    assert deploy.coors.shape == (7000, 4) and deploy.num_dropped == 0
    assert deploy.num_voxels.max() > 10 and deploy.num_voxels.sum() == v.num_points_in_range
    few = voxelize_for_recipe(recipe, pts, max_points=100, max_voxels=50)
    assert few.num_dropped_voxels == few.total_voxels - 50 > 0


def test_scatter_matches_loop():
    rng = np.random.default_rng(7)
    v = voxelize(cloud(rng, 3000), RANGE, VOXEL, 10, 160000)
    padded = pad_to(v, v.num_voxels + 30)
    feats = rng.normal(size=(padded.features.shape[0], 64)).astype(np.float32)
    expected = np.zeros((1, 64, 128, 128), np.float32)
    for row in range(v.num_voxels):
        _, ix, iy, _ = padded.coors[row]
        expected[0, :, ix, iy] = feats[row]
    np.testing.assert_array_equal(scatter(feats, padded.coors, padded.num_voxels, (128, 128)), expected)
    np.testing.assert_array_equal(scatter(feats, v.coords, v.num_voxels, (128, 128)), expected)
