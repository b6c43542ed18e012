"""runtime.kitti: the deploy binary's prediction lines, result2kitti-style KITTI labels and the yaw convention."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bevport.data.calib import Calibration
from bevport.data.kitti import KittiObject, read_label_file, write_label_file
from bevport.data.scenes import CameraRig, kitti_object as scene_label, make_scene
from bevport.geometry.boxes import wrap_angle
from bevport.runtime.kitti import (deploy_lines, kitti_class_labels, kitti_objects, kitti_to_lidar_boxes,
                                   write_predictions)

CLASS_NAMES = ["car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone"]
K = np.array([[2100.0, 0.0, 960.0], [0.0, 2100.0, 540.0], [0.0, 0.0, 1.0]])
LEVEL = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])     # camera x = -y, y = -z, z = x (LiDAR)


def level_calib(height: float = 1.5) -> Calibration:
    return Calibration.from_dair(K.ravel(), LEVEL, -LEVEL @ [0.0, 0.0, height])


def test_deploy_line_format():
    boxes = [[10.123456789, -3.5, -1.7, 1.8, 4.5, 1.6, 3.5, 0.1, 0.0],
             [0.00001234, 1e7, 0.0, 0.5, 0.6, 1.7, -math.pi, 0.0, 0.0]]
    lines = deploy_lines(boxes, [0.87654321, 0.5], [0, 9], CLASS_NAMES)
    assert lines[0] == "Car 0 0 0 0 0 0 0 1.6 1.8 4.5 10.1235 -3.5 -1.7 -2.78319 0.876543"
    # -pi wraps to +pi; %g switches to exponent notation like std::ostream
    assert lines[1] == "Trafficcone 0 0 0 0 0 0 0 1.7 0.5 0.6 1.234e-05 1e+07 0 3.14159 0.5"
    names = [line.split()[0] for line in deploy_lines(np.zeros((10, 9)), np.ones(10), np.arange(10), CLASS_NAMES)]
    assert names == ["Car", "Truck", "Construction_vehicle", "Bus", "Trailer", "Barrier", "Motorcycle", "Bicycle",
                     "Pedestrian", "Trafficcone"]
    assert deploy_lines(np.zeros((0, 9)), [], [], CLASS_NAMES) == []


def test_kitti_objects_mapping_threshold_and_columns():
    calib = level_calib()
    box = [20.0, 2.0, -1.5, 1.8, 4.5, 1.6, 0.3, 0.0, 0.0]
    labels = [0, 1, 3, 4, 6, 7, 8, 2, 5, 9, 0]
    scores = [0.9] * 10 + [0.45]
    objects = kitti_objects([box] * 11, scores, labels, CLASS_NAMES, calib, (1920, 1080))
    assert [o.type for o in objects] == ["Car"] * 3 + ["Cyclist"] * 3 + ["Pedestrian"]   # 0.45 itself is dropped
    obj = objects[0]
    assert obj.dimensions == (1.6, 1.8, 4.5)                      # (dz, dx, dy) in KITTI's h w l columns
    np.testing.assert_allclose(obj.location, [-2.0, 1.5 + 1.5, 20.0])  # lidar2cam of the bottom centre
    assert obj.rotation_y == pytest.approx(math.pi / 2 - 0.3)
    assert obj.alpha == pytest.approx(obj.rotation_y - math.atan2(-2.0, 20.0))
    assert obj.score == 0.9 and obj.truncated == 0 and obj.occluded == 0
    x1, y1, x2, y2 = obj.bbox
    assert 0 <= x1 < 960 - 2100 * 2 / 20 < x2 <= 1919 and 0 <= y1 < y2 <= 1079


def test_level_camera_yaw_conventions():
    """Level camera: the synthetic label's ry is exactly -phi - pi/2; result2kitti reads it as yaw = phi + pi (its
    pi/2 - yaw), dair2kitti as yaw = phi; the length (dy) lies along the heading either way."""
    calib = level_calib()
    rig = CameraRig(K, LEVEL, -LEVEL @ [0.0, 0.0, 1.5], (1920, 1080))
    for phi in (0.0, 0.4, 2.0, -2.5):
        label = scene_label(np.array([25.0, -3.0, -0.8, 4.4, 1.9, 1.5, phi]), "Car", rig, 1.0)
        assert label.rotation_y == pytest.approx(wrap_angle(-phi - math.pi / 2))
        for heading, offset in (("result2kitti", math.pi), ("dair2kitti", 0.0)):
            x, y, z, dx, dy, dz, yaw = kitti_to_lidar_boxes([label], calib, heading)[0]
            assert wrap_angle(yaw - phi - offset) == pytest.approx(0.0, abs=1e-12)
            assert (dx, dy, dz) == pytest.approx((1.9, 4.4, 1.5)) and (x, y, z) == pytest.approx((25.0, -3.0, -1.55))
            again = kitti_objects([[x, y, z, dx, dy, dz, yaw]], [1.0], [0], CLASS_NAMES, calib, rig.size,
                                  heading=heading)
            assert _line(again[0]) == _line(label)


def _line(obj: KittiObject) -> str:
    numbers = [obj.alpha, *obj.bbox, *obj.dimensions, *obj.location, obj.rotation_y]
    return " ".join([obj.type] + ["%.6f" % v for v in numbers])


def _round_trip(tmp_path, scene, heading):
    write_label_file(tmp_path / "gt.txt", scene.objects)
    gt = read_label_file(tmp_path / "gt.txt")
    boxes = kitti_to_lidar_boxes(gt, scene.calib, heading)
    labels = kitti_class_labels(gt, CLASS_NAMES)
    assert (labels >= 0).all()
    back = kitti_objects(boxes, np.ones(len(gt)), labels, CLASS_NAMES, scene.calib, scene.rig.size, heading=heading)
    write_label_file(tmp_path / f"{heading}.txt", back)
    back = read_label_file(tmp_path / f"{heading}.txt")
    assert len(back) == len(gt) and all(o.score == 1.0 for o in back)
    for ours, label in zip(back, gt):
        assert ours.type == (label.type if label.type in ("Car", "Pedestrian", "Cyclist") else "Car")  # Van/Truck/Bus
    return gt, boxes, back


def test_round_trip_synthetic_labels_dair2kitti(tmp_path):
    """Tilted camera, labels as dair2kitti writes them: label -> model box -> label gives the same line, and the
    model box is the scene's own LiDAR box (yaw = heading phi, dx = width, dy = length, z at the bottom)."""
    scene = make_scene(3, 0)
    gt, boxes, back = _round_trip(tmp_path, scene, "dair2kitti")
    for ours, label in zip(back, gt):
        assert _line(ours)[len(ours.type):] == _line(label)[len(label.type):]
    reference = scene.boxes[scene.labelled]
    assert np.abs(wrap_angle(boxes[:, 6] - reference[:, 6])).max() < 1e-9
    np.testing.assert_allclose(boxes[:, 3:6], reference[:, [4, 3, 5]])
    np.testing.assert_allclose(boxes[:, :3], reference[:, :3] - [[0, 0, 0.5]] * reference[:, 5:6], atol=1e-9)


def test_round_trip_synthetic_labels_result2kitti(tmp_path):
    """result2kitti: every column but the 2D box comes back exactly; its yaw is phi + pi up to the camera's yaw
    against the LiDAR, so the 2D box (projected from that box) moves a little."""
    scene = make_scene(3, 0)
    gt, boxes, back = _round_trip(tmp_path, scene, "result2kitti")
    for ours, label in zip(back, gt):
        assert ours.alpha == pytest.approx(label.alpha, abs=1e-9)
        assert ours.rotation_y == pytest.approx(label.rotation_y, abs=1e-12)
        np.testing.assert_allclose(ours.dimensions + ours.location, label.dimensions + label.location, atol=1e-9)
        np.testing.assert_allclose(ours.bbox, label.bbox, atol=40.0)
    error = wrap_angle(boxes[:, 6] - scene.boxes[scene.labelled][:, 6] - math.pi)
    assert 0.5 < np.degrees(np.abs(error)).max() < 6.0


def test_write_predictions_both_folders(tmp_path):
    calib = level_calib()
    boxes = np.array([[20.0, 2.0, -1.5, 1.8, 4.5, 1.6, 0.3, 0.0, 0.0], [30.0, -5.0, -1.5, 0.6, 0.7, 1.7, 1.0, 0, 0]])
    written = write_predictions(tmp_path, "000007", boxes, [0.8, 0.3], [0, 8], CLASS_NAMES, calib, (1920, 1080))
    assert written == {"lidar": tmp_path / "lidar" / "000007.txt", "kitti": tmp_path / "kitti" / "000007.txt"}
    assert written["lidar"].read_text().splitlines() == deploy_lines(boxes, [0.8, 0.3], [0, 8], CLASS_NAMES)
    objects = read_label_file(written["kitti"])
    assert [(o.type, o.score) for o in objects] == [("Car", 0.8)]           # the 0.3 pedestrian is under 0.45
    empty = write_predictions(tmp_path, "000008", np.zeros((0, 9)), [], [], CLASS_NAMES, calib, (1920, 1080))
    assert all(p.read_text() == "" for p in empty.values())
    assert list(write_predictions(tmp_path / "x", "1", boxes, [0.8, 0.3], [0, 8], CLASS_NAMES)) == ["lidar"]
