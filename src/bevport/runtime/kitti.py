"""Prediction writers: the deploy binary's LiDAR-frame lines and KITTI camera-frame labels (BEVHeight `result2kitti`).

Model boxes are `[N, >=7] = (x, y, z_bottom, dx, dy, dz, yaw, ...)` in the (virtual) LiDAR frame, `labels` index
the recipe's class names; dx = physical width w, dy = physical length l, dz = height h, and the length (dy) lies
along the direction `yaw` (from +x toward +y), i.e. along LiDAR x at yaw 0 (spec §4, contract §3.2).

Heading conventions (`heading=`):

* The model's yaw is DAIR's label `rotation` unchanged (BEVHeight gen_info_dair). dair2kitti writes the dataset's
  KITTI labels with rotation_y = −atan2(hz, hx) of that direction seen from the camera (hx, hz: its camera x and z),
  and data.scenes writes its labels the same way from the heading φ it samples: so yaw = φ for synthetic data, and
  rotation_y ≈ −yaw − π/2 for a level camera. `heading="dair2kitti"` writes and reads this convention: a perfect
  detection gives the label's line exactly, whatever the camera's tilt.
* result2kitti (NVIDIA's evaluation, `heading="result2kitti"`, the default) writes rotation_y = π/2 − yaw. For a
  level camera that is the label convention turned by π (the same cuboid: BEV/3D IoU and AP do not change); read
  back as its inverse, yaw = π/2 − ry ≈ φ + π. A camera yawed or tilted against the LiDAR (DAIR: a few degrees)
  also turns the written box by that angle, which lowers IoU (3.7° costs a 4.5 x 1.8 m car ~9 % BEV IoU). This is
  what NVIDIA's published numbers include.

Folders written by `write_predictions`: `<folder>/lidar/<id>.txt` (deploy lines, what `--dump-pred` writes) and
`<folder>/kitti/<id>.txt` (camera-frame KITTI labels with a score column; `runtime.evaluate` reads these).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bevport.data.calib import Calibration
from bevport.data.kitti import KittiObject, write_label_file
from bevport.fsutil import atomic_write_bytes
from bevport.geometry.boxes import box_corners, wrap_angle

KITTI_SCORE_THRESHOLD = 0.45
# result2kitti's category_map_dair; model classes missing here (construction_vehicle, barrier, traffic_cone) are dropped
MODEL_TO_KITTI = {"car": "Car", "van": "Car", "truck": "Car", "bus": "Car", "pedestrian": "Pedestrian",
                  "bicycle": "Cyclist", "trailer": "Cyclist", "motorcycle": "Cyclist"}
# KITTI / DAIR label type -> model class name, for turning labels into model boxes (tests, fake detections)
KITTI_TO_MODEL = {"Car": "car", "Van": "car", "Truck": "truck", "Bus": "bus", "Pedestrian": "pedestrian",
                  "Person_sitting": "pedestrian", "Cyclist": "bicycle"}
_DEPLOY_NAMES = {"traffic_cone": "Trafficcone"}   # every other class: str.capitalize() (Construction_vehicle, ...)
LIDAR_FOLDER, KITTI_FOLDER = "lidar", "kitti"
HEADINGS = ("result2kitti", "dair2kitti")


def _boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return boxes.reshape(-1, boxes.shape[-1] if boxes.size else 7)


# ---------------------------------------------------------------------------------------------- deploy lines

def deploy_class_name(name: str) -> str:
    return _DEPLOY_NAMES.get(name, name.capitalize())


def _cpp_float(value: float) -> str:
    """`std::cout << float` with the default stream state: 6 significant digits, %g style, of the float32 value."""
    return f"{float(np.float32(value)):.6g}"


def deploy_lines(boxes, scores, labels, class_names: Sequence[str]) -> List[str]:
    """The deploy binary's `--dump-pred` lines: `<Class> 0 0 0 0 0 0 0 <h> <l> <w> <x> <y> <z> <rot_y> <score>` with
    h = dz, l = exp(dim[0]) = dx, w = exp(dim[1]) = dy, z = bottom, rot_y = yaw wrapped into (−π, π]."""
    boxes = _boxes(boxes)
    lines = []
    for box, score, label in zip(boxes, np.asarray(scores).ravel(), np.asarray(labels).ravel()):
        x, y, z, dx, dy, dz, yaw = box[:7]
        numbers = (dz, dx, dy, x, y, z, wrap_angle(yaw), score)
        lines.append(" ".join([deploy_class_name(class_names[int(label)])] + ["0"] * 7
                              + [_cpp_float(v) for v in numbers]))
    return lines


# ------------------------------------------------------------------------------------------ camera-frame KITTI

def _to_camera(points: np.ndarray, calib: Calibration) -> np.ndarray:
    m = calib.lidar2cam
    return np.asarray(points, np.float64) @ m[:3, :3].T + m[:3, 3]


def image_box(corners_cam: np.ndarray, calib: Calibration, image_size: Tuple[int, int]) -> Tuple[float, ...]:
    """Bounding box of the projected corners, clipped to [0, W−1] x [0, H−1] like the dataset's labels (result2kitti
    clips to W and H, and only x1/y1 from below and x2/y2 from above; the same for any box that touches the image).
    Corners behind the camera are projected as they are, as result2kitti does."""
    uvw = corners_cam @ calib.intrinsics.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / uvw[:, 2:3]
    w, h = image_size
    x1, x2 = np.clip([uv[:, 0].min(), uv[:, 0].max()], 0, w - 1)
    y1, y2 = np.clip([uv[:, 1].min(), uv[:, 1].max()], 0, h - 1)
    return float(x1), float(y1), float(x2), float(y2)


def _check_heading(heading: str) -> None:
    if heading not in HEADINGS:
        raise ValueError(f"heading must be one of {HEADINGS}, got {heading!r}")


def _camera_direction(calib: Calibration, yaw: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Camera-frame x and z of the horizontal LiDAR direction(s) `yaw`."""
    r = calib.lidar2cam[:3, :3]
    return r[0, 0] * np.cos(yaw) + r[0, 1] * np.sin(yaw), r[2, 0] * np.cos(yaw) + r[2, 1] * np.sin(yaw)


def rotation_y(yaw: np.ndarray, calib: Calibration, heading: str = "result2kitti") -> np.ndarray:
    """KITTI rotation_y of model yaws: π/2 − yaw (result2kitti) or −atan2(hz, hx) of the camera-frame direction
    (dair2kitti); wrapped into (−π, π]."""
    _check_heading(heading)
    yaw = np.asarray(yaw, np.float64)
    if heading == "result2kitti":
        return wrap_angle(np.pi / 2 - yaw)
    hx, hz = _camera_direction(calib, yaw)
    return wrap_angle(-np.arctan2(hz, hx))


def lidar_yaw(rotation_y_: np.ndarray, calib: Calibration, heading: str = "result2kitti") -> np.ndarray:
    """Inverse of `rotation_y`. For dair2kitti: the horizontal LiDAR direction whose camera-frame (x, z) points
    along (cos ry, −sin ry)."""
    _check_heading(heading)
    ry = np.asarray(rotation_y_, np.float64)
    if heading == "result2kitti":
        return wrap_angle(np.pi / 2 - ry)
    r = calib.lidar2cam[:3, :3]
    a = r[0, 0] * np.sin(ry) + r[2, 0] * np.cos(ry)
    b = r[0, 1] * np.sin(ry) + r[2, 1] * np.cos(ry)
    yaw = np.arctan2(-a, b)                     # camera direction (hx, hz) is perpendicular to (sin ry, cos ry)
    hx, hz = _camera_direction(calib, yaw)
    return wrap_angle(np.where(hx * np.cos(ry) - hz * np.sin(ry) < 0, yaw + np.pi, yaw))


def kitti_object(box: Sequence[float], kitti_type: str, score: Optional[float], calib: Calibration,
                 image_size: Tuple[int, int], heading: str = "result2kitti") -> KittiObject:
    """One model box as a KITTI line: location = lidar2cam · (x, y, z_bottom), dimensions (h, w, l) = (dz, dx, dy),
    rotation_y per `heading`, alpha = rotation_y − atan2(x_cam, z_cam) wrapped into (−π, π], truncated/occluded 0.

    result2kitti's own alpha (get_camera_3d_8points) is the dair2kitti rotation_y − atan2(x_cam, z_cam), normalised
    into (−π/2, 3π/2]: for a level camera, this module's result2kitti alpha + π. alpha only feeds AOS, which
    runtime.evaluate does not compute."""
    x, y, z, dx, dy, dz, yaw = (float(v) for v in box[:7])
    location = _to_camera([[x, y, z]], calib)[0]
    ry = float(rotation_y(yaw, calib, heading))
    alpha = float(wrap_angle(ry - math.atan2(location[0], location[2])))
    bbox = image_box(_to_camera(box_corners(box)[0], calib), calib, image_size)
    return KittiObject(type=kitti_type, truncated=0.0, occluded=0, alpha=alpha, bbox=bbox, dimensions=(dz, dx, dy),
                       location=tuple(float(v) for v in location), rotation_y=ry,
                       score=None if score is None else float(score))


def kitti_objects(boxes, scores, labels, class_names: Sequence[str], calib: Calibration,
                  image_size: Tuple[int, int], score_threshold: float = KITTI_SCORE_THRESHOLD,
                  heading: str = "result2kitti") -> List[KittiObject]:
    """Camera-frame KITTI objects of the detections with score > `score_threshold` (strict) whose class maps to
    Car / Pedestrian / Cyclist (MODEL_TO_KITTI); `image_size` is (W, H) of the calibration's camera."""
    _check_heading(heading)
    out = []
    for box, score, label in zip(_boxes(boxes), np.asarray(scores).ravel(), np.asarray(labels).ravel()):
        kitti_type = MODEL_TO_KITTI.get(class_names[int(label)])
        if kitti_type is not None and float(score) > score_threshold:
            out.append(kitti_object(box, kitti_type, float(score), calib, image_size, heading))
    return out


def kitti_to_lidar_boxes(objects: Sequence[KittiObject], calib: Calibration,
                         heading: str = "result2kitti") -> np.ndarray:
    """Model-frame boxes [N,7] (x, y, z_bottom, dx, dy, dz, yaw) of camera-frame KITTI objects, the inverse of
    kitti_object: dx = w, dy = l, dz = h, yaw = lidar_yaw(rotation_y). DontCare lines are converted like any other."""
    if not objects:
        return np.zeros((0, 7))
    m = calib.camera2lidar
    loc = np.array([o.location for o in objects], np.float64) @ m[:3, :3].T + m[:3, 3]
    h, w, l = np.array([o.dimensions for o in objects], np.float64).T
    yaw = lidar_yaw(np.array([o.rotation_y for o in objects], np.float64), calib, heading)
    return np.column_stack([loc, w, l, h, yaw])


def kitti_class_labels(objects: Sequence[KittiObject], class_names: Sequence[str]) -> np.ndarray:
    """Model class index of each object's KITTI type (Van → car, Cyclist → bicycle, ...), −1 when it has none."""
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index.get(KITTI_TO_MODEL.get(o.type, ""), -1) for o in objects], np.int64)


# --------------------------------------------------------------------------------------------------- writing

def write_predictions(folder: os.PathLike, frame_id: str, boxes, scores, labels, class_names: Sequence[str],
                      calib: Optional[Calibration] = None, image_size: Optional[Tuple[int, int]] = None,
                      score_threshold: float = KITTI_SCORE_THRESHOLD,
                      heading: str = "result2kitti") -> Dict[str, Path]:
    """Write `<folder>/lidar/<frame_id>.txt` (deploy lines, every detection) and, given `calib` and `image_size`,
    `<folder>/kitti/<frame_id>.txt` (KITTI labels with score). A frame without detections gets an empty file, as
    evaluators expect one file per frame. Returns {"lidar": path, ["kitti": path]}."""
    folder = Path(folder)
    written = {LIDAR_FOLDER: folder / LIDAR_FOLDER / f"{frame_id}.txt"}
    text = "".join(line + "\n" for line in deploy_lines(boxes, scores, labels, class_names))
    atomic_write_bytes(written[LIDAR_FOLDER], text.encode("ascii"))
    if calib is not None and image_size is not None:
        written[KITTI_FOLDER] = folder / KITTI_FOLDER / f"{frame_id}.txt"
        objects = kitti_objects(boxes, scores, labels, class_names, calib, image_size, score_threshold, heading)
        write_label_file(written[KITTI_FOLDER], objects)
    return written
