from __future__ import annotations

import numpy as np

from bevport.geometry.lss import PoolTableCache, bev_pool, geometry, pool_table

IMG_AUG = np.diag([0.8, 0.8, 1, 1]).astype(np.float32)   # 1080x1920 -> 864x1536, no crop


def roadside_camera(height=6.0, pitch_deg=12.0):
    """A camera `height` m above the LiDAR origin looking along +x, pitched down; returns K, camera->lidar, denorm."""
    k = np.eye(4, dtype=np.float32)
    k[0, 0] = k[1, 1] = 2180.0
    k[0, 2], k[1, 2] = 960.0, 540.0
    p = np.deg2rad(pitch_deg)
    # camera axes in LiDAR coordinates: x_cam = -y, y_cam = down-ish, z_cam = forward-ish
    z_cam = np.array([np.cos(p), 0, -np.sin(p)])
    x_cam = np.array([0, -1.0, 0])
    y_cam = np.cross(z_cam, x_cam)
    c2l = np.eye(4, dtype=np.float32)
    c2l[:3, :3] = np.stack([x_cam, y_cam, z_cam], 1)
    c2l[:3, 3] = [0, 0, height]
    l2c = np.linalg.inv(c2l)
    pts = (l2c @ np.array([[0, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 1]], dtype=np.float64).T).T[:, :3]
    normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
    plane = np.r_[normal, -normal @ pts[0]]
    return k, c2l, -plane.astype(np.float32)


def test_frustum_points_lie_on_height_planes(recipe):
    k, c2l, denorm = roadside_camera()
    ida = np.diag([0.8, 0.8, 1, 1]).astype(np.float32)
    g = geometry(recipe, k, c2l, ida, np.eye(4, dtype=np.float32), denorm)
    assert g.shape == (90, 54, 96, 3)
    heights = -2 + 2 * (np.arange(90) / 90) ** 1.5
    in_front = np.isfinite(g).all(-1) & (g[..., 0] > 0) & (g[..., 0] < 200)
    err = np.abs(g[..., 2] - heights[:, None, None])[in_front]
    assert err.max() < 2e-3
    # the ray through the image centre column hits x > 0 straight ahead (y ~ 0)
    assert abs(g[0, 40, 47, 1]) < 1.0 and g[0, 40, 47, 0] > 5


def test_pooling_equals_bruteforce_sum_and_truncates(recipe):
    rng = np.random.default_rng(0)
    k, c2l, denorm = roadside_camera()
    ida = np.diag([0.8, 0.8, 1, 1]).astype(np.float32)
    g = geometry(recipe, k, c2l, ida, np.eye(4, dtype=np.float32), denorm)
    # push a few points just below the lower x / y bounds: truncation keeps them in cell 0, floor would drop them
    g[0, 0, :3] = [[-0.5, 0.1, -1.0], [3.0, -51.9, -1.0], [-0.79, -51.3, 0.0]]
    table = pool_table(recipe, g)
    depth = rng.uniform(size=(90, 54, 96)).astype(np.float32)
    feat = rng.normal(size=(54, 96, 8)).astype(np.float32)
    out = bev_pool(table, depth, feat)
    ref = np.zeros((8, 128, 128), np.float64)
    for d, h, w in np.ndindex(90, 54, 96):
        x, y, z = (g[d, h, w] - np.array([0, -51.2, -5])) / np.array([0.8, 0.8, 8])
        ix, iy, iz = int(x), int(y), int(z)  # Python int() truncates toward zero
        if 0 <= ix < 128 and 0 <= iy < 128 and iz == 0:
            ref[:, ix, iy] += depth[d, h, w] * feat[h, w]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
    assert out[:, 0, 64].any() and out[:, 3, 0].any() and out[:, 0, 0].any()


def dense_pool(g, depth, feat):
    """np.add.at over every frustum point inside the grid, in float64."""
    idx = ((g - np.array([0, -51.2, -5], np.float32)) / np.array([0.8, 0.8, 8], np.float32)).astype(np.int64)
    kept = np.all((idx >= 0) & (idx < [128, 128, 1]), axis=-1)
    d, h, w = np.nonzero(kept)
    ref = np.zeros((128, 128, feat.shape[-1]), np.float64)
    np.add.at(ref, (idx[kept][:, 0], idx[kept][:, 1]), depth[d, h, w, None].astype(np.float64) * feat[h, w])
    return ref.transpose(2, 0, 1), kept


def test_fast_pool_equals_dense_sum(recipe):
    rng = np.random.default_rng(1)
    k, c2l, denorm = roadside_camera(height=7.2, pitch_deg=14.0)
    g = geometry(recipe, k, c2l, IMG_AUG, np.eye(4, dtype=np.float32), denorm)
    table = pool_table(recipe, g)
    logits = rng.normal(size=(90, 54, 96)).astype(np.float32)
    depth = np.exp(logits) / np.exp(logits).sum(0)
    feat = rng.normal(size=(54, 96, 80)).astype(np.float32)
    out = bev_pool(table, depth, feat)
    ref, kept = dense_pool(g, depth, feat)
    assert out.dtype == np.float32 and out.shape == (80, 128, 128) and out.flags.c_contiguous
    assert table.num_points == kept.sum() and table.num_cells < table.num_pairs < table.num_points
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5
    hit = np.zeros((128, 128), bool)
    idx = ((g[kept] - np.array([0, -51.2, -5], np.float32)) / np.array([0.8, 0.8, 8], np.float32)).astype(np.int64)
    hit[idx[:, 0], idx[:, 1]] = True
    assert not out[:, ~hit].any() and (~hit).any()
    assert table.num_cells == hit.sum()


def test_pool_table_without_kept_points(recipe):
    k, c2l, denorm = roadside_camera()
    g = np.full((90, 54, 96, 3), -100.0, np.float32)
    table = pool_table(recipe, g)
    assert table.num_points == table.num_pairs == table.num_cells == 0
    out = bev_pool(table, np.ones((90, 54, 96), np.float32), np.ones((54, 96, 80), np.float32))
    assert out.shape == (80, 128, 128) and not out.any()


def test_pool_table_cache_builds_once_per_calibration(recipe):
    cache = PoolTableCache(recipe, max_size=2)
    k, c2l, denorm = roadside_camera()
    eye = np.eye(4, dtype=np.float32)
    first = cache.get(k, c2l, IMG_AUG, eye, denorm)
    assert cache.get(k.astype(np.float64), c2l.copy(), IMG_AUG.copy(), eye.copy(), list(denorm)) is first
    assert cache.builds == 1
    k2, c2l2, denorm2 = roadside_camera(height=7.0)
    second = cache.get(k2, c2l2, IMG_AUG, eye, denorm2)
    assert second is not first and cache.builds == 2
    assert second.num_points != first.num_points
    assert cache.get(k, c2l, IMG_AUG, eye, denorm) is first
    cache.get(k, c2l, IMG_AUG, np.diag([1, -1, 1, 1]).astype(np.float32), denorm)   # evicts the least recent: second
    assert len(cache) == 2 and cache.get(k, c2l, IMG_AUG, eye, denorm) is first and cache.builds == 3
    assert cache.get(k2, c2l2, IMG_AUG, eye, denorm2) is not second and cache.builds == 4
