"""Parity: every exported graph, run through OpenVINO (CPU, f32), against the native PyTorch modules.

The references are the architecture's own eval-mode modules (`bevport.models.<architecture>.reference_outputs`), not
the export wrappers. The gate scales with each graph: a float32 network cannot match any other float32 run better
than its own rounding allows, and that differs by orders of magnitude between a 9-channel linear layer and a
34-layer ResNet (and between CPUs: AMX hosts take other kernels). So each output's inherent float32 error is measured
(PyTorch float32 against a float64 run of the same module on the same inputs), and OpenVINO's error against that
float64 run may be at most `export.parity.factor` times it plus `export.parity.floor`, all relative to the output's
largest magnitude. A wrong op, layout or constant is off by orders of magnitude more.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List

import numpy as np

from bevport.contract import GraphSpec
from bevport.recipe import Recipe


def run_openvino(path: Path, spec: GraphSpec, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import openvino as ov

    core = ov.Core()
    # f32 explicitly: on AMX/AVX512-BF16 CPUs OpenVINO would otherwise run an FP32 model in bf16.
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled.infer_new_request({t.name: inputs[t.name] for t in spec.inputs})
    return [np.asarray(result[compiled.output(t.name)]) for t in spec.outputs]


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |reference - actual| / max |reference| (the absolute error where the reference is all zero)."""
    if not reference.size:
        return 0.0
    err = float(np.max(np.abs(reference.astype(np.float64) - actual.astype(np.float64))))
    scale = float(np.max(np.abs(reference)))
    return err / scale if scale > 0 else err


def compare(spec: GraphSpec, exact: List[np.ndarray], torch_f32: List[np.ndarray], openvino: List[np.ndarray],
            factor: float, floor: float) -> Dict:
    """Per output: OpenVINO's and PyTorch float32's relative errors against the float64 reference, and the bound."""
    outputs = {}
    for t, ref, ours, got in zip(spec.outputs, exact, torch_f32, openvino):
        inherent = relative_error(ref, ours)
        error = relative_error(ref, got)
        bound = factor * inherent + floor
        outputs[t.name] = {"max_rel_error": error, "torch_f32_rel_error": inherent, "bound": bound,
                           "vs_torch_f32_rel_error": relative_error(ours, got),
                           "max_abs_error": float(np.max(np.abs(ref - got.astype(np.float64)))) if ref.size else 0.0,
                           "scale": float(np.max(np.abs(ref))) if ref.size else 0.0,
                           "shape": list(got.shape), "passed": bool(error <= bound)}
    return {"outputs": outputs, "passed": all(o["passed"] for o in outputs.values())}


def check_parity(arch, path: Path, model, model64, spec: GraphSpec, recipe: Recipe, seed: int = 0) -> Dict:
    """Parity of one exported graph; `model64` is a float64 copy of `model` (see `float64_copy`)."""
    inputs = arch.sample_inputs(recipe, spec, seed)
    exact = [np.asarray(a, np.float64) for a in arch.reference_outputs(model64, recipe, spec, inputs)]
    torch_f32 = arch.reference_outputs(model, recipe, spec, inputs)
    p = recipe.export.parity
    report = compare(spec, exact, torch_f32, run_openvino(path, spec, inputs), float(p.factor), float(p.floor))
    report.update(file=spec.file, seed=seed, device="CPU", inference_precision="f32",
                  inputs={k: list(v.shape) for k, v in inputs.items()})
    return report


def float64_copy(model):
    return copy.deepcopy(model).double().eval()
