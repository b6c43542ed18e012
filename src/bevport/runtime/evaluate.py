"""KITTI 3D and BEV average precision (R40) over Car / Pedestrian / Cyclist, as the KITTI devkit computes it.

Ground truth and predictions are KITTI label files (camera frame: x right, y down, z forward; location = bottom centre;
dimensions h, w, l; predictions carry a 16th score column). The algorithm is the devkit's
(`evaluate_object_3d_offline.cpp`; BEVHeight/mmdet3d `kitti_utils/eval.py` is a port), reimplemented here:

* per class and difficulty, ground truth of the class is "valid" unless it is too occluded, truncated or small
  (2D height <= MIN_HEIGHT); too hard boxes and the neighbouring classes (Van for Car, Person_sitting for
  Pedestrian) are "ignored" (a detection may match them without counting), everything else takes no part;
  detections of other classes take no part, detections whose 2D box is lower than MIN_HEIGHT are ignored;
* pass 1: every ground truth in file order takes the highest-scoring unassigned detection with IoU > threshold
  (strictly greater); the scores of the true positives give 41 score thresholds (get_thresholds);
* pass 2, per threshold: detections below it are dropped; each ground truth takes the unassigned valid detection of
  greatest IoU (or else an ignored one); TP, FP, FN summed over frames give precision; precision is made
  non-increasing (max over the higher-recall tail) and R40 AP = mean of precision[1..40] (in %).
* DontCare regions only matter for the 2D metric: the devkit compares them with the metric's own overlap (their 3D
  boxes sit at -1000 m) and the Python port skips them for BEV/3D, so here they take no part.

A consequence of get_thresholds that this keeps: it yields at most one threshold per true positive, so a class with
fewer than 41 valid ground-truth boxes cannot reach AP 100 even with perfect detections.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bevport.data.kitti import KittiObject, read_label_file
from bevport.errors import DatasetError
from bevport.fsutil import atomic_write_bytes

CLASSES = ("Car", "Pedestrian", "Cyclist")
MIN_OVERLAP = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}          # the same for BEV and 3D
NEIGHBOURS = {"Car": "van", "Pedestrian": "person_sitting"}
DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
N_SAMPLE_PTS = 41
METRICS = ("3d", "bev")


# ------------------------------------------------------------------------------------------------- geometry

def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """[N,4,2] counter-clockwise (x, z) corners of camera-frame boxes [N,5] = (x, z, l, w, rotation_y): l along the
    object's x axis, turned about camera y (x' = cos·u + sin·v, z' = −sin·u + cos·v, as the devkit)."""
    x, z, l, w, ry = np.asarray(boxes, np.float64).reshape(-1, 5).T
    u = np.array([1, -1, -1, 1]) * l[:, None] / 2
    v = np.array([1, 1, -1, -1]) * w[:, None] / 2
    c, s = np.cos(ry)[:, None], np.sin(ry)[:, None]
    return np.stack([x[:, None] + c * u + s * v, z[:, None] - s * u + c * v], axis=-1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _polygon_area(points: np.ndarray) -> np.ndarray:
    """Shoelace area of polygons [..., P, 2] whose vertices are in order (absolute value)."""
    return np.abs(_cross(points, np.roll(points, -1, axis=-2)).sum(-1)) / 2


def _inside(points: np.ndarray, poly: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """[M,P] whether points [M,P,2] lie in (or on) the counter-clockwise convex quadrilaterals poly [M,4,2]."""
    edges = np.roll(poly, -1, axis=1) - poly                                       # [M,4,2]
    rel = points[:, :, None, :] - poly[:, None, :, :]                              # [M,P,4,2]
    return np.all(_cross(edges[:, None], rel) >= -eps, axis=-1)


def _edge_crossings(a: np.ndarray, b: np.ndarray):
    """Intersection points [M,16,2] of every edge of a [M,4,2] with every edge of b, and which exist [M,16]."""
    p, r = a[:, :, None], (np.roll(a, -1, axis=1) - a)[:, :, None]                # [M,4,1,2]
    q, s = b[:, None], (np.roll(b, -1, axis=1) - b)[:, None]                       # [M,1,4,2]
    denom = _cross(r, s)
    safe = np.where(np.abs(denom) > 1e-12, denom, 1.0)
    t, u = _cross(q - p, s) / safe, _cross(q - p, r) / safe
    ok = (np.abs(denom) > 1e-12) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    return (p + t[..., None] * r).reshape(len(a), 16, 2), ok.reshape(len(a), 16)


def convex_intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas [M] of the intersections of convex quadrilaterals a[i] and b[i] ([M,4,2], counter-clockwise): the
    intersection polygon's vertices are the corners of each inside the other plus the edge crossings; sorted by
    angle about their mean, with the missing ones replaced by the last present vertex (adding no area)."""
    crossings, crossing_ok = _edge_crossings(a, b)
    points = np.concatenate([a, b, crossings], axis=1)                             # [M,24,2]
    ok = np.concatenate([_inside(a, b), _inside(b, a), crossing_ok], axis=1)
    count = ok.sum(1)
    centre = (points * ok[..., None]).sum(1) / np.maximum(count, 1)[:, None]
    angle = np.where(ok, np.arctan2(points[..., 1] - centre[:, None, 1], points[..., 0] - centre[:, None, 0]), np.inf)
    order = np.argsort(angle, axis=1, kind="stable")
    points = np.take_along_axis(points, order[..., None], axis=1)
    last = np.take_along_axis(points, np.maximum(count - 1, 0)[:, None, None].repeat(2, -1), axis=1)
    points = np.where((np.arange(points.shape[1]) < count[:, None])[..., None], points, last)
    return np.where(count >= 3, _polygon_area(points), 0.0)


def _pairwise_bev_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,K] intersection areas of BEV boxes (x, z, l, w, ry); only pairs whose circumcircles meet are clipped."""
    inter = np.zeros((len(a), len(b)))
    radius_a, radius_b = np.hypot(a[:, 2], a[:, 3]) / 2, np.hypot(b[:, 2], b[:, 3]) / 2
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    ia, ib = np.nonzero(distance < radius_a[:, None] + radius_b[None])
    if ia.size:
        inter[ia, ib] = convex_intersection_area(bev_corners(a[ia]), bev_corners(b[ib]))
    return inter


def bev_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,K] rotated IoU of BEV boxes (x, z, l, w, rotation_y)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 5), np.asarray(b, np.float64).reshape(-1, 5)
    inter = _pairwise_bev_intersection(a, b)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-12)


def iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,K] 3D IoU of camera-frame boxes (x, y, z, h, w, l, rotation_y), y the bottom (down is +y): each box spans
    y − h .. y; intersection = BEV overlap × height overlap."""
    a, b = np.asarray(a, np.float64).reshape(-1, 7), np.asarray(b, np.float64).reshape(-1, 7)
    inter = _pairwise_bev_intersection(a[:, [0, 2, 5, 4, 6]], b[:, [0, 2, 5, 4, 6]])
    top = np.maximum((a[:, 1] - a[:, 3])[:, None], (b[:, 1] - b[:, 3])[None])
    height = np.clip(np.minimum(a[:, 1][:, None], b[:, 1][None]) - top, 0, None)
    inter = inter * height
    volume_a, volume_b = a[:, 3] * a[:, 4] * a[:, 5], b[:, 3] * b[:, 4] * b[:, 5]
    return inter / np.maximum(volume_a[:, None] + volume_b[None] - inter, 1e-12)


# --------------------------------------------------------------------------------------------- annotations

@dataclass
class Annotations:
    """One frame's label file as arrays: names (lower case), truncated, occluded, bbox [N,4], boxes [N,7] =
    (x, y, z, h, w, l, rotation_y), score (NaN for ground truth)."""

    names: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray
    bbox: np.ndarray
    boxes: np.ndarray
    score: np.ndarray

    @classmethod
    def from_objects(cls, objects: Sequence[KittiObject]) -> "Annotations":
        def column(get, width=None):
            values = np.array([get(o) for o in objects], np.float64)
            return values.reshape(-1, width) if width else values.reshape(-1)
        boxes = column(lambda o: tuple(o.location) + tuple(o.dimensions) + (o.rotation_y,), 7)
        return cls(np.array([o.type.lower() for o in objects], dtype=object), column(lambda o: o.truncated),
                   column(lambda o: o.occluded), column(lambda o: o.bbox, 4), boxes,
                   column(lambda o: np.nan if o.score is None else o.score))

    def __len__(self) -> int:
        return len(self.names)


def overlaps(dt: Annotations, gt: Annotations, metric: str) -> np.ndarray:
    """[num_dt, num_gt] IoU for metric "3d" or "bev"."""
    if metric == "3d":
        return iou_3d(dt.boxes, gt.boxes)
    return bev_iou(_bev(dt.boxes), _bev(gt.boxes))


def _bev(boxes: np.ndarray) -> np.ndarray:
    """(x, z, l, w, rotation_y) of (x, y, z, h, w, l, rotation_y)."""
    return boxes[:, [0, 2, 5, 4, 6]]


def gt_flags(gt: Annotations, cls: str, difficulty: int) -> np.ndarray:
    """Per ground truth: 0 valid, 1 ignored (neighbour class or too hard), −1 not part of this evaluation."""
    same = gt.names == cls.lower()
    neighbour = gt.names == NEIGHBOURS.get(cls, "\0")
    hard = ((gt.occluded > MAX_OCCLUSION[difficulty]) | (gt.truncated > MAX_TRUNCATION[difficulty])
            | (gt.bbox[:, 3] - gt.bbox[:, 1] <= MIN_HEIGHT[difficulty]))
    return np.where(same & ~hard, 0, np.where(neighbour | same, 1, -1))


def dt_flags(dt: Annotations, cls: str, difficulty: int) -> np.ndarray:
    """Per detection: 1 ignored (2D box lower than the minimum height, any class), 0 valid, −1 another class."""
    short = np.abs(dt.bbox[:, 3] - dt.bbox[:, 1]) < MIN_HEIGHT[difficulty]
    return np.where(short, 1, np.where(dt.names == cls.lower(), 0, -1))


# ------------------------------------------------------------------------------------------------ matching

@dataclass
class FrameCase:
    """One frame prepared for one class, difficulty and metric."""

    iou: np.ndarray          # [num_dt, num_gt]
    gt: np.ndarray           # gt_flags
    dt: np.ndarray           # dt_flags
    score: np.ndarray        # [num_dt]

    def candidates(self, min_overlap: float) -> np.ndarray:
        return (self.iou > min_overlap) & (self.dt != -1)[:, None]


def true_positive_scores(case: FrameCase, min_overlap: float) -> List[float]:
    """Pass 1: each ground truth (in order) takes the best-scoring unassigned candidate; scores of valid pairs."""
    candidates = case.candidates(min_overlap)
    assigned = np.zeros(len(case.dt), bool)
    scores = []
    for i in np.flatnonzero((case.gt != -1) & candidates.any(0)):
        free = np.flatnonzero(candidates[:, i] & ~assigned)
        if free.size:
            j = free[np.argmax(case.score[free])]
            assigned[j] = True
            if case.gt[i] == 0 and case.dt[j] == 0:
                scores.append(float(case.score[j]))
    return scores


def get_thresholds(scores: Sequence[float], num_gt: int) -> np.ndarray:
    """Up to N_SAMPLE_PTS scores, taken where recall (of the sorted true positives) best matches 0, 1/40, 2/40, ..."""
    scores = np.sort(np.asarray(scores, np.float64))[::-1]
    chosen, current = [], 0.0
    for i, score in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if right - current < current - left and i < len(scores) - 1:
            continue
        chosen.append(score)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return np.array(chosen, np.float64)


def pr_counts(case: FrameCase, min_overlap: float, thresholds: np.ndarray) -> np.ndarray:
    """Pass 2 for every threshold at once: [T,3] (tp, fp, fn)."""
    counts = np.zeros((len(thresholds), 3), np.int64)
    candidates = case.candidates(min_overlap)
    live = (case.score[None] >= thresholds[:, None]) & (case.dt != -1)[None]          # [T, num_dt]
    assigned = np.zeros_like(live)
    lonely = (case.gt == 0) & ~candidates.any(0)
    counts[:, 2] += int(lonely.sum())
    for i in np.flatnonzero((case.gt != -1) & candidates.any(0)):
        free = live & ~assigned & candidates[:, i][None]
        valid, ignored = free & (case.dt == 0)[None], free & (case.dt == 1)[None]
        has_valid, has_ignored = valid.any(1), ignored.any(1)
        best = np.argmax(np.where(valid, case.iou[:, i][None], -np.inf), axis=1)
        j = np.where(has_valid, best, np.argmax(ignored, axis=1))
        found = has_valid | has_ignored
        assigned[np.flatnonzero(found), j[found]] = True
        if case.gt[i] == 0:
            counts[:, 0] += has_valid
            counts[:, 2] += ~found
    counts[:, 1] = (live & ~assigned & (case.dt == 0)[None]).sum(1)
    return counts


def average_precision(cases: Sequence[FrameCase], min_overlap: float, num_gt: int) -> Dict[str, object]:
    """R40 AP (%) and the counts of one class / difficulty / metric; AP is None without valid ground truth."""
    scores = [s for case in cases for s in true_positive_scores(case, min_overlap)]
    result = {"num_gt": int(num_gt), "num_tp": len(scores)}
    if num_gt == 0:
        return dict(result, ap=None)
    thresholds = get_thresholds(scores, num_gt)
    counts = sum((pr_counts(case, min_overlap, thresholds) for case in cases), np.zeros((len(thresholds), 3)))
    precision = np.zeros(N_SAMPLE_PTS)
    if len(thresholds):
        precision[:len(thresholds)] = counts[:, 0] / np.maximum(counts[:, 0] + counts[:, 1], 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return dict(result, ap=float(precision[1:].sum() / (N_SAMPLE_PTS - 1) * 100))


# ------------------------------------------------------------------------------------------------- driver

def _frame_ids(gt_folder: Path) -> List[str]:
    return sorted(p.stem for p in gt_folder.glob("*.txt"))


def _read(folder: Path, frame_id: str, predictions: bool) -> Annotations:
    path = folder / f"{frame_id}.txt"
    if not path.is_file():
        raise DatasetError(f"{'prediction' if predictions else 'ground-truth label'} file not found: {path}",
                           "evaluate needs one label file per frame in both folders (an empty file for no objects)")
    objects = read_label_file(path)
    if predictions and any(o.score is None for o in objects):
        raise DatasetError(f"{path}: a prediction line has no score (16th column)",
                           "write predictions with runtime.kitti.write_predictions (KITTI lines + score)")
    return Annotations.from_objects(objects)


def evaluate_annotations(gts: Sequence[Annotations], dts: Sequence[Annotations],
                         classes: Sequence[str] = CLASSES) -> Dict[str, object]:
    """{class: {difficulty: {AP_3D, AP_BEV, num_gt, num_dt, tp_3d, tp_bev}}} over frames given as arrays."""
    ious = {m: [overlaps(dt, gt, m) for gt, dt in zip(gts, dts)] for m in METRICS}
    out = {}  # type: Dict[str, object]
    for cls in classes:
        out[cls] = {}
        for d, difficulty in enumerate(DIFFICULTIES):
            gflags = [gt_flags(gt, cls, d) for gt in gts]
            dflags = [dt_flags(dt, cls, d) for dt in dts]
            entry = {"num_gt": int(sum((g == 0).sum() for g in gflags)),
                     "num_dt": int(sum((f == 0).sum() for f in dflags))}
            for metric in METRICS:
                cases = [FrameCase(iou, g, f, dt.score) for iou, g, f, dt in zip(ious[metric], gflags, dflags, dts)]
                ap = average_precision(cases, MIN_OVERLAP[cls], entry["num_gt"])
                entry["AP_" + metric.upper()] = ap["ap"]
                entry["tp_" + metric] = ap["num_tp"]
            out[cls][difficulty] = entry
    return out


def evaluate(gt_folder: os.PathLike, pred_folder: os.PathLike, ids: Optional[Sequence[str]] = None,
             classes: Sequence[str] = CLASSES) -> Dict[str, object]:
    """KITTI R40 3D and BEV AP of the label files `<pred_folder>/<id>.txt` against `<gt_folder>/<id>.txt` (ids:
    default every label file in gt_folder). Every listed frame must have a file in both folders."""
    gt_folder, pred_folder = Path(gt_folder), Path(pred_folder)
    ids = list(ids) if ids is not None else _frame_ids(gt_folder)
    gts = [_read(gt_folder, i, predictions=False) for i in ids]
    dts = [_read(pred_folder, i, predictions=True) for i in ids]
    return {"metric": "KITTI R40", "frames": len(ids), "min_overlap": {c: MIN_OVERLAP[c] for c in classes},
            "classes": evaluate_annotations(gts, dts, classes)}


def write_ap_json(path: os.PathLike, result: Dict[str, object]) -> None:
    atomic_write_bytes(path, (json.dumps(result, indent=2, sort_keys=True) + "\n").encode("utf-8"))
