"""Release bundles: layout, manifest, deterministic archive, verification, and refusal of inconsistent inputs.

The inputs are small stand-ins with the real names and the real export.json / quantize.json / calibration manifest
hash entries, so these tests run in well under a second each without OpenVINO.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from bevport.bundle import (BundleError, archive_path, build_bundle, extras_path, is_volatile_key, split_volatile,
                            timings_path, verify_bundle, write_archive)
from bevport.contract import build_contract
from bevport.recipe import load_recipe
from bevport.runtime.graphs import source_graph

CKPT_SHA = "ab" * 32
CALIB_SHA = "cd" * 32


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, (dict, list)):
        data = (json.dumps(data, indent=2) + "\n").encode()
    path.write_bytes(data)
    return _sha(data)


def make_run(root: Path, recipe, timing: float = 1.0) -> dict:
    """Folders shaped like one export -> calibrate -> quantize -> validate/bench/infer run; `timing` scales every
    wall-clock figure, and all paths lie under `root`, so two runs differ only in what must not matter."""
    contract = build_contract(recipe)
    onnx, ir, calib, vis = root / "onnx", root / "ir", root / "calib", root / "vis"
    onnx_sha = {spec.file: _write(onnx / spec.file, f"onnx graph {spec.key}".encode() * 50) for spec in contract}
    _write(onnx / "export.json", {
        "recipe": recipe.name, "recipe_origin": str(root / "recipe.yaml"),
        "checkpoint": {"path": str(root / "ckpt.pth"), "sha256": CKPT_SHA}, "sparsity": False,
        "files": onnx_sha, "environment": {"python": "3.8.18", "torch": "1.11.0"}})
    _write(onnx / "parity.json", {"factor": 20.0, "floor": 1e-5, "passed": True, "graphs": {
        spec.key: {"file": spec.file, "passed": True, "seed": 0, "outputs": {
            t.name: {"max_abs_error": 1e-5 * (i + 1), "max_rel_error": 2e-6 * (i + 1), "passed": True}
            for i, t in enumerate(spec.outputs)}} for spec in contract}})
    sources = {g: contract[source_graph(recipe, g)].file for g in recipe.quantize.graphs}
    _write(calib / "manifest.json", {"sha256": CALIB_SHA, "onnx": {
        "folder": str(onnx), "files": {f: onnx_sha[f] for f in sources.values()}}})
    graphs, report_graphs = {}, {}
    for graph, source in sources.items():
        int8 = recipe.quantize.graphs[graph]["ir"]
        stem = Path(source).stem
        files = {}
        for name in (f"{stem}.xml", f"{stem}.bin", f"{int8}.xml", f"{int8}.bin"):
            data = f"ir {name}".encode() * 20
            files[name] = {"sha256": _write(ir / name, data), "bytes": len(data)}
        graphs[graph] = {"onnx": source, "fp32_ir": f"{stem}.xml", "int8_ir": f"{int8}.xml", "files": files,
                         "fake_quantize_ops": 3, "nncf_seconds": 12.5 * timing, "ignored_types": []}
        report_graphs[graph] = {
            "outputs": {"out": {"fp32 (default)": {"cosine": 1.0, "snr_db": None, "max_abs_error": 0.0},
                                "int8 (default)": {"cosine": 0.99, "snr_db": 25.5, "max_abs_error": 0.125},
                                "int8 (f32)": {"cosine": 0.995, "snr_db": 27.0, "max_abs_error": 0.1}}},
            "latency": {label: {"median_ms": 100.0 * timing, "min_ms": 90.0 * timing, "runs": 10}
                        for label in ("fp32 (f32)", "fp32 (default)", "int8 (default)")},
            "int8_speedup_vs_fp32_f32": 2.0 * timing, "bytes": {"fp32": 4000, "int8": 1000}, "fake_quantize_ops": 3}
    _write(ir / "quantize.json", {
        "bevport_version": "0.1.0", "recipe": recipe.name,
        "calibration": {"folder": str(calib), "sha256": CALIB_SHA, "synthetic": True, "warning": "SYNTHETIC"},
        "settings": {"target_device": "GPU"}, "versions": {"nncf": "2.7.0"}, "graphs": graphs,
        "report_seconds": 40.0 * timing})
    _write(ir / "report.json", {
        "recipe": recipe.name, "device": "CPU", "device_name": "Test CPU", "reference": "FP32 IR (f32) on CPU",
        "heldout_frames": ["000007"], "calibration_frames": 2, "synthetic_calibration": True, "warning": "SYNTHETIC",
        "min_snr_db": 20.0, "flags": [], "graphs": report_graphs})
    _write(ir / "report.md", f"# report\nlatency {100.0 * timing} ms\n".encode())
    _write(ir / "report.png", b"\x89PNG fake chart " + str(timing).encode())
    stage = {"file": "quantized_camera.xml", "precision": "int8", "compile_s": 0.25 * timing}
    _write(root / "validate.json", {
        "recipe": recipe.name, "bundle": str(ir), "device": "CPU", "device_name": "Test CPU",
        "compile": {"camera/int8": {"file": "quantized_camera.xml", "compiled": True, "seconds": 0.3 * timing}},
        "frames": ["000007"], "skipped": [], "drift": {"camera": {"out": {"cosine": 0.98, "snr_db": 15.0,
                                                                          "max_abs_error": 0.5}}},
        "boxes": {"reference_boxes": 10, "int8_boxes": 9, "matched": 8, "matched_fraction": 0.8,
                  "mean_centre_shift_m": 0.1, "mean_score_diff": 0.02},
        "stages": {"int8": {"camera": stage}}, "passed": True, "failures": [], "report_only": False})
    _write(root / "bench.json", {
        "recipe": recipe.name, "bundle": str(ir), "device": "CPU", "device_name": "Test CPU",
        "inference_precision_fp32": "f32", "peak_rss_mib": 900.0 * timing, "int8_speedup": 1.9 * timing,
        "precisions": {p: {"stages_files": {"camera": dict(stage, precision=p)},
                           "latency": {"frames": 3, "fps": 1.0 / timing, "non_model_share": 0.1 * timing,
                                       "stages": {"frame": {"median_ms": 1000.0 * timing, "p90_ms": 1100.0 * timing,
                                                            "frames": 3}}},
                           "throughput": {"frames": 8, "jobs": 2, "fps": 1.5 / timing}} for p in ("int8", "fp32")}})
    _write(root / "ap.json", {"metric": "KITTI R40", "frames": 4, "classes": {
        "Car": {"moderate": {"AP_3D": 12.5, "AP_BEV": 20.0, "num_gt": 5}}}})
    _write(vis / "frame_000007.png", b"\x89PNG frame without latency")
    _write(vis / "bevfusion.mp4", b"\x00\x00\x00\x18ftypmp42 video")
    _write(vis / "notes.txt", b"not a picture")
    return {"onnx": onnx, "ir": ir, "calib": calib, "vis": vis, "validate": root / "validate.json",
            "bench": root / "bench.json", "ap": root / "ap.json", "root": root}


ENVIRONMENT = {"images": {"export": {"id": "sha256:" + "1" * 64, "base": "python:3.8-slim@sha256:" + "2" * 64},
                          "runtime": {"id": "sha256:" + "3" * 64}},
               "packages": {"export": {"torch": "1.11.0"}, "runtime": {"openvino": "2024.6.0"}}}


def build(run: dict, recipe, dist: Path, **kw) -> Path:
    kw.setdefault("environment", ENVIRONMENT)
    return build_bundle(recipe, run["onnx"], run["ir"], dist, validate=run["validate"], bench=run["bench"],
                        vis_dir=run["vis"], ap=run["ap"], **kw)


def file_sha(path: Path) -> str:
    return _sha(path.read_bytes())


@pytest.fixture
def run(tmp_path, recipe):
    return make_run(tmp_path / "run", recipe)


@pytest.fixture
def bundle(run, recipe, tmp_path):
    return build(run, recipe, tmp_path / "dist")


def test_same_inputs_give_the_same_archive_even_when_timings_and_paths_differ(tmp_path, recipe, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a = build(make_run(tmp_path / "a", recipe, timing=1.0), recipe, tmp_path / "dist_a")
    b = build(make_run(tmp_path / "elsewhere" / "b", recipe, timing=3.7), recipe, tmp_path / "dist_b")
    assert a.name == b.name
    assert file_sha(archive_path(a)) == file_sha(archive_path(b))
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    # the run-dependent values are kept beside the archive, and they do differ
    ta, tb = (json.loads(timings_path(p).read_text()) for p in (a, b))
    assert ta["removed"] != tb["removed"]
    assert ta["archive_sha256"] == tb["archive_sha256"] == file_sha(archive_path(a))
    assert ta["removed"]["reports/bench.json"]["/precisions/int8/latency"]["fps"] == 1.0
    assert tb["figures"]["bench"]["precisions"]["int8"]["fps"] == pytest.approx(1 / 3.7)
    # rebuilding over an existing bundle gives the same bytes again
    again = build(make_run(tmp_path / "a", recipe, timing=0.5), recipe, tmp_path / "dist_a")
    assert file_sha(archive_path(again)) == ta["archive_sha256"]
    assert (archive_path(a).parent / f"{a.name}.tar.gz.sha256").read_text() == \
        f"{ta['archive_sha256']}  {a.name}.tar.gz\n"


def test_layout_names_and_manifest(bundle, recipe, run):
    assert bundle.name == f"{recipe.name}-{CKPT_SHA[:12]}"
    model = bundle / recipe.runtime.model_dir
    deploy = {p.name for p in model.iterdir()}
    assert {"camera.backbone.onnx", "lidar_pfe.onnx", "lidar_pfe_v7000.onnx", "fuser.onnx", "head.onnx"} <= deploy
    assert {f"quantized_{g}.{ext}" for g in ("camera", "lidar_pfe", "fuser", "head") for ext in ("xml", "bin")} \
        <= deploy
    assert not any(p.startswith(("camera.backbone.x", "fuser.b")) for p in deploy)  # FP32 IRs are not bundled
    reports = {p.relative_to(bundle / "reports").as_posix() for p in (bundle / "reports").rglob("*") if p.is_file()}
    assert reports == {"export.json", "parity.json", "quantize.json", "quantize_report.json", "quantize_report.md",
                       "validate.json", "bench.json", "ap.json", "pictures/frame_000007.png",
                       "pictures/bevfusion.mp4"}
    assert load_recipe(bundle / "recipe.yaml").to_dict() == recipe.to_dict()     # loads back, graph order kept
    assert sorted(p.name for p in extras_path(bundle).iterdir()) == ["quantize_report.md", "quantize_report.png"]

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "bevport-bundle" and manifest["format_version"] == 1
    assert manifest["recipe"] == recipe.name and manifest["name"] == bundle.name
    assert manifest["checkpoint_sha256"] == CKPT_SHA and manifest["calibration_sha256"] == CALIB_SHA
    assert manifest["environment"] == ENVIRONMENT
    assert manifest["provenance"] == {"onnx_to_int8": "calibration manifest"}
    figures = manifest["figures"]
    assert figures["parity"]["graphs"]["camera"]["worst_rel_error"] == pytest.approx(4e-6)
    assert figures["parity"]["gate"] == {"factor": 20.0, "floor": 1e-5}
    assert figures["quantization"]["graphs"]["head"]["out"] == {"cosine": 0.99, "snr_db": 25.5}
    assert figures["validate"]["passed"] is True and figures["validate"]["boxes"]["matched_fraction"] == 0.8
    assert figures["bench"]["precisions"] == ["fp32", "int8"] and "fps" not in json.dumps(figures["bench"])
    assert figures["ap"]["classes"]["Car"]["moderate"] == {"AP_3D": 12.5, "AP_BEV": 20.0}
    assert list(manifest["files"]) == sorted(manifest["files"])


def test_manifest_lists_every_file_with_its_sha_and_size(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(bundle).as_posix(): p for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == set(on_disk) - {"manifest.json"}
    for rel, entry in manifest["files"].items():
        assert entry == {"sha256": file_sha(on_disk[rel]), "size": on_disk[rel].stat().st_size}, rel


def test_bundled_reports_are_canonical_and_free_of_timings_and_paths(bundle, run):
    for path in (bundle / "reports").glob("*.json"):
        text = path.read_text()
        data = json.loads(text)
        assert text == json.dumps(data, sort_keys=True, indent=2, separators=(",", ": ")) + "\n"
        assert str(run["root"]) not in text, path.name
        assert not any(k in text for k in ('"latency"', '_ms"', '"fps"', 'seconds"', '"compile_s"', "speedup",
                                           '"peak_rss_mib"', '"bundle"', '"folder"', '"recipe_origin"')), path.name
    bench = json.loads((bundle / "reports" / "bench.json").read_text())
    assert bench["precisions"]["int8"]["stages_files"]["camera"] == {"file": "quantized_camera.xml",
                                                                     "precision": "int8"}
    md = (bundle / "reports" / "quantize_report.md").read_text()
    assert "25.5" in md and " ms" not in md


def test_volatile_rule():
    for key in ("median_ms", "compile_s", "seconds", "nncf_seconds", "fps", "throughput_fps", "peak_rss_mib",
                "latency", "throughput", "int8_speedup", "non_model_share", "folder", "bundle", "path",
                "recipe_origin", "cache_dir"):
        assert is_volatile_key(key), key
    for key in ("snr_db", "cosine", "frames", "passed", "boxes", "mean_centre_shift_m", "files", "sha256", "bytes",
                "reference_boxes", "heldout_frames", "device_name"):
        assert not is_volatile_key(key), key
    kept, removed = split_volatile({"a": {"median_ms": 3, "x/y": {"file": "/tmp/q"}}, "l": [{"seconds": 1}], "k": 2})
    assert kept == {"a": {"x/y": {}}, "l": [{}], "k": 2}
    assert removed == {"/a/median_ms": 3, "/a/x~1y/file": "/tmp/q", "/l/0/seconds": 1}


def test_archive_is_normalised(bundle, monkeypatch, tmp_path, recipe):
    archive = archive_path(bundle)
    head = archive.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] & 0x08 == 0 and head[4:8] == b"\0\0\0\0"  # no name, mtime 0
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == bundle.name
    on_disk = {bundle.name} | {f"{bundle.name}/{p.relative_to(bundle).as_posix()}" for p in bundle.rglob("*")}
    assert set(names) == on_disk
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644) and (m.isdir() or m.isreg())

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    later = build(make_run(tmp_path / "r2", recipe), recipe, tmp_path / "dist2")
    with tarfile.open(archive_path(later), "r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    explicit = build(make_run(tmp_path / "r3", recipe), recipe, tmp_path / "dist3", mtime=1700000000)
    assert file_sha(archive_path(explicit)) == file_sha(archive_path(later))


def test_verify_passes_on_folder_and_archive(bundle):
    folder = verify_bundle(bundle)
    archived = verify_bundle(archive_path(bundle))
    assert folder["ok"] and archived["ok"]
    assert folder["files"] == archived["files"] == len(json.loads((bundle / "manifest.json").read_text())["files"])


def test_verify_catches_a_changed_byte_a_missing_file_and_an_extra_file(bundle, recipe):
    target = bundle / recipe.runtime.model_dir / "quantized_head.bin"
    data = bytearray(target.read_bytes())
    data[5] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="changed: .*quantized_head.bin"):
        verify_bundle(bundle)
    (bundle / "reports" / "parity.json").unlink()
    (bundle / "reports" / "extra.txt").write_text("hello")
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle)
    assert err.value.problems == [f"changed: {recipe.runtime.model_dir}/quantized_head.bin",
                                  "missing: reports/parity.json", "unlisted: reports/extra.txt"]


def test_verify_catches_a_changed_archive(bundle, tmp_path, recipe):
    (bundle / recipe.runtime.model_dir / "head.onnx").write_bytes(b"tampered")
    tampered = tmp_path / "tampered" / f"{bundle.name}.tar.gz"
    tampered.parent.mkdir()
    write_archive(bundle, tampered)
    with pytest.raises(BundleError, match="changed: .*head.onnx"):
        verify_bundle(tampered)


def _tar_with(path: Path, members) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def _file(name: str, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("bad", ["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_archives_are_refused_before_extraction(tmp_path, bad):
    if bad == "dotdot":
        member = _file("b/../../escaped.txt")
    elif bad == "absolute":
        member = _file("/tmp/escaped.txt")
    else:
        info = tarfile.TarInfo("b/link")
        info.type = tarfile.SYMTYPE if bad == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        member = (info, None)
    archive = _tar_with(tmp_path / "bad.tar.gz", [_file("b/manifest.json", b"{}"), member])
    with pytest.raises(BundleError, match="refusing|link"):
        verify_bundle(archive)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped.txt").exists()


def test_not_an_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(BundleError, match="not a readable .tar.gz"):
        verify_bundle(path)
    with pytest.raises(BundleError, match="not found"):
        verify_bundle(tmp_path / "nothing")


def test_missing_input_is_refused_and_nothing_is_written(run, recipe, tmp_path):
    (run["ir"] / "quantized_head.bin").unlink()
    (run["onnx"] / "parity.json").unlink()
    dist = tmp_path / "dist"
    with pytest.raises(BundleError) as err:
        build(run, recipe, dist)
    assert "quantized_head.bin" in str(err.value) and "parity.json" in str(err.value)
    assert not dist.exists()


def test_missing_optional_input_named_by_the_caller_is_refused(run, recipe, tmp_path):
    run["bench"].unlink()
    with pytest.raises(BundleError, match="bench.json"):
        build(run, recipe, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_onnx_changed_after_export_is_refused(run, recipe, tmp_path):
    path = run["onnx"] / "fuser.onnx"
    path.write_bytes(path.read_bytes() + b"!")
    with pytest.raises(BundleError, match="fuser.onnx changed after export"):
        build(run, recipe, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_ir_changed_after_quantize_is_refused(run, recipe, tmp_path):
    (run["ir"] / "quantized_camera.xml").write_bytes(b"<net/>")
    with pytest.raises(BundleError, match="quantized_camera.xml changed after quantize"):
        build(run, recipe, tmp_path / "dist")


def _reexport(run: dict, name: str) -> None:
    """A new export of one graph (export.json updated to match) beside the IRs of the old one."""
    path = run["onnx"] / name
    path.write_bytes(b"re-exported " + path.read_bytes())
    export = json.loads((run["onnx"] / "export.json").read_text())
    export["files"][name] = file_sha(path)
    _write(run["onnx"] / "export.json", export)


def test_onnx_from_another_export_than_the_irs_is_refused(run, recipe, tmp_path):
    _reexport(run, "head.onnx")
    with pytest.raises(BundleError, match="head.onnx is not the graph the INT8 IRs were quantized from"):
        build(run, recipe, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_onnx_hashes_recorded_in_quantize_json_are_checked_first(run, recipe, tmp_path):
    quantize = json.loads((run["ir"] / "quantize.json").read_text())
    calib = json.loads((run["calib"] / "manifest.json").read_text())
    quantize["onnx"] = {"files": calib["onnx"]["files"]}
    _write(run["ir"] / "quantize.json", quantize)
    (run["calib"] / "manifest.json").unlink()
    assert json.loads((build(run, recipe, tmp_path / "ok") / "manifest.json").read_text())["provenance"] == \
        {"onnx_to_int8": "quantize.json"}
    _reexport(run, "camera.backbone.onnx")
    with pytest.raises(BundleError, match="camera.backbone.onnx is not the graph"):
        build(run, recipe, tmp_path / "dist")


def test_unrecorded_onnx_link_warns(run, recipe, tmp_path):
    (run["calib"] / "manifest.json").unlink()
    warnings = []
    bundle = build(run, recipe, tmp_path / "dist", warn=warnings.append)
    assert json.loads((bundle / "manifest.json").read_text())["provenance"] == {"onnx_to_int8": "not recorded"}
    assert warnings and "unchecked" in warnings[0]


def test_wrong_calibration_folder_is_refused(run, recipe, tmp_path):
    other = tmp_path / "other_calib"
    _write(other / "manifest.json", {"sha256": "ef" * 32, "onnx": {"files": {}}})
    with pytest.raises(BundleError, match="is not the calibration set"):
        build(run, recipe, tmp_path / "dist", calib_dir=other)


def test_reports_of_another_recipe_are_refused(run, recipe, tmp_path):
    bench = json.loads(run["bench"].read_text())
    bench["recipe"] = "bevfusion-swint-cam"
    _write(run["bench"], bench)
    with pytest.raises(BundleError, match="not `v2xfusion-pp-r34`"):
        build(run, recipe, tmp_path / "dist")


def test_a_failed_build_leaves_the_previous_bundle_intact(bundle, run, recipe):
    sha = file_sha(archive_path(bundle))
    (run["ir"] / "quantized_fuser.xml").unlink()
    with pytest.raises(BundleError):
        build(run, recipe, bundle.parent)
    assert file_sha(archive_path(bundle)) == sha and verify_bundle(bundle)["ok"]
    assert sorted(p.name for p in bundle.parent.iterdir()) == sorted(
        [bundle.name, f"{bundle.name}.tar.gz", f"{bundle.name}.tar.gz.sha256", f"{bundle.name}.timings.json",
         f"{bundle.name}.extras"])


def test_cli_bundle_and_verify(run, recipe, tmp_path, capsys):
    from bevport.cli import main

    env = tmp_path / "environment.json"
    env.write_text(json.dumps(ENVIRONMENT))
    dist = tmp_path / "dist"
    main(["bundle", "--recipe", recipe.name, "--onnx", str(run["onnx"]), "--ir", str(run["ir"]),
          "--validate", str(run["validate"]), "--bench", str(run["bench"]), "--vis", str(run["vis"]),
          "--environment", str(env), "--dist", str(dist)])
    out = capsys.readouterr().out
    bundle = dist / f"{recipe.name}-{CKPT_SHA[:12]}"
    assert f"bundle  {bundle}" in out and f"archive {archive_path(bundle)}" in out
    assert f"sha256  {file_sha(archive_path(bundle))}" in out

    main(["verify", str(archive_path(bundle))])
    assert "ok: " in capsys.readouterr().out
    os.remove(bundle / "recipe.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(bundle)])
    assert exit_info.value.code == 1
    assert "missing: recipe.yaml" in capsys.readouterr().err


def test_runtime_commands_take_the_bundles_own_recipe(bundle, recipe):
    """`bevport infer --bundle dist/<name>` needs no --recipe; a --recipe of another model is refused by name."""
    import argparse

    from bevport.cli import _load_recipe
    from bevport.errors import RecipeError

    args = argparse.Namespace(recipe=None, config=None, bundle=bundle)
    assert _load_recipe(args).to_dict() == recipe.to_dict()
    args.recipe = "bevfusion-cam-swint"
    with pytest.raises(RecipeError, match=f"bundle of recipe `{recipe.name}`, --recipe gives `bevfusion-cam-swint`"):
        _load_recipe(args)
