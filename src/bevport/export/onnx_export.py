"""`bevport export`: checkpoint -> the deploy graphs as ONNX (opset 13, onnxsim), contract-checked, with parity.json.

Everything is written into a temporary folder that replaces `--out` only when every graph passed its checks.
"""
from __future__ import annotations

import inspect
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

from bevport import __version__
from bevport.checkpoint import load_weights
from bevport.contract import Contract, GraphSpec, build_contract
from bevport.errors import BevportError
from bevport.export.parity import check_parity, float64_copy
from bevport.fsutil import atomic_output_dir, sha256_file
from bevport.models import architecture
from bevport.recipe import Recipe

_ONNX_DTYPES = {"float32": 1, "int32": 6, "int64": 7}


class ExportError(BevportError):
    pass


def _onnx_export(module: torch.nn.Module, args, spec: GraphSpec, path: Path, opset: int) -> None:
    dynamic_axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                    for t in spec.inputs + spec.outputs if not t.is_static}
    kwargs = dict(input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                  opset_version=opset, do_constant_folding=True, dynamic_axes=dynamic_axes or None)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.9 defaults to the dynamo exporter; the TorchScript one matches 1.11
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape math are expected
        torch.onnx.export(module, args, str(path), **kwargs)


def explicit_squeeze_axes(model):
    """Give every axis-less Squeeze the axes its input's static size-1 dimensions name. `x.squeeze()` (training code
    does it: PillarFeatureNet's output) traces to a Squeeze whose output rank depends on the input's dynamic
    dimensions, which OpenVINO's CPU plugin refuses; a dynamic dimension (the voxel count) is never squeezed."""
    import onnx
    from onnx import numpy_helper

    squeezes = [n for n in model.graph.node if n.op_type == "Squeeze" and len(n.input) == 1]
    dynamic = any(d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim)
    if not squeezes or not dynamic:      # in a static graph onnxsim folds every shape, these Squeezes included
        return model
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: v.type.tensor_type.shape for v in list(inferred.value_info) + list(inferred.input)}
    for i, node in enumerate(squeezes):
        shape = shapes.get(node.input[0])
        if shape is None or not len(shape.dim):
            continue
        axes = [k for k, d in enumerate(shape.dim) if d.HasField("dim_value") and d.dim_value == 1]
        name = f"{node.name or 'squeeze'}_axes_{i}"
        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        node.input.append(name)
    return model


def _static_outputs(model, spec: GraphSpec):
    """Declared output shapes where the tracer left them symbolic: what ONNX inference gives, else the contract's
    static sizes. Nothing is taken on trust: OpenVINO propagates the static input shapes through the graph when
    `verify_contract` reads it, and parity compares the arrays."""
    inferred = {v.name: v for v in model.graph.value_info}
    for out in model.graph.output:
        if out.name in inferred:
            out.type.tensor_type.shape.CopyFrom(inferred[out.name].type.tensor_type.shape)
        want = spec.output(out.name).shape
        for dim, size in zip(out.type.tensor_type.shape.dim, want):
            if dim.dim_param and isinstance(size, int):
                dim.dim_value = size
    return model


def _simplify(path: Path, spec: GraphSpec) -> None:
    import onnx
    import onnxsim

    model = explicit_squeeze_axes(onnx.load(str(path)))
    try:
        simplified, ok = onnxsim.simplify(model)
    except onnx.shape_inference.InferenceError:
        # onnxsim's shape inference over its own constant-folded graph can trip on shapes a tracer recorded from
        # Python ints (mmdet's Swin-T, traced by torch 1.11); the graph itself is valid (strict ONNX inference
        # passes), so fold constants without onnxsim's inference pass.
        simplified, ok = onnxsim.simplify(model, skip_shape_inference=True)
        simplified = _static_outputs(onnx.shape_inference.infer_shapes(simplified), spec)
    if not ok:
        raise ExportError(f"{spec.file}: onnxsim could not validate the simplified graph")
    onnx.save(simplified, str(path))


def _onnx_ports(path: Path):
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    ports = []
    for kind, values in (("input", [v for v in graph.input if v.name not in initializers]), ("output", graph.output)):
        for v in values:
            tt = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim)
            ports.append((kind, v.name, dims, tt.elem_type))
    return ports


def verify_contract(path: Path, spec: GraphSpec) -> None:
    """The ONNX file's ports, and OpenVINO's view of them, carry exactly the contract's names, shapes and dtypes."""
    expected = [("input", t.name, t.shape, _ONNX_DTYPES[t.dtype]) for t in spec.inputs] + \
               [("output", t.name, t.shape, _ONNX_DTYPES[t.dtype]) for t in spec.outputs]
    actual = _onnx_ports(path)
    for exp, got in zip(expected, actual):
        static_match = all(isinstance(e, str) and isinstance(g, str) or e == g for e, g in zip(exp[2], got[2]))
        if exp[:2] != got[:2] or len(exp[2]) != len(got[2]) or not static_match or exp[3] != got[3]:
            raise ExportError(f"{spec.file}: {exp[0]} `{exp[1]}` {list(exp[2])} (dtype {exp[3]}) expected, "
                              f"graph has {got[0]} `{got[1]}` {list(got[2])} (dtype {got[3]})")
    if len(expected) != len(actual):
        raise ExportError(f"{spec.file}: {len(actual)} ports, the contract has {len(expected)}")
    _verify_openvino_names(path, spec)


def _verify_openvino_names(path: Path, spec: GraphSpec) -> None:
    import openvino as ov

    from bevport.runtime.graphs import check_ports

    check_ports(ov.Core().read_model(str(path)), spec, path)


def export_graphs(arch, model, recipe: Recipe, contract: Contract, folder: Path,
                  progress: Callable[[str], None]) -> Dict[str, Dict]:
    """Export, simplify and verify every graph of the architecture into `folder`; returns the parity report per
    graph."""
    parity: Dict[str, Dict] = {}
    model64 = float64_copy(model)
    for key, module in arch.export_modules(model, recipe, contract).items():
        spec = contract[key]
        path = folder / spec.file
        progress(f"exporting {spec.file}")
        if hasattr(module, "SerializeToString"):      # an ONNX model written directly: nothing to trace
            import onnx

            onnx.save(module, str(path))
        else:
            example = arch.sample_inputs(recipe, spec, seed=1)
            with torch.no_grad():
                _onnx_export(module.eval(), tuple(torch.from_numpy(example[t.name]) for t in spec.inputs), spec,
                             path, recipe.export.opset)
            _simplify(path, spec)
        verify_contract(path, spec)
        progress(f"checking {spec.file} against PyTorch (float32 and float64) in OpenVINO")
        parity[key] = check_parity(arch, path, model, model64, spec, recipe)
    return parity


def _environment() -> Dict[str, str]:
    import onnx
    import onnxsim
    import openvino

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxsim": getattr(onnxsim, "__version__", "unknown"), "openvino": openvino.__version__,
            "numpy": np.__version__, "bevport": __version__}


def export(recipe: Recipe, ckpt: os.PathLike, out: os.PathLike, sparsity: bool = False,
           progress: Callable[[str], None] = lambda msg: None,
           warn: Callable[[str], None] = lambda msg: None, reference=None) -> Dict:
    """The whole export step. Returns the summary also written to `<out>/export.json`.

    `reference` (a `bevport.reference.LoadedReference`) exports the training tree's own modules instead of bevport's
    native model (`--backend reference`): same contract, parity of each graph against its own PyTorch module."""
    contract = build_contract(recipe)
    if reference is None:
        arch, model = architecture(recipe), architecture(recipe).build(recipe)
        progress(f"loading {ckpt}")
        load_weights(model, ckpt, sparsity=sparsity, warn=warn)
        backend = {"name": "native", "model": f"bevport.models.{recipe.architecture}"}
    else:
        arch, model = reference.arch, reference.model
        backend = {"name": "reference", "model": "the training tree's modules",
                   "native_parity": "skipped: the graphs are the training tree's own modules", **reference.describe()}
    with atomic_output_dir(out) as tmp:
        parity = export_graphs(arch, model, recipe, contract, tmp, progress)
        failed = [f"{contract[k].file}:{name} (rel. error {o['max_rel_error']:.2e} > bound {o['bound']:.2e}, "
                  f"PyTorch float32's own {o['torch_f32_rel_error']:.2e})"
                  for k, r in parity.items() for name, o in r["outputs"].items() if not o["passed"]]
        gate = recipe.export.parity
        (tmp / "parity.json").write_text(json.dumps({"reference": f"the {backend['name']} module in float64",
                                                     "factor": gate.factor, "floor": gate.floor,
                                                     "passed": not failed, "graphs": parity}, indent=2) + "\n")
        if failed:
            raise ExportError(f"parity check failed (OpenVINO vs a float64 run of the PyTorch module above "
                              f"{gate.factor:g} x PyTorch float32's own error + {gate.floor:g}): " + ", ".join(failed),
                              "this is a bevport bug; please report it with parity.json")
        summary = {
            "recipe": recipe.name,
            "recipe_origin": recipe._origin,
            "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
            "sparsity": sparsity,
            "backend": backend,
            "contract": contract_summary(contract),
            "files": {spec.file: sha256_file(tmp / spec.file) for spec in contract},
            "artifacts": write_artifacts(arch, model, tmp),
            "environment": _environment(),
        }
        (tmp / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_artifacts(arch, model, folder: Path) -> Dict[str, str]:
    """The arrays an architecture's runtime needs beside its graphs (`export_artifacts`, e.g. the camera-only
    recipe's frustum), as `<name>.npy` in `folder`; {file: sha256}."""
    out = {}
    for name, array in (getattr(arch, "export_artifacts", lambda m: {})(model)).items():
        path = folder / f"{name}.npy"
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        out[path.name] = sha256_file(path)
    return out


def contract_summary(contract: Contract) -> Dict[str, Dict]:
    port = lambda t: {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}  # noqa: E731
    return {spec.key: {"file": spec.file, "inputs": [port(t) for t in spec.inputs],
                       "outputs": [port(t) for t in spec.outputs]} for spec in contract}
