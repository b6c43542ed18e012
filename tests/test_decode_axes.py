"""The decoder against boxes written by hand, with the BEV axis convention stated once, from upstream.

The convention (not taken from bevport's decoder or from tests/planted.py, which share one assumption):
the CenterHead maps are `[B, C, X, Y]`: dim 2 indexes x (forward), dim 3 indexes y (left). MIT BEVFusion's
CenterPointBBoxCoder as NVIDIA trained V2XFusion with it takes `xs = ind // 128` (the row, dim 2) and `ys = ind % 128`
(the column, dim 3), the swap of stock mmdet3d; Intel's deploy binary decodes `x = (row + reg0) * out_size_factor *
voxel + pc_min_x` and `y = (col + reg1) * ... + pc_min_y`. For V2XFusion out_size_factor * voxel = 4 * 0.2 = 0.8 m per
cell and pc_range starts at (0, -51.2), so cell (i, j) with reg (r0, r1) is the centre

    x = (i + r0) * 0.8,    y = -51.2 + (j + r1) * 0.8

The expected numbers below are literals worked out by hand from that rule, never recomputed with the decoder's
formula. Every box has i != j, so decoding rows as y (or reg0 into y) moves it by tens of metres.
Other attributes: z = height is the centre and the output z is the bottom (height - dz/2); dim holds log sizes;
yaw = atan2(rot[0] = sin, rot[1] = cos); labels of task 1 follow task 0's five classes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bevport.runtime.decode import decode_tasks

N = 128                 # BEV cells along x and along y
BACKGROUND = -20.0      # heatmap logit of every other cell: sigmoid ~2e-9, far below score_threshold 0.1
# `recipe` is conftest's fixture: load_recipe("v2xfusion-pp-r34")


def empty_task(classes: int = 5) -> dict:
    return {"heatmap": np.full((1, classes, N, N), BACKGROUND, np.float32),
            "reg": np.zeros((1, 2, N, N), np.float32), "height": np.zeros((1, 1, N, N), np.float32),
            "dim": np.zeros((1, 3, N, N), np.float32), "rot": np.zeros((1, 2, N, N), np.float32),
            "vel": np.zeros((1, 2, N, N), np.float32)}


def put(task: dict, cls: int, i: int, j: int, logit, reg, height, size, rot, vel) -> None:
    """One object at cell [0, cls, i, j]: i along dim 2, j along dim 3. `size` is (dx, dy, dz) in metres."""
    task["heatmap"][0, cls, i, j] = logit
    task["reg"][0, :, i, j] = reg
    task["height"][0, 0, i, j] = height
    task["dim"][0, :, i, j] = [math.log(s) for s in size]       # the head emits log sizes
    task["rot"][0, :, i, j] = rot
    task["vel"][0, :, i, j] = vel


def hand_written_scene():
    """Two tasks, five objects, all tens of metres apart (both NMS keep them all)."""
    vehicles, vulnerable = empty_task(), empty_task()
    # truck (task 0 class 1) at i=10, j=100
    put(vehicles, 1, 10, 100, 3.0, (0.5, 0.25), 0.9, (4.0, 1.8, 1.5), (0.5, 0.8660254), (1.5, -0.5))
    # car (task 0 class 0) at i=90, j=20
    put(vehicles, 0, 90, 20, 1.0, (0.1, 0.9), -0.2, (4.5, 2.0, 1.6), (0.0, 1.0), (0.0, 0.0))
    # pedestrian (task 1 class 3) at i=40, j=64
    put(vulnerable, 3, 40, 64, 2.0, (0.75, 0.5), 1.2, (0.6, 0.7, 1.7), (-0.6, -0.8), (0.25, 0.75))
    # barrier (task 1 class 0) at i=120, j=5
    put(vulnerable, 0, 120, 5, 0.0, (0.0, 0.0), -1.0, (0.5, 2.5, 1.0), (1.0, 0.0), (0.0, 0.0))
    # motorcycle (task 1 class 1) at i=3, j=125
    put(vulnerable, 1, 3, 125, -1.0, (0.5, 0.5), 0.5, (2.0, 0.8, 1.4), (0.0, -1.0), (-2.0, 0.0))
    return [vehicles, vulnerable]


# Worked by hand: x = (i + r0) * 0.8, y = -51.2 + (j + r1) * 0.8, z_bottom = height - dz / 2,
# yaw = atan2(sin, cos), score = sigmoid(logit). Order: task 0 then task 1, each by descending score.
EXPECTED = [  # label, score, x, y, z_bottom, dx, dy, dz, yaw, vx, vy
    (1, 0.9525741, 8.4, 29.0, 0.15, 4.0, 1.8, 1.5, 0.5235988, 1.5, -0.5),             # truck, i+r0=10.5, j+r1=100.25
    (0, 0.7310586, 72.08, -34.48, -1.0, 4.5, 2.0, 1.6, 0.0, 0.0, 0.0),                 # car, i+r0=90.1, j+r1=20.9
    (8, 0.8807971, 32.6, 0.4, 0.35, 0.6, 0.7, 1.7, -2.4980915, 0.25, 0.75),            # pedestrian, i+r0=40.75, j+r1=64.5
    (5, 0.5, 96.0, -47.2, -1.5, 0.5, 2.5, 1.0, 1.5707963, 0.0, 0.0),                   # barrier, i+r0=120, j+r1=5
    (6, 0.2689414, 2.8, 49.2, -0.2, 2.0, 0.8, 1.4, 3.1415927, -2.0, 0.0),              # motorcycle, i+r0=3.5, j+r1=125.5
]


def test_recipe_numbers_the_hand_arithmetic_assumes(recipe):
    coder = recipe.model.head.bbox_coder
    assert list(coder.pc_range[:2]) == [0.0, -51.2]
    assert coder.out_size_factor * coder.voxel_size[0] == pytest.approx(0.8)
    assert coder.out_size_factor * coder.voxel_size[1] == pytest.approx(0.8)
    assert coder.score_threshold == pytest.approx(0.1)
    assert [len(t) for t in recipe.model.head.tasks] == [5, 5]
    assert recipe.class_names[1] == "truck" and recipe.class_names[5] == "barrier"
    assert recipe.class_names[6] == "motorcycle" and recipe.class_names[8] == "pedestrian"


def test_hand_written_boxes_decode_to_hand_computed_values(recipe):
    dets = decode_tasks(hand_written_scene(), recipe)
    assert dets.labels.tolist() == [e[0] for e in EXPECTED]
    assert dets.scores == pytest.approx([e[1] for e in EXPECTED], abs=1e-6)
    for got, want in zip(dets.boxes.tolist(), EXPECTED):
        assert got == pytest.approx(list(want[2:]), abs=1e-4), f"label {want[0]}"


def test_row_is_x_and_column_is_y(recipe):
    """One object at [0, 0, 10, 100] and its mirror at [0, 0, 100, 10]: x follows dim 2, y follows dim 3."""
    for (i, j), (x, y) in {(10, 100): (8.0, 28.8), (100, 10): (80.0, -43.2)}.items():
        vehicles = empty_task()
        put(vehicles, 0, i, j, 3.0, (0.0, 0.0), 0.0, (4.0, 2.0, 1.5), (0.0, 1.0), (0.0, 0.0))
        dets = decode_tasks([vehicles, empty_task()], recipe)
        assert len(dets) == 1
        assert dets.boxes[0, :2].tolist() == pytest.approx([x, y], abs=1e-4)


def test_reg_channel_0_moves_x_and_channel_1_moves_y(recipe):
    """Same cell, sub-cell offsets (0.5, 0) then (0, 0.5): only x, then only y, moves by 0.4 m."""
    got = []
    for reg in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5)]:
        vulnerable = empty_task()
        put(vulnerable, 2, 30, 70, 3.0, reg, 0.0, (1.8, 0.7, 1.6), (0.0, 1.0), (0.0, 0.0))
        (box,) = decode_tasks([empty_task(), vulnerable], recipe).boxes.tolist()
        got.append(box[:2])
    assert got == [pytest.approx([24.0, 4.8], abs=1e-4), pytest.approx([24.4, 4.8], abs=1e-4),
                   pytest.approx([24.0, 5.2], abs=1e-4)]
