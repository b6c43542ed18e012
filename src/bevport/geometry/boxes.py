"""Upright LiDAR-frame boxes: their eight corners and the angle wrap, in NumPy (no torch).

The one place box corners are computed: the synthetic scenes (data.scenes), the prediction writers (runtime.kitti)
and the pictures (runtime.vis) all call `cuboid_corners`, directly or through `box_corners`.

Model boxes [N,>=7] = (x, y, z_bottom, dx, dy, dz, yaw, ...): dx is the width, dy the length, dz the height, and
the length lies along `yaw` (from +x toward +y), the width along yaw + pi/2.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Corner order: bottom 4 then top 4, each front-left, front-right, rear-right, rear-left ("front" = the heading).
CORNER_SIGNS = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], np.float64)       # (along heading, along left)


def cuboid_corners(centre: Sequence[float], length: float, width: float, z_low: float, z_high: float,
                   yaw: float) -> np.ndarray:
    """[8,3] corners of an upright cuboid in CORNER_SIGNS order: `length` along `yaw`, `width` across it, the
    bottom face at centre z + z_low and the top face at centre z + z_high."""
    local = np.array([[a * length / 2, b * width / 2, z] for z in (z_low, z_high) for a, b in CORNER_SIGNS])
    c, s = math.cos(yaw), math.sin(yaw)
    return local @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]) + np.asarray(centre, np.float64)


def box_corners(boxes) -> np.ndarray:
    """[N,8,3] LiDAR-frame corners of model boxes [N,>=7] (or one box [>=7]): bottom 4 then top 4, each in the
    order front-left, front-right, rear-right, rear-left, where the front is the heading yaw."""
    b = np.asarray(boxes, np.float64)
    if b.size == 0:
        return np.zeros((0, 8, 3))
    b = b.reshape(-1, b.shape[-1])
    if b.shape[1] < 7:
        raise ValueError(f"boxes must be [N,>=7] (x, y, z_bottom, dx, dy, dz, yaw, ...), got shape {b.shape}")
    return np.stack([cuboid_corners((x, y, z), dy, dx, 0.0, dz, yaw)
                     for x, y, z, dx, dy, dz, yaw in b[:, :7].tolist()])


def wrap_angle(angle):
    """Angle(s) wrapped into (-pi, pi]."""
    return np.pi - np.mod(np.pi - np.asarray(angle, np.float64), 2 * np.pi)
