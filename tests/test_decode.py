"""Box decoding and NMS with the training code's semantics (spec §4), on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bevport.contract import build_contract
from bevport.errors import RecipeError
from bevport.runtime.decode import Detections, decode, decode_task, top_k
from bevport.runtime.nms import circle_nms, rotate_nms, rotated_iou_bev, xywhr_to_xyxyr

ATTRS = ("heatmap", "reg", "height", "dim", "rot", "vel")


@pytest.fixture(scope="module")
def contract(recipe):
    return build_contract(recipe)


def blank_task(recipe, background: float = -10.0):
    """One task's head outputs with no object: logits far below the threshold, unit boxes, yaw 0."""
    nx, ny = recipe.bev_shape
    c = len(recipe.model.head.tasks[0])
    rot = np.zeros((1, 2, nx, ny), np.float32)
    rot[0, 1] = 1.0
    return {"heatmap": np.full((1, c, nx, ny), background, np.float32), "reg": np.zeros((1, 2, nx, ny), np.float32),
            "height": np.zeros((1, 1, nx, ny), np.float32), "dim": np.zeros((1, 3, nx, ny), np.float32),
            "rot": rot, "vel": np.zeros((1, 2, nx, ny), np.float32)}


def plant(task, cls, row, col, logit, reg=(0.0, 0.0), height=0.0, dims=(1.0, 1.0, 1.0), yaw=0.0, vel=(0.0, 0.0)):
    task["heatmap"][0, cls, row, col] = logit
    task["reg"][0, :, row, col] = reg
    task["height"][0, 0, row, col] = height
    task["dim"][0, :, row, col] = np.log(dims)
    task["rot"][0, :, row, col] = (2 * math.sin(yaw), 2 * math.cos(yaw))   # any scale: yaw = atan2(sin, cos)
    task["vel"][0, :, row, col] = vel


def by_name(contract, tasks):
    """Per-task attribute arrays -> the head tensors by name, whichever head layout the contract has."""
    out = {t.name: np.zeros(t.shape, np.float32) for t in contract["head"].outputs}
    for t, attributes in enumerate(contract.head_layout()):
        for attr, (name, start, stop) in attributes.items():
            out[name][:, start:stop] = tasks[t][attr]
    return out


def with_head(recipe, **sections):
    return recipe.updated({"model": {"head": sections}})


def sigmoid32(x):
    return np.float32(1) / (np.float32(1) + np.exp(-np.float32(x)))


# ------------------------------------------------------------------------------------------------------- decoding

def test_planted_peak_decodes_row_to_x_and_column_to_y(recipe, contract):
    t0, t1 = blank_task(recipe), blank_task(recipe)
    yaw = 0.7
    plant(t0, 3, row=10, col=100, logit=2.0, reg=(0.25, 0.75), height=1.0, dims=(4.0, 2.0, 1.5), yaw=yaw,
          vel=(0.5, -0.25))
    det = decode(by_name(contract, [t0, t1]), recipe, contract)
    assert isinstance(det, Detections) and len(det) == 1
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.labels.dtype == np.int32
    x = (10 + 0.25) * 4 * 0.2 + 0.0          # row -> x
    y = (100 + 0.75) * 4 * 0.2 - 51.2        # column -> y
    expected = [x, y, 1.0 - 1.5 / 2, 4.0, 2.0, 1.5, yaw, 0.5, -0.25]   # z is the box bottom
    np.testing.assert_allclose(det.boxes[0], expected, rtol=1e-6, atol=1e-5)
    assert det.scores[0] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-6)
    assert det.labels[0] == 3 and recipe.class_names[3] == "bus"


def test_task1_labels_are_offset_and_tasks_are_merged_in_order(recipe, contract):
    t0, t1 = blank_task(recipe), blank_task(recipe)
    plant(t0, 0, 20, 20, logit=0.0)
    plant(t1, 2, 60, 60, logit=3.0)          # higher score, but task 1 comes second
    det = decode(by_name(contract, [t0, t1]), recipe, contract)
    assert det.labels.tolist() == [0, 5 + 2]
    assert recipe.class_names[det.labels[1]] == "bicycle"
    # decode_task keeps task-local labels and the centre z
    local = decode_task(t1, recipe, 1)
    assert local.labels.tolist() == [2] and local.boxes[0, 2] == pytest.approx(0.0)


PACKED_ORDER = ["reg", "height", "dim", "rot", "vel", "heatmap"]


def packed_recipe(recipe):
    """The V2X recipe with its head exported as one tensor, each task's attributes concatenated along channels."""
    data = recipe.to_dict()
    data["export"]["graphs"]["head"]["outputs"] = {"tensor": "head_out", "order": PACKED_ORDER}
    return type(recipe)(data, "packed head")


def test_packed_head_layout_slices_channels_task_by_task(recipe):
    contract = build_contract(packed_recipe(recipe))
    (out,) = contract["head"].outputs
    assert out.name == "head_out" and out.shape == (1, 30, 128, 128)   # 2 tasks x (2+1+3+2+2 + 5 classes)
    layout = contract.head_layout()
    assert layout[0]["reg"] == ("head_out", 0, 2) and layout[0]["heatmap"] == ("head_out", 10, 15)
    assert layout[1]["reg"] == ("head_out", 15, 17) and layout[1]["heatmap"] == ("head_out", 25, 30)


def test_packed_head_decodes_like_one_tensor_per_attribute(recipe, contract):
    t0, t1 = blank_task(recipe), blank_task(recipe)
    plant(t0, 1, 30, 90, logit=2.5, reg=(0.5, 0.5), height=0.4, dims=(4.2, 1.9, 1.6), yaw=0.3)
    plant(t1, 3, 70, 20, logit=1.5, reg=(0.1, 0.9), height=-0.5, dims=(0.6, 0.6, 1.7), yaw=-1.2)
    packed = np.concatenate([t[a] for t in (t0, t1) for a in PACKED_ORDER], axis=1)
    separate = decode(by_name(contract, [t0, t1]), recipe, contract)
    together = decode({"head_out": packed}, recipe, build_contract(packed_recipe(recipe)))
    assert len(separate) == 2
    np.testing.assert_array_equal(together.boxes, separate.boxes)
    np.testing.assert_array_equal(together.labels, separate.labels)


def test_packed_head_layout_is_checked(recipe):
    data = recipe.to_dict()
    data["export"]["graphs"]["head"]["outputs"] = {"tensor": "head_out", "order": PACKED_ORDER[:-1]}
    with pytest.raises(RecipeError, match=r"export\.graphs\.head\.outputs"):
        type(recipe)(data, "bad packed head")


def test_score_threshold_is_strict(recipe):
    r = with_head(recipe, bbox_coder={"score_threshold": 0.5}, test_cfg={"score_threshold": 0.5})
    for t in (0, 1):                          # circle and rotate tasks
        task = blank_task(r)
        plant(task, 0, 10, 10, logit=0.0)     # sigmoid(0) == 0.5 exactly: not > 0.5
        plant(task, 1, 30, 30, logit=1e-6)    # just above
        det = decode_task(task, r, t)
        assert sigmoid32(0.0) == np.float32(0.5)
        assert det.labels.tolist() == [1], t


def test_post_center_range_is_inclusive(recipe):
    task = blank_task(recipe)
    plant(task, 0, 0, 10, logit=1.0, reg=(0.0, 0.0))        # x == 0.0 == range min: kept
    plant(task, 0, 0, 40, logit=1.0, reg=(-0.01, 0.0))      # x < 0: dropped
    plant(task, 1, 50, 70, logit=1.0, height=10.0)          # z == 10 == range max: kept
    plant(task, 1, 50, 100, logit=1.0, height=-10.0)        # z == -10 == range min: kept
    plant(task, 2, 90, 70, logit=1.0, height=10.01)         # dropped
    det = decode_task(task, recipe, 0)
    kept = sorted(zip(det.boxes[:, 0].round(3).tolist(), det.boxes[:, 2].round(3).tolist()))
    assert kept == [(0.0, 0.0), (40.0, -10.0), (40.0, 10.0)]


def test_rotate_task_reapplies_post_center_limit_range_circle_task_does_not(recipe):
    r = with_head(recipe, test_cfg={"post_center_limit_range": [0.0, -61.2, -10.0, 50.0, 61.2, 10.0]})
    for t, expected in ((0, 2), (1, 1)):     # upstream only filters again after rotate NMS
        task = blank_task(r)
        plant(task, 0, 10, 10, logit=1.0)    # x = 8
        plant(task, 0, 100, 10, logit=1.0)   # x = 80: outside the test_cfg range, inside the coder's
        assert len(decode_task(task, r, t)) == expected, t


def test_top_k_is_per_class_then_over_all_candidates(recipe):
    r = with_head(recipe, bbox_coder={"max_num": 3})
    task = blank_task(r)
    for i, logit in enumerate([4.0, 3.0, 2.0, 1.5]):        # class 0: four peaks far apart
        plant(task, 0, 10 + 20 * i, 10, logit=logit)
    plant(task, 4, 100, 100, logit=2.5)
    det = decode_task(task, r, 0)
    assert det.labels.tolist() == [0, 0, 4]
    np.testing.assert_allclose(det.scores, sigmoid32(np.array([4.0, 3.0, 2.5])), rtol=1e-6)
    scores, ind, cls = top_k(np.arange(12, dtype=np.float32).reshape(2, 2, 3), 2)
    assert scores.tolist() == [11, 10] and ind.tolist() == [5, 4] and cls.tolist() == [1, 1]


def test_task0_circle_nms_is_class_agnostic(recipe):
    task = blank_task(recipe)
    plant(task, 0, 50, 50, logit=2.0)
    plant(task, 3, 51, 51, logit=1.0)        # 1.13 m away, another class: suppressed
    plant(task, 1, 50, 53, logit=1.5)        # 2.4 m away: kept
    det = decode_task(task, recipe, 0)
    assert det.labels.tolist() == [0, 1]


def test_post_max_size_caps_each_task(recipe):
    rng = np.random.default_rng(0)
    for t in (0, 1):
        task = blank_task(recipe)
        cells = [(r, c) for r in range(2, 128, 5) for c in range(2, 128, 5)][:100]   # 4 m apart
        logits = rng.permutation(np.linspace(-1.0, 3.0, len(cells)))
        for (row, col), logit in zip(cells, logits):
            plant(task, int(rng.integers(0, 5)), row, col, logit=float(logit))
        det = decode_task(task, recipe, t)
        assert len(det) == recipe.model.head.test_cfg.post_max_size == 83
        np.testing.assert_allclose(det.scores, np.sort(sigmoid32(logits))[::-1][:83], rtol=1e-6)


def test_nms_scale_enlarges_boxes_of_its_class(recipe):
    base = blank_task(recipe)
    plant(base, 1, 50, 50, logit=2.0, dims=(1.0, 1.0, 1.0))
    plant(base, 1, 51, 50, logit=1.0, dims=(1.0, 1.0, 1.0))   # 0.8 m apart: IoU 0.11 < 0.2
    assert len(decode_task(base, recipe, 1)) == 2
    r = with_head(recipe, test_cfg={"nms_scale": [[1.0], [1.0, 3.0]]})
    assert len(decode_task(base, r, 1)) == 1                  # 3 m boxes: IoU 0.58


def test_decode_rejects_missing_outputs_and_batches(recipe, contract):
    t0, t1 = blank_task(recipe), blank_task(recipe)
    outputs = by_name(contract, [t0, t1])
    with pytest.raises(KeyError):
        decode({k: v for k, v in outputs.items() if k != "score2"}, recipe, contract)
    with pytest.raises(ValueError):
        decode_task({k: np.concatenate([v, v]) for k, v in t0.items()}, recipe, 0)
    assert len(decode(outputs, recipe, contract)) == 0


def test_detections_select():
    d = Detections(np.arange(27, dtype=np.float32).reshape(3, 9), [0.9, 0.5, 0.2], [0, 5, 9])
    s = d.select(d.scores > 0.3)
    assert len(s) == 2 and s.labels.tolist() == [0, 5] and s.boxes[1, 0] == 9
    assert d.select(np.array([2])).labels.tolist() == [9]
    assert len(Detections.empty()) == 0
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 9)), [1.0], [0])


# ------------------------------------------------------------------------------------------------------ circle NMS

@pytest.mark.parametrize("gap, kept", [(1.9, [0]), (2.1, [0, 1]), (2.0, [0])])
def test_circle_nms_suppresses_within_two_metres_inclusive(gap, kept):
    xy = np.array([[10.0, 5.0], [10.0 + gap, 5.0]], np.float32)
    assert circle_nms(xy, np.array([0.9, 0.8]), 4, 83).tolist() == kept
    assert circle_nms(xy, np.array([0.8, 0.9]), 4, 83).tolist() == ([1, 0] if len(kept) == 2 else [1])


def test_circle_nms_is_greedy_and_capped():
    xy = np.array([[0, 0], [1.5, 0], [3.0, 0]], np.float32)       # 1 suppresses 2 only via 0 -> 2 survives
    assert circle_nms(xy, np.array([0.9, 0.8, 0.7]), 4).tolist() == [0, 2]
    far = np.stack([np.arange(100) * 3.0, np.zeros(100)], axis=1)
    scores = np.random.default_rng(1).permutation(100) / 100.0
    keep = circle_nms(far, scores, 4, 83)
    assert keep.tolist() == np.argsort(-scores)[:83].tolist()
    assert circle_nms(np.zeros((0, 2)), np.zeros(0), 4, 83).tolist() == []
    # equal scores keep their input order (stable)
    assert circle_nms(np.zeros((3, 2)), np.array([0.5, 0.5, 0.5]), 4).tolist() == [0]


# ----------------------------------------------------------------------------------------------------- rotated NMS

def test_rotate_nms_hand_case():
    boxes = np.array([[0.0, 0, 4, 2, 0],      # A
                      [1.2, 0, 4, 2, 0],      # B: IoU(A, B) = 5.6 / 10.4 = 0.54 -> suppressed
                      [2.9, 0, 4, 2, 0],      # C: IoU(A, C) = 2.2 / 13.8 = 0.16; IoU(B, C) = 0.40 but B is gone
                      [30., 0, 4, 2, 1]],     # D: far away
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.1], np.float32)
    assert rotate_nms(boxes, scores, 0.2, 1000, 83).tolist() == [0, 2, 3]
    assert rotate_nms(boxes, scores, 0.2, 1000, 2).tolist() == [0, 2]
    assert rotate_nms(boxes, scores, 0.2, 2, 83).tolist() == [0]        # pre_max_size: only A and B compete
    assert rotate_nms(boxes[[2, 0, 1, 3]], scores[[2, 0, 1, 3]], 0.2).tolist() == [1, 0, 3]
    iou = rotated_iou_bev(xywhr_to_xyxyr(boxes[:3]), xywhr_to_xyxyr(boxes[:3]))
    np.testing.assert_allclose(iou[0, 1:], [5.6 / 10.4, 2.2 / 13.8], rtol=1e-5)
    np.testing.assert_allclose(iou[1, 2], 4.6 / 11.4, rtol=1e-5)


def test_rotated_iou_uses_the_kernels_minus_yaw_rotation():
    # Two 4 x 1 boxes at yaw 45 deg. The kernel rotates corners by -yaw, so the long axis runs along (1, -1):
    # a box offset by (1, -1) overlaps along its length, one offset by (1, 1) sits beside it.
    a = xywhr_to_xyxyr(np.array([[0, 0, 4, 1, math.pi / 4]]))
    along = xywhr_to_xyxyr(np.array([[1, -1, 4, 1, math.pi / 4]]))
    beside = xywhr_to_xyxyr(np.array([[1, 1, 4, 1, math.pi / 4]]))
    overlap = 4 - math.sqrt(2)
    assert rotated_iou_bev(a, along)[0, 0] == pytest.approx(overlap / (8 - overlap), rel=1e-5)
    assert rotated_iou_bev(a, beside)[0, 0] == 0.0


def test_rotated_iou_identical_disjoint_and_shape():
    boxes = xywhr_to_xyxyr(np.array([[1, 2, 4, 2, 0.3], [-5, 3, 0.6, 0.8, -2.0], [50, 50, 2, 2, 1.0]]))
    iou = rotated_iou_bev(boxes, boxes)
    assert iou.shape == (3, 3) and iou.dtype == np.float32
    np.testing.assert_allclose(np.diag(iou), 1.0, atol=1e-5)          # float32 corners, like the kernel
    assert (iou[~np.eye(3, dtype=bool)] == 0).all()
    assert rotated_iou_bev(boxes, np.zeros((0, 5))).shape == (3, 0)


def _kernel_polygon(shapely_geometry, box):
    x1, y1, x2, y2, yaw = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    c, s = math.cos(yaw), math.sin(yaw)
    pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return shapely_geometry.Polygon([((px - cx) * c + (py - cy) * s + cx, -(px - cx) * s + (py - cy) * c + cy)
                                     for px, py in pts])


def test_rotated_iou_matches_shapely_on_random_boxes():
    geometry = pytest.importorskip("shapely.geometry")
    rng = np.random.default_rng(0)

    def random_boxes(n):
        return xywhr_to_xyxyr(np.c_[rng.uniform(-3, 3, (n, 2)), rng.uniform(0.3, 5, (n, 2)),
                                    rng.uniform(-math.pi, math.pi, n)])

    a, b = random_boxes(40), random_boxes(50)
    pa, pb = [_kernel_polygon(geometry, x) for x in a], [_kernel_polygon(geometry, x) for x in b]
    ref = np.array([[p.intersection(q).area / p.union(q).area for q in pb] for p in pa])
    iou = rotated_iou_bev(a, b)
    assert (ref > 0).sum() > 500                              # the case mixes overlapping and disjoint pairs
    np.testing.assert_allclose(iou, ref, atol=1e-5, rtol=0)
