"""Box decoding of the CenterHead outputs with the training code's semantics (NumPy only).

Mirrors MIT BEVFusion's `CenterHead.get_bboxes` + `CenterPointBBoxCoder.decode` for one sample (spec §4):

per task
  1. scores = sigmoid(heatmap logits); top-K (K = bbox_coder.max_num) over each class's nx*ny cells, then top-K over the
     C*K candidates; class = candidate // K.
  2. spatial index -> xs = ind // ny (row = x), ys = ind % ny (column = y) -- the BEV is X-major (spec §4.1);
     x = (xs + reg0) * out_size_factor * voxel_size[0] + pc_range[0], y likewise with ys, reg1 and index 1;
     z = height (gravity centre); dx, dy, dz = exp(dim) (the graph outputs log sizes); yaw = atan2(rot0, rot1); vel.
  3. keep score > score_threshold (strict) and centre inside post_center_range (inclusive).
  4. NMS, class-agnostic within the task: `circle` (squared centre distance <= min_radius, then post_max_size) or
     `rotate` (score >= threshold, per-class nms_scale on the BEV size, rotated IoU > nms_thr with pre/post_max_size,
     then post_center_limit_range again).
merge: task 0 then task 1, labels offset by the class counts of earlier tasks, z -> bottom (z - dz/2).

Arithmetic is float32 in upstream's operation order. Where torch.topk / torch.sort / numpy's quicksort leave the order
of equal values unspecified, this module is deterministic: top-K ranks logits (a higher logit first even where float32
sigmoid saturates both to 1.0), then lower class, then lower cell; NMS sorts scores stably (see `bevport.runtime.nms`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence

import numpy as np

from bevport.runtime.nms import circle_nms, descending_order, rotate_nms

if TYPE_CHECKING:  # pragma: no cover
    from bevport.contract import Contract
    from bevport.recipe import Recipe

F32 = np.float32
BOX_COLUMNS = ("x", "y", "z_bottom", "dx", "dy", "dz", "yaw", "vx", "vy")


@dataclass
class Detections:
    """Decoded boxes of one frame.

    boxes: float32 [N, 9] = (x, y, z_bottom, dx, dy, dz, yaw, vx, vy) in the LiDAR frame (z is the box BOTTOM);
    scores: float32 [N]; labels: int32 [N] indexing `recipe.class_names`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=F32).reshape(-1, len(BOX_COLUMNS))
        self.scores = np.asarray(self.scores, dtype=F32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                             f"{len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, mask) -> "Detections":
        """The detections picked by a boolean mask or an index array."""
        return Detections(self.boxes[mask], self.scores[mask], self.labels[mask])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, len(BOX_COLUMNS)), F32), np.zeros(0, F32), np.zeros(0, np.int32))

    @classmethod
    def concatenate(cls, parts: Sequence["Detections"]) -> "Detections":
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.labels for p in parts]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return F32(1) / (F32(1) + np.exp(-x))


def _top_k_desc(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of a 1-D array, best first; ties go to the lower index."""
    n = len(values)
    if k >= n:
        return descending_order(values)
    kth = values[np.argpartition(values, n - k)[n - k]]         # the k-th largest value
    above = np.flatnonzero(values > kth)
    ties = np.flatnonzero(values == kth)[:k - len(above)]
    picked = np.concatenate([above, ties])
    return picked[descending_order(values[picked])]


def top_k(heatmap: np.ndarray, k: int):
    """`CenterPointBBoxCoder._topk` for one sample: heatmap [C, nx, ny] ->
    (values [k], spatial index [k] into nx*ny, class [k]), best first; ties go to the lower cell, then class."""
    c = heatmap.shape[0]
    flat = heatmap.reshape(c, -1)
    k1 = min(k, flat.shape[1])
    inds = np.stack([_top_k_desc(row, k1) for row in flat])         # [C, k1] spatial indices per class
    cand = np.take_along_axis(flat, inds, axis=1).reshape(-1)      # class-major, as torch's view(batch, -1)
    best = descending_order(cand)[:min(k, len(cand))]
    return cand[best], inds.reshape(-1)[best], (best // k1).astype(np.int32)


def _task_outputs(outputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    maps = {}
    for attr, value in outputs.items():
        arr = np.asarray(value, dtype=F32)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"head output `{attr}`: batch {arr.shape[0]}, decode one frame at a time")
            arr = arr[0]
        if arr.ndim != 3:
            raise ValueError(f"head output `{attr}`: expected [1, C, nx, ny], got shape {np.shape(value)}")
        maps[attr] = arr
    return maps


def _in_range(centres: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    r = np.asarray(bounds, dtype=F32)
    return np.all((centres >= r[:3]) & (centres <= r[3:]), axis=1)


def decode_task(outputs: Mapping[str, np.ndarray], recipe: "Recipe", task_index: int) -> Detections:
    """One task's detections (labels task-local, box z still the CENTRE) from its head outputs.

    outputs: SeparateHead attribute (heatmap, reg, height, dim, rot, vel) -> array [1, C, nx, ny]; `heatmap` holds
    logits and `dim` log sizes, as the head graph emits them.
    """
    head = recipe.model.head
    coder, test = head.bbox_coder, head.test_cfg
    maps = _task_outputs(outputs)
    missing = [a for a in ("heatmap", "reg", "height", "dim", "rot") if a not in maps]
    if missing:
        raise ValueError(f"task {task_index}: head outputs {missing} missing (got {sorted(maps)})")
    heat = maps["heatmap"]
    nx, ny = heat.shape[1:]
    k = int(coder.max_num)

    # Ranking the logits picks the cells ranking sigmoid(logits) picks (sigmoid is monotonic) without a sigmoid over
    # the whole map; where float32 sigmoid maps distinct logits to one score (saturation at 1.0), the higher logit
    # ranks first, a tie torch.topk leaves unordered.
    logits, ind, cls = top_k(heat, k)
    scores = _sigmoid(logits)
    xs, ys = ind // ny, ind % ny

    def gather(attr: str) -> np.ndarray:  # [k, channels]
        m = maps[attr]
        return m.reshape(m.shape[0], -1)[:, ind].T

    reg, hei, dim, rot = gather("reg"), gather("height"), gather("dim"), gather("rot")
    vel = gather("vel") if "vel" in maps else np.zeros((len(ind), 2), F32)
    osf, vs, pc = F32(coder.out_size_factor), coder.voxel_size, coder.pc_range
    x = (xs.astype(F32) + reg[:, 0]) * osf * F32(vs[0]) + F32(pc[0])
    y = (ys.astype(F32) + reg[:, 1]) * osf * F32(vs[1]) + F32(pc[1])
    yaw = np.arctan2(rot[:, 0], rot[:, 1])
    boxes = np.concatenate([x[:, None], y[:, None], hei[:, :1], np.exp(dim[:, :3]), yaw[:, None], vel[:, :2]],
                           axis=1).astype(F32)

    mask = _in_range(boxes[:, :3], coder.post_center_range)
    threshold = coder.get("score_threshold")
    if threshold:  # upstream: `if self.score_threshold:`
        mask &= scores > F32(threshold)
    dets = Detections(boxes[mask], scores[mask], cls[mask])

    nms_type = _per_task(test.get("nms_type"), task_index)
    if nms_type == "circle":
        keep = circle_nms(dets.boxes[:, :2], dets.scores, float(_per_task(test.min_radius, task_index)),
                          test.post_max_size)
        return dets.select(keep)
    if nms_type not in ("rotate", None):
        raise ValueError(f"task {task_index}: nms_type `{nms_type}` is not supported (circle or rotate)")
    return _rotate_task(dets, test, task_index, len(heat))


def _per_task(value, task_index: int):
    return value[task_index] if isinstance(value, (list, tuple)) else value


def _rotate_task(dets: Detections, test, task_index: int, num_classes: int) -> Detections:
    """`CenterHead.get_task_detections` for one sample."""
    threshold = float(test.get("score_threshold", 0.0) or 0.0)
    if threshold > 0.0:
        dets = dets.select(dets.scores >= F32(threshold))
    if not len(dets):
        return dets
    bev = dets.boxes[:, [0, 1, 3, 4, 6]].copy()
    scales = test.get("nms_scale")
    scales = _per_task(scales, task_index) if scales is not None else None
    if scales is not None:
        if not isinstance(scales, (list, tuple)):
            scales = [scales] * num_classes
        for c, scale in enumerate(scales):
            bev[dets.labels == c, 2:4] *= F32(scale)
    keep = rotate_nms(bev, dets.scores, test.nms_thr, test.get("pre_max_size"), test.get("post_max_size"))
    dets = dets.select(keep)
    limit = test.get("post_center_limit_range")
    if limit is not None and len(limit) > 0:
        dets = dets.select(_in_range(dets.boxes[:, :3], limit))
    return dets


def _to_bottom(dets: Detections) -> Detections:
    boxes = dets.boxes.copy()
    boxes[:, 2] = boxes[:, 2] - boxes[:, 5] * F32(0.5)
    return Detections(boxes, dets.scores, dets.labels)


def decode_tasks(task_outputs: Sequence[Mapping[str, np.ndarray]], recipe: "Recipe") -> Detections:
    """All tasks' detections from per-task {attribute: array} dicts: task order, labels offset, z = bottom."""
    parts: List[Detections] = []
    offset = 0
    # Untrained weights give log sizes past float32's exp range: infinite boxes, whose NMS arithmetic yields NaN, as
    # torch's would, silently (they lose every IoU comparison, as in upstream's kernel).
    with np.errstate(over="ignore", invalid="ignore"):
        for t, (outputs, names) in enumerate(zip(task_outputs, recipe.model.head.tasks)):
            d = decode_task(outputs, recipe, t)
            parts.append(Detections(d.boxes, d.scores, d.labels + offset))
            offset += len(names)
    return _to_bottom(Detections.concatenate(parts))


def decode(head_outputs: Mapping[str, np.ndarray], recipe: "Recipe", contract: "Contract") -> Detections:
    """Detections of one frame from the head tensors (name -> array), split into task attributes by the contract's
    head layout (one tensor per attribute, or channel slices of a packed tensor)."""
    tasks: List[Dict[str, np.ndarray]] = []
    for t, attributes in enumerate(contract.head_layout()):
        task = {}
        for attr, (name, start, stop) in attributes.items():
            if name not in head_outputs:
                raise KeyError(f"head output `{name}` (task {t} {attr}) missing; got {sorted(head_outputs)}")
            task[attr] = np.asarray(head_outputs[name])[:, start:stop]
        tasks.append(task)
    return decode_tasks(tasks, recipe)
