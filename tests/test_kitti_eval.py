"""runtime.evaluate: rotated BEV / 3D IoU and KITTI R40 AP on hand-made label folders with known answers."""
from __future__ import annotations

import json
import math
from typing import List

import numpy as np
import pytest

from bevport.data.kitti import KittiObject, write_label_file
from bevport.errors import DatasetError
from bevport.runtime.evaluate import bev_iou, evaluate, get_thresholds, iou_3d, write_ap_json

SIZES = {"Car": (1.5, 1.8, 4.2), "Pedestrian": (1.7, 0.6, 0.7), "Cyclist": (1.7, 0.6, 1.8)}   # h, w, l


# ------------------------------------------------------------------------------------------------------ IoU

def test_iou_identical_and_half_length_offset():
    box = np.array([[2.0, 1.6, 25.0, 1.5, 1.8, 4.2, 0.4]])          # x, y, z, h, w, l, ry
    assert iou_3d(box, box)[0, 0] == pytest.approx(1.0)
    along = box.copy()
    along[0, [0, 2]] += 2.1 * np.array([math.cos(0.4), -math.sin(0.4)])   # half a length along the object's x axis
    assert iou_3d(box, along)[0, 0] == pytest.approx(1 / 3)
    bev = box[:, [0, 2, 5, 4, 6]]
    assert bev_iou(bev, along[:, [0, 2, 5, 4, 6]])[0, 0] == pytest.approx(1 / 3)
    lower = box.copy()
    lower[0, 1] += 0.75                                             # half a height down: same footprint
    assert iou_3d(box, lower)[0, 0] == pytest.approx(1 / 3)
    assert bev_iou(bev, lower[:, [0, 2, 5, 4, 6]])[0, 0] == pytest.approx(1.0)
    assert iou_3d(box, box + [[0, 5, 0, 0, 0, 0, 0]])[0, 0] == 0.0        # stacked: no height overlap
    assert bev_iou(np.zeros((0, 5)), bev).shape == (0, 1)


def test_bev_iou_matches_shapely():
    Polygon = pytest.importorskip("shapely.geometry").Polygon
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-3, 3, (200, 2)), rng.uniform(0.5, 5, (200, 2)), rng.uniform(-4, 4, 200)])
    b = np.column_stack([rng.uniform(-3, 3, (150, 2)), rng.uniform(0.5, 5, (150, 2)), rng.uniform(-4, 4, 150)])
    b[:20] = a[:20]                                                 # identical pairs (coincident edges)
    b[20:30] = a[20:30] + [0.5, 0, 0, 0, 0]                         # parallel, shifted
    ours = bev_iou(a, b)

    def polygon(box):
        x, z, l, w, ry = box
        c, s = math.cos(ry), math.sin(ry)
        return Polygon([(x + c * u + s * v, z - s * u + c * v) for u, v in
                        ((l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2), (l / 2, -w / 2))])
    pa, pb = [polygon(x) for x in a], [polygon(x) for x in b]
    expected = np.array([[p.intersection(q).area / p.union(q).area for q in pb] for p in pa])
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    assert (expected > 0).mean() > 0.2                             # many pairs really overlap


# ------------------------------------------------------------------------------------------------ fixtures

def obj(kind: str, x: float, z: float, *, height: float = 60.0, occluded: int = 0, truncated: float = 0.0,
        ry: float = 0.3, score=None) -> KittiObject:
    """A label whose 2D box is `height` pixels tall (the 2D box only decides the difficulty)."""
    h, w, l = SIZES.get(kind, SIZES["Car"])
    return KittiObject(kind, truncated, occluded, -1.0, (500.0, 300.0, 600.0, 300.0 + height), (h, w, l),
                       (x, 1.6, z), ry, score)


def grid(kind: str, count: int, row: float, **kwargs) -> List[KittiObject]:
    """`count` objects 8 m apart in a row at depth `row` (no two overlap)."""
    return [obj(kind, -100.0 + 8.0 * i, row, **kwargs) for i in range(count)]


def scored(objects: List[KittiObject], scores) -> List[KittiObject]:
    return [KittiObject(o.type, o.truncated, o.occluded, o.alpha, o.bbox, o.dimensions, o.location, o.rotation_y,
                        float(s)) for o, s in zip(objects, scores)]


def write_frames(folder, frames: List[List[KittiObject]]) -> List[str]:
    ids = [f"{i:06d}" for i in range(len(frames))]
    for frame_id, objects in zip(ids, frames):
        write_label_file(folder / f"{frame_id}.txt", objects)
    return ids


def ground_truth() -> List[List[KittiObject]]:
    """Two frames; per class 45 easy boxes, 4 moderate-only (short 2D box), 4 hard-only (occluded), plus the
    neighbouring classes and a DontCare region."""
    frames = []
    for f in range(2):
        objects = []
        for r, kind in enumerate(("Car", "Pedestrian", "Cyclist")):
            n = 23 if f == 0 else 22
            objects += grid(kind, n, 10.0 + 40 * r)
            objects += grid(kind, 2, 20.0 + 40 * r, height=30.0, occluded=1)
            objects += grid(kind, 2, 30.0 + 40 * r, height=50.0, occluded=2, truncated=0.4)
        objects += grid("Van", 2, 130.0) + grid("Person_sitting", 2, 140.0)
        objects.append(KittiObject("DontCare", -1, -1, -10, (0.0, 0.0, 100.0, 100.0), (-1, -1, -1),
                                   (-1000, -1000, -1000), -10))
        frames.append(objects)
    return frames


def perfect_predictions(frames: List[List[KittiObject]], seed: int = 0) -> List[List[KittiObject]]:
    rng = np.random.default_rng(seed)
    out = []
    for objects in frames:
        kept = [o for o in objects if o.type in ("Car", "Pedestrian", "Cyclist")]
        out.append(scored(kept, rng.uniform(0.5, 1.0, len(kept))))
    return out


# ----------------------------------------------------------------------------------------------------- AP

def test_identical_predictions_give_100(tmp_path):
    gt = ground_truth()
    ids = write_frames(tmp_path / "gt", gt)
    write_frames(tmp_path / "pred", perfect_predictions(gt))
    result = evaluate(tmp_path / "gt", tmp_path / "pred", ids)
    assert result["frames"] == 2 and result["metric"] == "KITTI R40"
    for cls in ("Car", "Pedestrian", "Cyclist"):
        counts = [result["classes"][cls][d]["num_gt"] for d in ("easy", "moderate", "hard")]
        assert counts == [45, 49, 53]
        for difficulty in ("easy", "moderate", "hard"):
            entry = result["classes"][cls][difficulty]
            assert entry["AP_3D"] == pytest.approx(100.0) and entry["AP_BEV"] == pytest.approx(100.0)
            assert entry["tp_3d"] == entry["num_gt"]


def test_neighbour_classes_and_short_detections_are_not_false_positives(tmp_path):
    """A Car detection on a Van, a Pedestrian on a Person_sitting, detections lower than 25 px anywhere, and
    detections of other types do not count against precision."""
    gt = ground_truth()
    preds = perfect_predictions(gt)
    extra = [KittiObject("Car", 0, 0, 0, o.bbox, o.dimensions, o.location, o.rotation_y, 0.99)
             for o in gt[0] if o.type == "Van"]
    extra += [KittiObject("Pedestrian", 0, 0, 0, o.bbox, o.dimensions, o.location, o.rotation_y, 0.99)
              for o in gt[0] if o.type == "Person_sitting"]
    extra += scored(grid("Car", 3, 200.0, height=20.0), [0.99] * 3)       # far from everything, but tiny in 2D
    extra += scored(grid("Truck", 3, 210.0), [0.99] * 3)                  # a class that is not evaluated
    preds[0] = extra + preds[0]
    ids = write_frames(tmp_path / "gt", gt)
    write_frames(tmp_path / "pred", preds)
    result = evaluate(tmp_path / "gt", tmp_path / "pred", ids)
    for cls in ("Car", "Pedestrian", "Cyclist"):
        assert all(result["classes"][cls][d]["AP_3D"] == pytest.approx(100.0) for d in ("easy", "moderate", "hard"))


def test_predictions_far_away_give_0(tmp_path):
    gt = ground_truth()
    preds = [[KittiObject(o.type, 0, 0, 0, o.bbox, o.dimensions, (o.location[0] + 500, 1.6, o.location[2]),
                          o.rotation_y, o.score) for o in frame] for frame in perfect_predictions(gt)]
    ids = write_frames(tmp_path / "gt", gt)
    write_frames(tmp_path / "pred", preds)
    result = evaluate(tmp_path / "gt", tmp_path / "pred", ids)
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for d in ("easy", "moderate", "hard"):
            assert result["classes"][cls][d]["AP_3D"] == 0.0 and result["classes"][cls][d]["AP_BEV"] == 0.0


def test_hand_computed_ap(tmp_path):
    """80 valid cars; 40 found (scores 0.90 .. 0.51) and 10 false positives above them all (0.95).
    get_thresholds: recall steps are 1/80, so it keeps the TP at ranks 1, 2, 4, 6, ..., 40: 21 thresholds, at
    recall positions 0/40 .. 20/40. At each, fp = 10, so precision = tp / (tp + 10), rising to 40/50 = 0.8 at the
    last; made non-increasing, positions 0..20 hold 0.8 and 21..40 hold 0. R40 AP = 20 * 0.8 / 40 = 40 %."""
    cars = grid("Car", 40, 10.0) + grid("Car", 40, 30.0)
    hits = scored(cars[:40], 0.90 - 0.01 * np.arange(40))
    misses = scored(grid("Car", 10, 60.0), [0.95] * 10)
    ids = write_frames(tmp_path / "gt", [cars])
    write_frames(tmp_path / "pred", [misses + hits])
    car = evaluate(tmp_path / "gt", tmp_path / "pred", ids)["classes"]["Car"]
    assert car["easy"]["AP_3D"] == pytest.approx(40.0) and car["hard"]["AP_BEV"] == pytest.approx(40.0)
    assert car["easy"]["num_gt"] == 80 and car["easy"]["num_dt"] == 50 and car["easy"]["tp_3d"] == 40
    assert len(get_thresholds(0.90 - 0.01 * np.arange(40), 80)) == 21


def test_few_ground_truth_boxes_follow_the_devkit(tmp_path):
    """4 cars, 2 found with high scores, 2 false positives with low scores. Precision is 1 up to recall 0.5, but the
    devkit's get_thresholds yields one threshold per true positive (at sample positions 0 and 1/40), so R40 AP is
    1/40 = 2.5 %, not 50 %: KITTI AP needs at least 41 ground-truth boxes per class to be meaningful."""
    cars = grid("Car", 4, 10.0)
    preds = scored(cars[:2], [0.9, 0.8]) + scored(grid("Car", 2, 50.0), [0.3, 0.2])
    ids = write_frames(tmp_path / "gt", [cars])
    write_frames(tmp_path / "pred", [preds])
    result = evaluate(tmp_path / "gt", tmp_path / "pred", ids)
    assert list(get_thresholds([0.9, 0.8], 4)) == [0.9, 0.8]
    assert result["classes"]["Car"]["moderate"]["AP_3D"] == pytest.approx(2.5)
    assert result["classes"]["Pedestrian"]["easy"]["AP_3D"] is None          # no ground truth: no AP
    assert result["classes"]["Pedestrian"]["easy"]["num_gt"] == 0


def test_missing_or_unscored_prediction_file_and_json(tmp_path):
    ids = write_frames(tmp_path / "gt", [grid("Car", 2, 10.0)])
    (tmp_path / "pred").mkdir()
    with pytest.raises(DatasetError, match="prediction file not found"):
        evaluate(tmp_path / "gt", tmp_path / "pred", ids)
    write_frames(tmp_path / "pred", [grid("Car", 2, 10.0)])
    with pytest.raises(DatasetError, match="no score"):
        evaluate(tmp_path / "gt", tmp_path / "pred")
    write_frames(tmp_path / "pred", [scored(grid("Car", 2, 10.0), [0.9, 0.8])])
    result = evaluate(tmp_path / "gt", tmp_path / "pred")                  # ids default to the ground-truth files
    write_ap_json(tmp_path / "ap.json", result)
    assert json.loads((tmp_path / "ap.json").read_text()) == result
