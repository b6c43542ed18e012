"""Parity: every exported graph, run through OpenVINO (CPU, f32), against the native PyTorch modules.

The references are the model's own eval-mode sub-networks, not the export wrappers: the camera feature is
compared in the NHWC memory layout the contract promises, and the PFE against the unfolded BN-Linear-BN forward
on the first `max_num_points` slots (what training's voxelizer kept).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from bevport.contract import GraphSpec
from bevport.models.synthetic import random_pillars
from bevport.models.v2xfusion import V2XFusion
from bevport.recipe import Recipe

DYNAMIC_V = 3000  # voxels fed to the dynamic-V PFE graph


def _pillar_inputs(recipe: Recipe, spec: GraphSpec, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Voxels as the deploy binary fills them: 100 slots (often > 10 points), trailing all-zero padding rows."""
    v, slots, _ = spec.inputs[0].concrete_shape(DYNAMIC_V)
    filled = int(v * 0.7)
    counts = np.where(rng.uniform(size=filled) < 0.3, rng.integers(11, slots + 1, filled), rng.integers(1, 11, filled))
    out = {}
    for t, part in zip(spec.inputs, random_pillars(recipe, rng, counts, slots)):
        out[t.name] = np.zeros((v,) + part.shape[1:], part.dtype)
        out[t.name][:filled] = part
    return out


def sample_inputs(key: str, spec: GraphSpec, recipe: Recipe, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if key in ("lidar_pfe", "lidar_pfe_static"):
        return _pillar_inputs(recipe, spec, rng)
    out = {}
    for t in spec.inputs:
        x = rng.normal(size=t.shape).astype(np.float32)
        # BEV maps and the decoder output come after ReLUs; the LiDAR BEV is mostly empty cells.
        if t.name in recipe.export.graphs.fuser.inputs or key == "head":
            x = np.maximum(x, 0)
        if t.name == recipe.export.graphs.fuser.inputs[1]:
            x *= rng.uniform(size=(1, 1) + t.shape[2:]) < 0.3
        out[t.name] = x
    return out


@torch.no_grad()
def torch_reference(key: str, model: V2XFusion, spec: GraphSpec, inputs: Dict[str, np.ndarray],
                    recipe: Recipe) -> List[np.ndarray]:
    x = [torch.from_numpy(inputs[t.name]) for t in spec.inputs]
    if key == "camera":
        feat, depth = model.camera_features(x[0])
        return [feat.permute(0, 2, 3, 1).contiguous().numpy().reshape(feat.shape), depth.numpy()]
    if key in ("lidar_pfe", "lidar_pfe_static"):
        keep = recipe.model.lidar.voxelize.max_num_points
        features, counts, coors = x
        return [model.pillar_features(features[:, :keep], counts.clamp(max=keep), coors).numpy()]
    if key == "fuser":
        return [model.decode_bev(*x).numpy()]
    if key == "head":
        tasks = model.head(x[0])
        return [tasks[t][attr].numpy() for t, attr in (o.role for o in spec.outputs)]
    raise KeyError(key)


def run_openvino(path: Path, spec: GraphSpec, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import openvino as ov

    core = ov.Core()
    # f32 explicitly: on AMX/AVX512-BF16 CPUs OpenVINO would otherwise run an FP32 model in bf16.
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled.infer_new_request({t.name: inputs[t.name] for t in spec.inputs})
    return [np.asarray(result[compiled.output(t.name)]) for t in spec.outputs]


def compare(spec: GraphSpec, reference: List[np.ndarray], actual: List[np.ndarray], tolerance: float) -> Dict:
    outputs = {}
    for t, ref, got in zip(spec.outputs, reference, actual):
        err = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        rel = err / scale if scale > 0 else err
        outputs[t.name] = {"max_abs_error": err, "max_rel_error": rel, "scale": scale,
                           "shape": list(got.shape), "passed": bool(rel <= tolerance)}
    return {"outputs": outputs, "passed": all(o["passed"] for o in outputs.values())}


def check_parity(key: str, path: Path, model: V2XFusion, spec: GraphSpec, recipe: Recipe, seed: int = 0) -> Dict:
    inputs = sample_inputs(key, spec, recipe, seed)
    reference = torch_reference(key, model, spec, inputs, recipe)
    report = compare(spec, reference, run_openvino(path, spec, inputs), recipe.export.parity_tolerance)
    report.update(file=spec.file, seed=seed, device="CPU", inference_precision="f32",
                  inputs={k: list(v.shape) for k, v in inputs.items()})
    return report
