"""Per-graph inference precision: recorded in the IR, enforced at compile time, and the CPU's ISA for reports.

On CPUs with AVX512-BF16 (Cooper Lake, Sapphire Rapids and later with AMX, AMD Zen 4 and later) OpenVINO's CPU
plugin compiles an FP32 graph in bf16 unless INFERENCE_PRECISION_HINT is passed to compile_model. bf16 keeps 8
mantissa bits; a graph NNCF left FP32 (the PFE, whose x reaches 102 m) loses ~10 dB SNR that way, so such a graph
is pinned to f32.

The pin is written to the IR as `<rt_info><runtime_options><INFERENCE_PRECISION_HINT value="f32"/>`. OpenVINO
itself does NOT apply that key: the CPU plugin's Config::applyRtInfo reads only KV_CACHE_PRECISION,
KEY/VALUE_CACHE_PRECISION, KEY/VALUE_CACHE_GROUP_SIZE and DYNAMIC_QUANTIZATION_GROUP_SIZE from runtime_options
(OpenVINO 2026.4), and none at all in 2024.4; INFERENCE_PRECISION_HINT, EXECUTION_MODE_HINT, NUM_STREAMS and
PERFORMANCE_HINT in runtime_options are ignored by both. The pin is therefore a record that every loader must turn
into an explicit compile_model config: `compile_config` here, and the same three lines in the C++ deploy binary
(read runtime_options from the model's rt_info and pass them to compile_model).

NumPy/OpenVINO only, Python 3.8.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Dict, List, Optional

HINT = "INFERENCE_PRECISION_HINT"
PIN_PATH = ["runtime_options", HINT]

# What a caller may ask `compile_config` for.
#   "default"    the device's default precision, except that a graph pinned in its IR gets its pin. What deployment
#                and every bevport output use: a pinned graph never runs in bf16.
#   "f32"        f32 for every graph: parity and drift references.
#   "ignore-pin" the device default even for pinned graphs, i.e. what a loader unaware of the pin would run. Only for
#                measuring what the pin protects against (bf16 drift in a report); never for outputs.
REQUESTS = ("default", "f32", "ignore-pin")

# /proc/cpuinfo flags that decide which kernels oneDNN (under OpenVINO's CPU plugin) can use, best first.
ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512_vnni",
             "avx512f", "avx_vnni", "avx2")
# The best tier a CPU reaches, for a one-word summary in benchmark JSONs: the first whose flags are all present.
ISA_TIERS = (("amx", ("amx_tile", "amx_bf16", "amx_int8")), ("avx512_bf16", ("avx512_bf16",)),
             ("avx512_vnni", ("avx512_vnni",)), ("avx512", ("avx512f",)), ("avx2_vnni", ("avx_vnni", "avx2")),
             ("avx2", ("avx2",)))


def pin_f32(model) -> None:
    """Record in `model`'s rt_info that it must be compiled with INFERENCE_PRECISION_HINT=f32.

    Call it on the ov.Model that is about to be saved (after nncf.quantize, which returns a new model). The pin
    becomes one `<runtime_options>` block at the end of the .xml; the .bin and the rest of the .xml are unchanged,
    and the bytes are the same on every save.
    """
    model.set_rt_info("f32", PIN_PATH)


def pinned_hint(model) -> Optional[str]:
    """The INFERENCE_PRECISION_HINT recorded in `model`'s rt_info ("f32"), or None when the graph has no pin."""
    if not model.has_rt_info(PIN_PATH):
        return None
    return str(model.get_rt_info(PIN_PATH).astype(str))


def compile_config(model, requested: str = "default") -> Dict[str, str]:
    """The compile_model config for `model` when the caller asks for `requested` (one of REQUESTS).

    The pin has to be passed explicitly: OpenVINO does not apply INFERENCE_PRECISION_HINT from rt_info. An empty
    config is the only portable way to get the device default: "undefined"/"dynamic" are not "default" but "keep
    every op's own precision", and 2024.4 rejects "dynamic".
    """
    if requested not in REQUESTS:
        raise ValueError(f"inference precision {requested!r}: expected one of {', '.join(REQUESTS)}")
    if requested == "f32":
        return {HINT: "f32"}
    pin = pinned_hint(model) if requested == "default" else None
    return {HINT: pin} if pin else {}


def compiled_precision(compiled) -> str:
    """The precision a compiled model really runs its floating-point ops in ("f32", "bf16", "f16")."""
    return _type_name(compiled.get_property(HINT))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[Dict[str, bool]]:
    """Which of ISA_FLAGS the kernel reports for the first CPU, or None where /proc/cpuinfo is unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            present = set(line.split(":", 1)[1].split())
            return {flag: flag in present for flag in ISA_FLAGS}
    return None


def isa_tier(flags: Optional[Dict[str, bool]]) -> Optional[str]:
    """The best ISA tier in ISA_TIERS the flags reach ("amx" ... "avx2", "other"), None if flags are unknown."""
    if flags is None:
        return None
    for tier, needed in ISA_TIERS:
        if all(flags.get(flag) for flag in needed):
            return tier
    return "other"


def default_precision(core, device: str = "CPU") -> str:
    """The precision `device` compiles an FP32 graph in with no config: "bf16" on AVX512-BF16/AMX CPUs, else "f32".

    Measured by compiling a one-op graph, because core.get_property(device, INFERENCE_PRECISION_HINT) reports the
    plugin's construction-time value (f32) until something calls core.set_property; the bf16 default is only chosen
    when a config is read, which compile_model always does.
    """
    return compiled_precision(core.compile_model(_probe_model(), device, {}))


def cpu_isa(core) -> Dict:
    """CPU and OpenVINO facts for a benchmark JSON: model name, ISA flags and tier, and the default precision.

    `bf16_capable` is OpenVINO's own answer (BF16 in OPTIMIZATION_CAPABILITIES: AVX512-BF16 or AVX2-VNNI-2);
    `default_inference_precision` is what an unpinned FP32 graph actually runs in; `core_inference_precision_hint`
    is what core.get_property says, kept to show it may disagree.
    """
    import openvino as ov

    capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    flags = cpu_flags()
    return {
        "cpu_model": str(core.get_property("CPU", "FULL_DEVICE_NAME")).strip() or platform.processor(),
        "openvino": ov.get_version(),
        "isa": isa_tier(flags),
        "flags": flags,
        "optimization_capabilities": capabilities,
        "bf16_capable": "BF16" in capabilities,
        "default_inference_precision": default_precision(core, "CPU"),
        "core_inference_precision_hint": _type_name(core.get_property("CPU", HINT)),
    }


def _type_name(value) -> str:
    """"f32" for an ov.Type (what get_property returns) or a string."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _probe_model():
    """A one-op FP32 graph (x + x) to read a device's compile-time defaults from."""
    import numpy as np
    import openvino as ov
    try:
        from openvino import opset13 as ops
    except ImportError:             # OpenVINO 2024.x keeps the opsets under openvino.runtime
        from openvino.runtime import opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="x")
    return ov.Model([ops.add(x, x)], [x], "precision_probe")


__all__: List[str] = ["HINT", "PIN_PATH", "REQUESTS", "pin_f32", "pinned_hint", "compile_config",
                      "compiled_precision", "cpu_flags", "isa_tier", "default_precision", "cpu_isa"]
