"""A head graph whose outputs encode chosen boxes: the inverse of CenterPoint decoding, as an OpenVINO IR.

It has the real head graph's ports (V2X: `head`, input `middle`, 12 outputs; camera-only: `decoder`, one packed
70-channel output), so it drops into a bundle in place of the head's INT8 IR, and whatever the rest of the pipeline
computes, the decoder must return the boxes planted here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

PEAK_LOGIT = 4.0          # sigmoid 0.982
BACKGROUND_LOGIT = -8.0


def head_spec(contract):
    """The graph whose outputs carry the head's task slices."""
    (spec,) = [s for s in contract if any(t.slices for t in s.outputs)]
    return spec


def encode(recipe, contract, boxes: Sequence[Tuple[float, ...]], labels: Sequence[int]) -> Dict[str, np.ndarray]:
    """Head outputs for boxes (x, y, z_center, dx, dy, dz, yaw) with global labels, one box per BEV cell."""
    coder = recipe.model.head.bbox_coder
    cell = coder.out_size_factor * coder.voxel_size[0]
    spec = head_spec(contract)
    out = {t.name: np.zeros(t.shape, np.float32) for t in spec.outputs}
    layout = contract.head_layout()        # per task: attribute -> (tensor, first channel, end channel)

    def channels(task, attr):
        name, start, stop = layout[task][attr]
        return out[name][0, start:stop]

    for task in range(len(layout)):
        channels(task, "heatmap")[:] = BACKGROUND_LOGIT
    first_label = np.cumsum([0] + [len(t) for t in recipe.model.head.tasks])
    for (x, y, z, dx, dy, dz, yaw), label in zip(boxes, labels):
        task = int(np.searchsorted(first_label, label, side="right") - 1)
        fx, fy = (x - coder.pc_range[0]) / cell, (y - coder.pc_range[1]) / cell
        row, col = int(np.floor(fx)), int(np.floor(fy))
        values = {"heatmap": None, "reg": (fx - row, fy - col), "height": (z,), "dim": np.log([dx, dy, dz]),
                  "rot": (np.sin(yaw), np.cos(yaw)), "vel": (0.0, 0.0)}
        channels(task, "heatmap")[label - first_label[task], row, col] = PEAK_LOGIT
        for attr, value in values.items():
            if value is not None:
                channels(task, attr)[:, row, col] = value
    return out


def write_head_ir(contract, outputs: Dict[str, np.ndarray], path: Path) -> None:
    """An IR: the head's input -> each planted tensor (+ 0 x sum(input), so the input stays connected)."""
    import openvino as ov
    from openvino import opset13 as ops

    spec = head_spec(contract)
    middle = ops.parameter(list(spec.inputs[0].shape), np.float32, name=spec.inputs[0].name)
    middle.output(0).get_tensor().set_names({spec.inputs[0].name})
    axes = np.arange(len(spec.inputs[0].shape))
    zero = ops.multiply(ops.reduce_sum(middle, axes, keep_dims=True), np.float32(0.0))
    results = []
    for t in spec.outputs:
        node = ops.add(ops.constant(outputs[t.name]), zero)
        node.output(0).get_tensor().set_names({t.name})
        results.append(ops.result(node))
    ov.save_model(ov.Model(results, [middle], "planted_head"), str(path), compress_to_fp16=False)
