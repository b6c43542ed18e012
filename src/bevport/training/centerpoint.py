"""The CenterPoint objective of mmdet3d's CenterHead, on bevport's X-major BEV (heatmap[c, ix, iy]).

Targets per task: every box of the task's classes draws a Gaussian (CenterNet radius of its footprint in output
cells at `gaussian_overlap`, at least `min_radius`) on its class's heatmap at the integer centre cell, and writes at
that cell the 10 regression targets in the head's order (reg, height, dim, rot, vel):
(x - ix, y - iy, z_centre, log dx, log dy, log dz, sin yaw, cos yaw, vx, vy), which `bevport.runtime.decode` inverts.
Loss per task: Gaussian focal loss on the sigmoid heatmap over the positives' count, plus `bbox_loss_weight` x L1 on
the centre cells weighted by `code_weights`, over the object count.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

REGRESSION = ("reg", "height", "dim", "rot", "vel")   # SeparateHead's common heads, in target order
CODE_SIZE = 10


def gaussian_radius(length: float, width: float, min_overlap: float) -> float:
    """CenterNet's radius: the largest corner shift that keeps IoU >= min_overlap in its three cases."""
    def root(a: float, b: float, c: float) -> float:
        return (b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / 2

    area, side = length * width, length + width
    r1 = root(1.0, side, area * (1 - min_overlap) / (1 + min_overlap))
    r2 = root(4.0, 2 * side, (1 - min_overlap) * area)
    r3 = root(4 * min_overlap, -2 * min_overlap * side, (min_overlap - 1) * area)
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, ix: int, iy: int, radius: int) -> None:
    """Max-composite a Gaussian of sigma = (2r + 1) / 6 centred on heatmap[ix, iy] (clipped at the borders)."""
    sigma = (2 * radius + 1) / 6
    offsets = np.arange(-radius, radius + 1)
    g = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    nx, ny = heatmap.shape
    x0, x1 = max(ix - radius, 0), min(ix + radius + 1, nx)
    y0, y1 = max(iy - radius, 0), min(iy + radius + 1, ny)
    patch = g[x0 - ix + radius: x1 - ix + radius, y0 - iy + radius: y1 - iy + radius]
    np.maximum(heatmap[x0:x1, y0:y1], patch, out=heatmap[x0:x1, y0:y1])


class TargetGrid:
    """The head's output grid: cell size voxel_size * out_size_factor from pc_range's corner."""

    def __init__(self, recipe):
        coder = recipe.model.head.bbox_coder
        self.origin = np.array(coder.pc_range[:2], np.float64)
        self.cell = np.array(coder.voxel_size, np.float64) * coder.out_size_factor
        self.shape = tuple(int(round((coder.pc_range[3 + i] - coder.pc_range[i]) / self.cell[i])) for i in (0, 1))
        train = recipe.train
        self.overlap, self.min_radius = float(train.gaussian_overlap), int(train.min_radius)
        self.tasks = [list(t) for t in recipe.model.head.tasks]


def dense_targets(grid: TargetGrid, boxes: np.ndarray, labels: np.ndarray) -> List[Dict[str, np.ndarray]]:
    """Per task: heatmap [C, nx, ny], regression [10, nx, ny] and its mask [nx, ny] (1 on centre cells).

    boxes [N, 9]: (x, y, z_centre, dx, dy, dz, yaw, vx, vy) in the LiDAR frame; labels [N]: index into the flattened
    task classes (the recipe's class_names)."""
    out, first = [], 0
    for names in grid.tasks:
        heat = np.zeros((len(names),) + grid.shape, np.float32)
        reg = np.zeros((CODE_SIZE,) + grid.shape, np.float32)
        mask = np.zeros(grid.shape, np.float32)
        for box, label in zip(boxes, labels):
            c = int(label) - first
            if not 0 <= c < len(names):
                continue
            centre = (box[:2] - grid.origin) / grid.cell
            ix, iy = (int(v) for v in np.floor(centre))
            if not (0 <= ix < grid.shape[0] and 0 <= iy < grid.shape[1]):
                continue
            size = box[3:5] / grid.cell
            if size.min() <= 0:
                continue
            radius = max(grid.min_radius, int(gaussian_radius(size[1], size[0], grid.overlap)))
            draw_gaussian(heat[c], ix, iy, radius)
            reg[:, ix, iy] = [centre[0] - ix, centre[1] - iy, box[2], *np.log(box[3:6]),
                              math.sin(box[6]), math.cos(box[6]), box[7], box[8]]
            mask[ix, iy] = 1.0
        out.append({"heatmap": heat, "reg": reg, "mask": mask})
        first += len(names)
    return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """mmdet's GaussianFocalLoss on clamped sigmoid scores, summed over the batch and divided by the positives."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -(p.log() * (1 - p).pow(alpha) * pos)
    neg_loss = -((1 - p).log() * p.pow(alpha) * (1 - target).pow(gamma) * (1 - pos))
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def task_loss(pred: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], code_weights: torch.Tensor,
              train) -> Tuple[torch.Tensor, torch.Tensor]:
    """(heatmap loss, weighted box loss) of one task over a batch."""
    heat = focal_loss(pred["heatmap"], target["heatmap"], float(train.focal.alpha), float(train.focal.gamma))
    boxes = torch.cat([pred[name] for name in REGRESSION], dim=1)            # [B, 10, X, Y]
    mask = target["mask"].unsqueeze(1)                                       # [B, 1, X, Y]
    error = (boxes - target["reg"]).abs() * mask * code_weights.view(1, -1, 1, 1)
    box = error.sum() / (mask.sum() + 1e-4) * float(train.bbox_loss_weight)
    return heat, box


def collate(targets: Sequence[List[Dict[str, np.ndarray]]]) -> List[Dict[str, torch.Tensor]]:
    """Per-frame task targets -> per-task batched tensors."""
    return [{k: torch.from_numpy(np.stack([t[i][k] for t in targets])) for k in targets[0][i]}
            for i in range(len(targets[0]))]
