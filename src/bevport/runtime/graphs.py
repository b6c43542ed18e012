"""Read, check and compile deploy graphs with OpenVINO, whether ONNX files or IRs.

Every graph is checked against the recipe's contract before use: the deploy binary binds the PFE and head tensors
by exact name, so a port that lost or gained a name (onnxsim, NNCF) is as wrong as a wrong shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from bevport.contract import GraphSpec
from bevport.errors import GraphError

# INFERENCE_PRECISION_HINT per precision name. "default" is what a deployment gets: on CPUs with AMX or AVX512-BF16
# OpenVINO runs FP32 IRs in bf16. "f32" forces full precision, which every parity and drift reference uses.
PRECISION_HINTS = {"default": {}, "f32": {"INFERENCE_PRECISION_HINT": "f32"}}
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
            raise GraphError(f"{path}: {len(ports)} {kind}s, the {spec.key} contract has {len(tensors)} "
                             f"({', '.join(t.name for t in tensors)})")
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
    settings = dict(PRECISION_HINTS[precision])
    settings.update(config or {})
    return core.compile_model(model, device, settings)


def infer(compiled, spec: GraphSpec, inputs: Dict) -> Dict:
    """One synchronous inference: named inputs in, the contract's outputs by name."""
    result = compiled.infer_new_request({t.name: inputs[t.name] for t in spec.inputs})
    return {t.name: result[compiled.output(t.name)] for t in spec.outputs}
