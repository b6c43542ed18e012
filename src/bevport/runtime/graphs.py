"""Read, check and compile deploy graphs with OpenVINO, whether ONNX files or IRs.

Every graph is checked against the recipe's contract before use: the deploy binary binds the PFE and head tensors
by exact name, so a port that lost or gained a name (onnxsim, NNCF) is as wrong as a wrong shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from bevport.contract import GraphSpec
from bevport.errors import GraphError
from bevport.runtime.precision import compile_config

_OV_TYPES = {"float32": "f32", "int32": "i32"}


def read_graph(core, path: Path, spec: GraphSpec):
    """An ov.Model read from `path` (.onnx or .xml) whose ports match `spec`."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: graph file not found")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise GraphError(f"{path}: the weights file {path.with_suffix('.bin').name} beside it is missing")
    try:
        model = core.read_model(str(path))
    except RuntimeError as exc:
        raise GraphError(f"{path}: OpenVINO cannot read it ({str(exc).splitlines()[0]})") from None
    check_ports(model, spec, path)
    return model


def check_ports(model, spec: GraphSpec, path: Path) -> None:
    """Each port carries exactly the contract's name, a compatible shape and the contract's element type."""
    for kind, ports, tensors in (("input", model.inputs, spec.inputs), ("output", model.outputs, spec.outputs)):
        if len(ports) != len(tensors):
            found = ", ".join(port.get_any_name() if port.get_names() else "?" for port in ports)
            raise GraphError(f"{path}: {len(ports)} {kind}s ({found}), the {spec.key} contract has {len(tensors)} "
                             f"({', '.join(t.name for t in tensors)})",
                             "is this file another graph, or from another recipe?")
        for port, t in zip(ports, tensors):
            names = set(port.get_names())
            if names != {t.name}:
                raise GraphError(f"{path}: {kind} port names {sorted(names)} where the contract (and the deploy "
                                 f"binary) binds `{t.name}`")
            shape = port.get_partial_shape()
            expected = [d if isinstance(d, int) else -1 for d in t.shape]
            got = [d.get_length() if d.is_static else -1 for d in shape] if shape.rank.is_static else None
            if got is None or len(got) != len(expected) or any(e != -1 and g != e for e, g in zip(expected, got)):
                raise GraphError(f"{path}: {kind} `{t.name}` has shape {shape}, the contract says {list(t.shape)}",
                                 "was this graph exported from a different recipe or with another --config?")
            dtype = port.get_element_type().get_type_name()
            if dtype != _OV_TYPES[t.dtype]:
                raise GraphError(f"{path}: {kind} `{t.name}` is {dtype}, the contract says {t.dtype}")


def compile_graph(core, model, device: str = "CPU", precision: str = "f32", config: Optional[Dict] = None):
    """Compile with the inference precision `precision` asks for (see `bevport.runtime.precision.REQUESTS`): "f32",
    or "default" (the device's own, bf16 on AMX CPUs), where a graph pinned to f32 in its IR stays f32."""
    settings = compile_config(model, precision)
    settings.update(config or {})
    return core.compile_model(model, device, settings)


def infer(compiled, spec: GraphSpec, inputs: Dict) -> Dict:
    """One synchronous inference: named inputs in, the contract's outputs by name."""
    result = compiled.infer_new_request({t.name: inputs[t.name] for t in spec.inputs})
    return {t.name: result[compiled.output(t.name)] for t in spec.outputs}


def deploy_graphs(recipe) -> List[str]:
    """The graphs a frame passes through, by contract key: those the recipe quantizes for the deploy binary."""
    return list(recipe.quantize.graphs)


def source_graph(recipe, graph: str) -> str:
    """The export graph a deploy graph is quantized from (`quantize.graphs.<graph>.source`, default itself)."""
    return recipe.quantize.graphs[graph].get("source", graph)


def model_folder(recipe, bundle: Path) -> Path:
    """The folder holding the graphs: `bundle` itself, or its deploy tree (`runtime.model_dir`) in a release bundle."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise GraphError(f"{bundle}: bundle folder not found", "pass the output of `bevport quantize` or a release bundle")
    nested = bundle / recipe.runtime.model_dir
    return nested if nested.is_dir() else bundle


def fp32_candidates(contract, graph: str, folder: Path) -> List[Path]:
    """The FP32 files of a deploy graph: the exported ONNX (what the deploy binary loads), else its FP32 IR."""
    onnx = folder / contract[graph].file
    return [onnx, onnx.with_suffix(".xml")]


def resolve_graphs(recipe, contract, bundle: Path, int8: Dict[str, bool], warn) -> Dict[str, Path]:
    """The file per deploy graph for the requested precisions. A missing INT8 IR is an error, except where the
    recipe gives the deploy binary's fallback (`quantize.graphs.<graph>.fp32_fallback`)."""
    folder = model_folder(recipe, bundle)
    files = {}
    for graph in deploy_graphs(recipe):
        candidates = fp32_candidates(contract, graph, folder)
        fp32 = next((p for p in candidates if p.is_file()), None)
        if int8.get(graph):
            settings = recipe.quantize.graphs[graph]
            quantized = folder / f"{settings.ir}.xml"
            if quantized.is_file():
                files[graph] = quantized
                continue
            if not settings.get("fp32_fallback", False):
                raise GraphError(f"{folder}: {quantized.name} is missing; {graph} has no FP32 fallback "
                                 "(as in the deploy binary)",
                                 f"produce it with `bevport quantize`, or run with --fp32 / without {graph} in "
                                 "--int8-graphs")
            if fp32 is not None:
                warn(f"{quantized.name} not in {folder}: {graph} falls back to FP32 {fp32.name}, "
                     "as the deploy binary does")
        if fp32 is None:
            names = " or ".join(p.name for p in candidates)
            raise GraphError(f"{folder}: the FP32 {graph} graph ({names}) is missing",
                             "copy it from the `bevport export` output (or its FP32 IR from `bevport quantize`)")
        files[graph] = fp32
    return files


def check_device(core, device: str) -> None:
    """`device` (CPU, GPU, GPU.1, AUTO, AUTO:GPU,CPU ...) names devices OpenVINO sees here."""
    available = core.available_devices
    wanted = device.split(":", 1)[1].split(",") if ":" in device else [device]
    if device.startswith(("AUTO", "MULTI", "HETERO")) and ":" not in device:
        return
    missing = [d for d in wanted if d not in available and not any(a.startswith(d + ".") for a in available)]
    if missing:
        raise GraphError(f"OpenVINO does not see device {', '.join(missing)} on this host; it sees: "
                         f"{', '.join(available) or 'none'}",
                         "for an Intel GPU, the compute runtime (OpenCL ICD / Level Zero) must be installed and "
                         "/dev/dri readable by this user (render group); `invoke doctor` checks both")
