"""Latency of the NumPy geometry path (pool-table build, BEV pooling, deploy voxelization), written to JSON.

    python benchmarks/pool.py [--out benchmarks/results/pool.json] [--onnx DIR] [--repeat 20]

The calibration is a DAIR-V2X-I-like roadside camera (1920x1080, 6 m up, pitched 12 degrees down); the point cloud
is a synthetic 60k-point roadside sweep (~6.5k pillars). With --onnx DIR holding camera.backbone.onnx, the camera graph's OpenVINO
CPU latency at f32 is measured as well, for comparison with the pooling it feeds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bevport.geometry.lss import bev_pool, geometry, pool_table
from bevport.geometry.voxelize import _assign, _features, scatter, voxelize_for_deploy
from bevport.recipe import load_recipe
from export import host  # benchmarks/export.py: the CPU and the ISA OpenVINO uses


def median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 3)


def roadside_calibration(height=6.0, pitch_deg=12.0):
    """(intrinsics, camera2lidar, img_aug, lidar_aug, denorm) of a pole camera looking along LiDAR +x."""
    k = np.eye(4, dtype=np.float32)
    k[0, 0] = k[1, 1] = 2180.0
    k[0, 2], k[1, 2] = 960.0, 540.0
    p = np.deg2rad(pitch_deg)
    forward, right = np.array([np.cos(p), 0, -np.sin(p)]), np.array([0, -1.0, 0])
    c2l = np.eye(4, dtype=np.float32)
    c2l[:3, :3] = np.stack([right, np.cross(forward, right), forward], 1)
    c2l[:3, 3] = [0, 0, height]
    normal_cam = np.linalg.inv(c2l)[:3, :3] @ np.array([0, 0, 1.0])   # LiDAR +z in the camera frame
    denorm = np.r_[normal_cam, -normal_cam @ np.linalg.inv(c2l)[:3, 3]].astype(np.float32)
    img_aug = np.diag([0.8, 0.8, 1, 1]).astype(np.float32)            # 1080x1920 -> 864x1536, no crop
    return k, c2l, img_aug, np.eye(4, dtype=np.float32), denorm


def roadside_sweep(rng, n=60000, height=6.0, ground_z=-2.0):
    """A 360-degree sweep from a pole `height` m above the ground: rings of 64 beams plus 300 box-shaped objects.
    About 6,500 pillars are occupied, near the 4,644-6,295 measured on DAIR-V2X-I."""
    ground = n * 3 // 4
    elevation = np.deg2rad(rng.choice(np.linspace(-25, -2, 64), ground))
    dist = height / np.tan(-elevation) + rng.normal(0, 0.05, ground)
    azimuth = rng.uniform(-np.pi, np.pi, ground)
    pts = [np.c_[dist * np.cos(azimuth), dist * np.sin(azimuth), rng.normal(ground_z, 0.03, ground)]]
    centres = np.c_[rng.uniform(-60, 100, 300), rng.uniform(-50, 50, 300), np.full(300, ground_z + 0.8)]
    per = (n - ground) // len(centres)
    pts += [c + rng.uniform(-1, 1, (per, 3)) * [2.2, 0.9, 0.8] for c in centres]
    return np.c_[np.concatenate(pts), rng.uniform(0, 1, n)].astype(np.float32)


def camera_graph_ms(onnx_dir: Path, repeat: int):
    import openvino as ov

    compiled = ov.Core().compile_model(str(onnx_dir / "camera.backbone.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    img = np.random.default_rng(0).normal(size=tuple(compiled.input(0).shape)).astype(np.float32)
    request.infer({0: img})   # the first inference allocates; not timed
    return median_ms(lambda: request.infer({0: img}), repeat), ov.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pool.json"))
    parser.add_argument("--onnx", type=Path, help="export folder holding camera.backbone.onnx")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    recipe = load_recipe("v2xfusion-pp-r34")
    rng = np.random.default_rng(0)

    calib = roadside_calibration()
    start = time.perf_counter()
    geom = geometry(recipe, *calib)
    geometry_s = time.perf_counter() - start
    table = pool_table(recipe, geom)
    table_s = time.perf_counter() - start
    d, fh, fw = table.shape
    channels = recipe.model.camera.vtransform.out_channels
    depth = rng.dirichlet(np.ones(d), (fh, fw)).transpose(2, 0, 1).astype(np.float32)
    feat = rng.normal(size=(fh, fw, channels)).astype(np.float32)
    pool_ms = median_ms(lambda: bev_pool(table, depth, feat), args.repeat)

    points = roadside_sweep(rng)
    slots, max_points = recipe.export.static_voxels, recipe.export.deploy_max_points
    # What the runtime calls (voxelize_for_deploy), then its two steps: each point's voxel and slot, and the copy of
    # the points into the [slots, max_points, C] feature array.
    vox, cloud = recipe.model.lidar.voxelize, points[:, : recipe.input.point_dims]
    assign = lambda: _assign(cloud, vox.point_cloud_range, vox.voxel_size, max_points, slots)  # noqa: E731
    assignment = assign()
    deploy_ms = median_ms(lambda: voxelize_for_deploy(recipe, points), args.repeat)
    assign_ms = median_ms(assign, args.repeat)
    fill_ms = median_ms(lambda: _features(cloud, assignment, slots, max_points), args.repeat)
    total_voxels = assignment.counts.size + assignment.num_dropped_voxels
    padded = voxelize_for_deploy(recipe, points)
    pillars = rng.normal(size=(slots, recipe.model.lidar.scatter.in_channels)).astype(np.float32)
    scatter_ms = median_ms(lambda: scatter(pillars, padded.coors, padded.num_voxels, recipe.bev_shape), args.repeat)

    result = {
        "benchmark": "NumPy geometry: pool-table build, BEV pooling, deploy voxelization (ms)",
        "pool_table": {"build_ms": round(table_s * 1e3, 1), "geometry_ms": round(geometry_s * 1e3, 1),
                       "frustum_points": int(d * fh * fw), "points_in_grid": table.num_points,
                       "cell_pixel_pairs": table.num_pairs, "cells": table.num_cells},
        "bev_pool_ms": pool_ms,
        "bev_pool_shape": [channels, table.grid[0], table.grid[1]],
        "voxelize": {"points": len(points), "points_in_range": assignment.num_points_in_range,
                     "voxels": total_voxels, "max_points": max_points, "static_voxels": slots,
                     "voxelize_for_deploy_ms": deploy_ms, "assign_ms": assign_ms, "fill_ms": fill_ms,
                     "scatter_ms": scatter_ms},
        "repeat": args.repeat,
        "host": dict(host(), numpy=np.__version__),
    }
    if args.onnx is not None and (args.onnx / "camera.backbone.onnx").is_file():
        result["camera_graph_f32_ms"], result["host"]["openvino"] = camera_graph_ms(args.onnx, 5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    camera = result.get("camera_graph_f32_ms")
    print(f"pool table {result['pool_table']['build_ms']} ms ({table.num_points} points in grid, "
          f"{table.num_pairs} cell-pixel pairs, {table.num_cells} cells); bev_pool {pool_ms} ms\n"
          f"voxelize_for_deploy {deploy_ms} ms (assign {assign_ms} + fill {fill_ms}; {total_voxels} voxels "
          f"from {len(points)} points); scatter {scatter_ms} ms\ncamera graph f32: {'skipped (no --onnx)' if camera is None else f'{camera} ms'}"
          f"\n-> {args.out}")


if __name__ == "__main__":
    main()
