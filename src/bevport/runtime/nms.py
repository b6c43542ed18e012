"""Non-maximum suppression with the training code's semantics (NumPy only).

Two suppressors, both greedy in descending score order and class-agnostic (the caller decides what one call sees):

* `circle_nms`: CenterPoint's centre-distance NMS. A box is dropped when its squared BEV centre distance to an already
  kept box is <= `thresh_sq` (the config's `min_radius` is already squared: 4 means 2 m).
* `rotate_nms`: rotated BEV-IoU NMS as mmdet3d's `nms_gpu` + the OpenPCDet-derived iou3d CUDA kernel compute it:
  keep the top `pre_max_size` by score, drop a box whose IoU with a kept box is > `thresh`, keep at most
  `post_max_size`.

`rotated_iou_bev` reproduces the kernel's geometry, including its quirk: boxes come as [x1, y1, x2, y2, yaw]
(`xywhr_to_xyxyr`), and the corners are rotated about the centre with x' = dx*cos + dy*sin, y' = -dx*sin + dy*cos,
i.e. by **-yaw**. The overlap polygon is built the way the kernel builds it (strict edge/edge crossings, corners inside
the other box with a 1e-5 margin, points sorted by angle around their mean, fan area) but for all box pairs at once,
in float32 like the kernel. IoU = overlap / max(area_a + area_b - overlap, 1e-8).

Ties: upstream orders by `numpy.argsort` (circle) or `torch.sort` (rotate), neither of which orders equal scores in a
defined way. Here equal scores keep their input order (a stable descending sort), so results are deterministic;
they can differ from upstream only where two boxes have bit-identical scores and interact.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

_EPS = np.float32(1e-8)
_MARGIN = np.float32(1e-5)
# Pairs whose circumscribed circles are farther apart than this cannot overlap (nor come within the kernel's 1e-5
# margin), so their IoU is exactly 0 and is not computed.
_DISJOINT_SLACK = 1e-3
_PAIRS_PER_CHUNK = 32768


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort `scores` from high to low; equal scores keep their input order."""
    return np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")


def circle_nms(xy: np.ndarray, scores: np.ndarray, thresh_sq: float, post_max_size: Optional[int] = None) -> np.ndarray:
    """Indices (into `xy`) of the boxes kept by centre-distance NMS, highest score first.

    xy: [N, 2] BEV centres; a box within squared distance `thresh_sq` (inclusive) of a kept box is suppressed.
    """
    xy = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
    limit = len(xy) if post_max_size is None else int(post_max_size)
    order = descending_order(scores)
    pts = xy[order]
    thresh = np.float32(thresh_sq)
    radius = np.full(len(pts), 0.5 * np.sqrt(max(float(thresh_sq), 0.0)) + _DISJOINT_SLACK)
    first, second = _near_pairs(pts.astype(np.float64), radius)
    d = pts[first] - pts[second]
    close = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] <= thresh      # float32, as upstream's numba loop
    return order[_greedy(len(order), first[close], second[close], limit)]


def xywhr_to_xyxyr(boxes: np.ndarray) -> np.ndarray:
    """[x, y, w, h, r] -> [x - w/2, y - h/2, x + w/2, y + h/2, r] (mmdet3d `xywhr2xyxyr`), float32."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    half_w, half_h = b[:, 2] / np.float32(2), b[:, 3] / np.float32(2)
    return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h, b[:, 4]], axis=1)


def _corners(b: np.ndarray):
    """Kernel corners of [P, 5] xyxyr boxes: x, y arrays [P, 5] (corner 4 repeats corner 0), and the centres."""
    x1, y1, x2, y2, ang = (b[:, k] for k in range(5))
    cx, cy = (x1 + x2) / np.float32(2), (y1 + y2) / np.float32(2)
    px = np.stack([x1, x2, x2, x1], axis=1) - cx[:, None]
    py = np.stack([y1, y1, y2, y2], axis=1) - cy[:, None]
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    rx = px * c + py * s + cx[:, None]                           # rotation by -yaw (kernel's rotate_around_center)
    ry = -px * s + py * c + cy[:, None]
    return np.concatenate([rx, rx[:, :1]], axis=1), np.concatenate([ry, ry[:, :1]], axis=1), cx, cy


def _inside(b: np.ndarray, cx: np.ndarray, cy: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Kernel `check_in_box2d`: points [P, 4] inside the xyxyr boxes [P, 5] (1e-5 margin, strict)."""
    c, s = np.cos(-b[:, 4])[:, None], np.sin(-b[:, 4])[:, None]
    dx, dy = px - cx[:, None], py - cy[:, None]
    rx = dx * c + dy * s + cx[:, None]
    ry = -dx * s + dy * c + cy[:, None]
    return ((rx > b[:, 0:1] - _MARGIN) & (rx < b[:, 2:3] + _MARGIN)
            & (ry > b[:, 1:2] - _MARGIN) & (ry < b[:, 3:4] + _MARGIN))


def _cross(ax, ay, bx, by, ox, oy):
    return (ax - ox) * (by - oy) - (bx - ox) * (ay - oy)


def _pair_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap area of aligned xyxyr box pairs a[i], b[i] ([P, 5] each), as the iou3d kernel's `box_overlap`."""
    ax, ay, acx, acy = _corners(a)
    bx, by, bcx, bcy = _corners(b)
    # Edge i of a (p0 -> p1) against edge j of b (q0 -> q1), all 16 at once: shapes [P, 4, 4].
    p0x, p0y = ax[:, :4, None], ay[:, :4, None]
    p1x, p1y = ax[:, 1:, None], ay[:, 1:, None]
    q0x, q0y = bx[:, None, :4], by[:, None, :4]
    q1x, q1y = bx[:, None, 1:], by[:, None, 1:]
    ok = ((np.minimum(p0x, p1x) <= np.maximum(q0x, q1x)) & (np.minimum(q0x, q1x) <= np.maximum(p0x, p1x))
          & (np.minimum(p0y, p1y) <= np.maximum(q0y, q1y)) & (np.minimum(q0y, q1y) <= np.maximum(p0y, p1y)))
    s1 = _cross(q0x, q0y, p1x, p1y, p0x, p0y)
    s2 = _cross(p1x, p1y, q1x, q1y, p0x, p0y)
    s3 = _cross(p0x, p0y, q1x, q1y, q0x, q0y)
    s4 = _cross(q1x, q1y, p1x, p1y, q0x, q0y)
    ok &= (s1 * s2 > 0) & (s3 * s4 > 0)
    s5 = _cross(q1x, q1y, p1x, p1y, p0x, p0y)
    den = s5 - s1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ix = (s5 * q0x - s1 * q1x) / den
        iy = (s5 * q0y - s1 * q1y) / den
        near_parallel = np.abs(den) <= _EPS
        if near_parallel.any():                                   # the kernel's line/line fallback
            a0, b0, c0 = p0y - p1y, p1x - p0x, p0x * p1y - p1x * p0y
            a1, b1, c1 = q0y - q1y, q1x - q0x, q0x * q1y - q1x * q0y
            d = a0 * b1 - a1 * b0
            ix = np.where(near_parallel, (b0 * c1 - b1 * c0) / d, ix)
            iy = np.where(near_parallel, (a1 * c0 - a0 * c1) / d, iy)
    n = len(a)
    # Corners inside the other box, interleaved as the kernel appends them (b's corner k, then a's corner k).
    b_in_a = _inside(a, acx, acy, bx[:, :4], by[:, :4])
    a_in_b = _inside(b, bcx, bcy, ax[:, :4], ay[:, :4])
    px = np.concatenate([ix.reshape(n, 16), np.stack([bx[:, :4], ax[:, :4]], axis=2).reshape(n, 8)], axis=1)
    py = np.concatenate([iy.reshape(n, 16), np.stack([by[:, :4], ay[:, :4]], axis=2).reshape(n, 8)], axis=1)
    valid = np.concatenate([ok.reshape(n, 16), np.stack([b_in_a, a_in_b], axis=2).reshape(n, 8)], axis=1)
    px = np.where(valid, px, np.float32(0))
    py = np.where(valid, py, np.float32(0))
    cnt = valid.sum(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = px.sum(axis=1) / cnt
        my = py.sum(axis=1) / cnt
        ang = np.arctan2(py - my[:, None], px - mx[:, None])
    ang = np.where(valid, ang, np.float32(np.inf))               # invalid points sort last
    order = np.argsort(ang, axis=1, kind="stable")               # the kernel's bubble sort is stable too
    sx = np.take_along_axis(px, order, axis=1)
    sy = np.take_along_axis(py, order, axis=1)
    svalid = np.take_along_axis(valid, order, axis=1)
    # Fan from the first point; trailing invalid points collapse onto it and add nothing.
    vx = np.where(svalid, sx - sx[:, :1], np.float32(0))
    vy = np.where(svalid, sy - sy[:, :1], np.float32(0))
    area = (vx[:, :-1] * vy[:, 1:] - vy[:, :-1] * vx[:, 1:]).sum(axis=1)
    return np.abs(area) / np.float32(2)


def _circumradius(b: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    sb = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    ov = _chunked_overlap(a, b)
    return ov / np.maximum(sa + sb - ov, _EPS)


def _centres_radii(b: np.ndarray):
    centres = ((b[:, :2] + b[:, 2:4]) / np.float32(2)).astype(np.float64)
    return centres, _circumradius(b).astype(np.float64)


def _maybe_overlapping(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] mask of pairs whose circumscribed circles meet (all others have overlap exactly 0)."""
    (ca, ra), (cb, rb) = _centres_radii(a), _centres_radii(b)
    dx = ca[:, 0:1] - cb[:, 0]
    dy = ca[:, 1:2] - cb[:, 1]
    reach = ra[:, None] + rb + _DISJOINT_SLACK
    return dx * dx + dy * dy <= reach * reach


def _near_pairs(c: np.ndarray, r: np.ndarray):
    """Pairs (i < j) of discs (centres c [N, 2], radii r [N], float64) that meet, sorted by i then j.

    A sweep along x: only discs within reach in x are tested, so the cost grows with the number of close pairs,
    not with N^2 (boxes are small next to the BEV grid).
    """
    n = len(c)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty
    o = np.argsort(c[:, 0], kind="stable")
    xs = c[o, 0]
    upto = np.searchsorted(xs, xs + r[o] + r.max(), side="right")
    counts = np.maximum(upto - np.arange(1, n + 1), 0)
    total = int(counts.sum())
    if total == 0:
        return empty, empty
    first = np.repeat(np.arange(n), counts)
    second = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + first + 1
    p, q = o[first], o[second]
    d = c[p] - c[q]
    reach = r[p] + r[q]
    close = (d * d).sum(axis=1) <= reach * reach
    i, j = np.minimum(p, q)[close], np.maximum(p, q)[close]
    s = np.lexsort((j, i))
    return i[s], j[s]


def _greedy(n: int, first: np.ndarray, second: np.ndarray, limit: int) -> np.ndarray:
    """Greedy NMS over positions 0..n-1 (best first): a kept `first[k]` suppresses `second[k]` (first < second,
    pairs sorted by first). Returns the positions kept, at most `limit`."""
    starts = np.searchsorted(first, np.arange(n + 1))
    alive = np.ones(n, dtype=bool)
    keep = []
    for i in range(n):
        if len(keep) >= limit:
            break
        if alive[i]:
            keep.append(i)
            alive[second[starts[i]:starts[i + 1]]] = False
    return np.asarray(keep, dtype=np.int64)


def _all_pairs(a: np.ndarray, b: np.ndarray, pair_fn) -> np.ndarray:
    """[N, M] of pair_fn over every (a[i], b[j]); pairs whose circumscribed circles do not meet are 0."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 5)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 5)
    out = np.zeros((len(a), len(b)), dtype=np.float32)
    if len(a) == 0 or len(b) == 0:
        return out
    ia, ib = np.nonzero(_maybe_overlapping(a, b))
    if len(ia):
        out[ia, ib] = pair_fn(a[ia], b[ib])
    return out


def _chunked_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([_pair_overlap(a[s:s + _PAIRS_PER_CHUNK], b[s:s + _PAIRS_PER_CHUNK])
                           for s in range(0, len(a), _PAIRS_PER_CHUNK)])


def rotated_iou_bev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] BEV IoU of boxes a [N, 5] and b [M, 5], both [x1, y1, x2, y2, yaw] (iou3d kernel geometry)."""
    return _all_pairs(a, b, _pair_iou)


def rotated_overlap_bev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] BEV overlap areas of xyxyr boxes (the kernel's `boxes_overlap_bev`)."""
    return _all_pairs(a, b, _chunked_overlap)


def rotate_nms(boxes_xywhr: np.ndarray, scores: np.ndarray, thresh: float, pre_max_size: Optional[int] = None,
               post_max_size: Optional[int] = None) -> np.ndarray:
    """Indices (into `boxes_xywhr`) kept by rotated BEV-IoU NMS, highest score first (mmdet3d `nms_gpu`).

    boxes_xywhr: [N, 5] = [x, y, dx, dy, yaw]. A box is suppressed when its IoU with a kept box is > `thresh`.
    Like the kernel, the IoU of every (higher, lower)-score pair is computed first (here only for pairs whose
    circumscribed circles meet, in one vectorised call); the greedy pass then only reads the suppression matrix.
    """
    order = descending_order(scores)
    if pre_max_size is not None:
        order = order[:int(pre_max_size)]
    boxes = xywhr_to_xyxyr(boxes_xywhr)[order]
    limit = len(order) if post_max_size is None else int(post_max_size)
    c, r = _centres_radii(boxes)
    first, second = _near_pairs(c, r + _DISJOINT_SLACK / 2)        # first < second: first scores higher
    if len(first):
        # iou_bev(higher, lower), the argument order of the kernel's nms mask
        over = _pair_iou(boxes[first], boxes[second]) > np.float32(thresh)
        first, second = first[over], second[over]
    return order[_greedy(len(order), first, second, limit)]
