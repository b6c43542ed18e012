"""bevport.runtime.precision: the f32 pin in the IR, the compile config it yields, and the CPU ISA report.

Tiny opset13 graphs, compiled on the CPU. Nothing asserts a bf16 default: where the answer depends on the host, the
expectation follows what cpu_isa reports.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
try:
    from openvino import opset13 as ops
except ImportError:                 # OpenVINO 2024.x
    from openvino.runtime import opset13 as ops

from bevport.runtime import precision  # noqa: E402

RUNTIME_OPTIONS = re.compile(r"\s*<runtime_options>.*?</runtime_options>", re.S)


def tiny_model(name: str = "tiny"):
    """x[1,8] @ W[8,4] -> relu: a FullyConnected on the CPU, like the PFE's linear layer. Names are fixed so that two
    builds serialize to the same bytes."""
    x = ops.parameter([1, 8], np.float32, name="x")
    w = ops.constant(np.arange(32, dtype=np.float32).reshape(8, 4) / 32)
    y = ops.relu(ops.matmul(x, w, False, False))
    model = ov.Model([y], [x], name)
    for index, op in enumerate(model.get_ordered_ops()):
        op.set_friendly_name(f"{op.get_type_name()}_{index}")
    model.output(0).get_tensor().set_names({"y"})
    return model


def save(model, path):
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="module")
def core():
    return ov.Core()


@pytest.fixture(scope="module")
def isa(core):
    return precision.cpu_isa(core)


@pytest.fixture()
def pinned_ir(tmp_path):
    model = tiny_model()
    precision.pin_f32(model)
    return save(model, tmp_path / "pinned.xml")


@pytest.fixture()
def plain_ir(tmp_path):
    return save(tiny_model(), tmp_path / "plain.xml")


def test_pin_is_written_to_the_xml_and_read_back(core, pinned_ir):
    text = pinned_ir.read_text()
    block = RUNTIME_OPTIONS.search(text)
    assert block, "no <runtime_options> in the saved IR"
    assert '<INFERENCE_PRECISION_HINT value="f32" />' in block.group(0)
    model = core.read_model(str(pinned_ir))
    assert precision.pinned_hint(model) == "f32"
    assert precision.compile_config(model, "default") == {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(model, "CPU", precision.compile_config(model, "default"))
    assert precision.compiled_precision(compiled) == "f32"


def test_unpinned_ir_is_unaffected(core, plain_ir, isa):
    assert "runtime_options" not in plain_ir.read_text()
    model = core.read_model(str(plain_ir))
    assert precision.pinned_hint(model) is None
    assert precision.compile_config(model, "default") == {}
    compiled = core.compile_model(model, "CPU", precision.compile_config(model, "default"))
    assert precision.compiled_precision(compiled) == isa["default_inference_precision"]


def test_requests(core, pinned_ir, plain_ir):
    pinned, plain = core.read_model(str(pinned_ir)), core.read_model(str(plain_ir))
    assert precision.compile_config(plain, "f32") == {"INFERENCE_PRECISION_HINT": "f32"}
    assert precision.compile_config(pinned, "f32") == {"INFERENCE_PRECISION_HINT": "f32"}
    assert precision.compile_config(pinned, "ignore-pin") == {}
    with pytest.raises(ValueError, match="bf16"):
        precision.compile_config(pinned, "bf16")


def test_pinned_graph_never_runs_below_f32_through_compile_config(core, pinned_ir, isa):
    """Without the explicit config a pinned graph runs at the device default (OpenVINO ignores the rt_info key);
    with compile_config it runs f32 on every host."""
    model = core.read_model(str(pinned_ir))
    bare = core.compile_model(model, "CPU", {})
    assert precision.compiled_precision(bare) == isa["default_inference_precision"]
    ignored = core.compile_model(model, "CPU", precision.compile_config(model, "ignore-pin"))
    assert precision.compiled_precision(ignored) == isa["default_inference_precision"]
    for requested in ("default", "f32"):
        compiled = core.compile_model(model, "CPU", precision.compile_config(model, requested))
        assert precision.compiled_precision(compiled) == "f32"


def test_explicit_config_beats_the_pin(core, pinned_ir, isa):
    """An explicit INFERENCE_PRECISION_HINT is what the plugin uses, pinned or not: bf16 where the CPU can."""
    model = core.read_model(str(pinned_ir))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    assert precision.compiled_precision(compiled) == ("bf16" if isa["bf16_capable"] else "f32")


def test_openvino_ignores_hint_keys_in_runtime_options(core, tmp_path):
    """The reason compile_config exists: the CPU plugin does not apply hint-type runtime_options from rt_info.

    EXECUTION_MODE_HINT stands in for INFERENCE_PRECISION_HINT, which cannot be told from the default on a host
    without bf16. DYNAMIC_QUANTIZATION_GROUP_SIZE, which the plugin does read from rt_info since 2025, shows the
    rt_info was seen.
    """
    model = tiny_model()
    model.set_rt_info("ACCURACY", ["runtime_options", "EXECUTION_MODE_HINT"])
    model.set_rt_info("64", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    compiled = core.compile_model(core.read_model(str(save(model, tmp_path / "m.xml"))), "CPU")
    assert str(compiled.get_property("EXECUTION_MODE_HINT")).endswith("PERFORMANCE")
    if int(ov.get_version().split(".")[0]) >= 2026:
        assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 64
        explicit = core.compile_model(core.read_model(str(tmp_path / "m.xml")), "CPU",
                                      {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "16"})
        assert int(explicit.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 16


def test_pin_changes_only_the_runtime_options_block(tmp_path, pinned_ir, plain_ir):
    again = tiny_model()
    precision.pin_f32(again)
    save(again, tmp_path / "again.xml")
    assert (tmp_path / "again.xml").read_bytes() == pinned_ir.read_bytes()
    assert (tmp_path / "again.bin").read_bytes() == pinned_ir.with_suffix(".bin").read_bytes()
    assert pinned_ir.with_suffix(".bin").read_bytes() == plain_ir.with_suffix(".bin").read_bytes()
    stripped = RUNTIME_OPTIONS.sub("", pinned_ir.read_text())
    plain = plain_ir.read_text()
    # OpenVINO 2024.4 writes an empty `<rt_info />` when there is nothing else in it.
    assert stripped.replace("<rt_info>\n\t</rt_info>", "<rt_info />") == plain


def test_pin_survives_a_resave(core, pinned_ir, tmp_path):
    model = core.read_model(str(pinned_ir))
    again = core.read_model(str(save(model, tmp_path / "resaved.xml")))
    assert precision.pinned_hint(again) == "f32"


def test_cpu_isa_is_consistent(isa):
    assert set(isa) == {"cpu_model", "openvino", "isa", "flags", "optimization_capabilities", "bf16_capable",
                        "default_inference_precision", "core_inference_precision_hint"}
    assert isa["cpu_model"] and isa["openvino"]
    assert "FP32" in isa["optimization_capabilities"]
    assert isa["default_inference_precision"] in ("f32", "bf16", "f16")
    if not isa["bf16_capable"]:
        assert isa["default_inference_precision"] != "bf16"
    flags = isa["flags"]
    if flags is None:
        assert isa["isa"] is None
        return
    assert set(flags) == set(precision.ISA_FLAGS) and all(isinstance(v, bool) for v in flags.values())
    assert isa["isa"] in [tier for tier, _ in precision.ISA_TIERS] + ["other"]
    if flags["avx512_bf16"] or flags["amx_bf16"]:
        assert isa["bf16_capable"]
    if isa["default_inference_precision"] == "bf16":
        assert flags["avx512_bf16"] or flags["amx_bf16"]


def test_isa_tier_and_flags_parsing(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile "
                       "amx_bf16 amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    flags = precision.cpu_flags(cpuinfo)
    assert flags["amx_tile"] and flags["avx512_bf16"] and not flags["avx_vnni"]
    assert precision.isa_tier(flags) == "amx"
    assert precision.isa_tier(dict(flags, amx_tile=False)) == "avx512_bf16"
    assert precision.isa_tier({f: f == "avx2" for f in precision.ISA_FLAGS}) == "avx2"
    assert precision.isa_tier({f: False for f in precision.ISA_FLAGS}) == "other"
    assert precision.cpu_flags(tmp_path / "missing") is None
