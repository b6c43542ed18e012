"""calibrate + quantize end to end on synthetic frames, and every way their inputs can be wrong."""
from __future__ import annotations

import json
import shutil

import numpy as np
import openvino as ov
import pytest

from bevport.cli import main
from bevport.data.dataset import open_dataset
from bevport.data.preprocess import image_tensor
from bevport.geometry.voxelize import voxelize_for_deploy
from bevport.quantize.calibrate import load_feed
from bevport.quantize.ptq import quantize
from bevport.runtime.graphs import check_ports
from bevport.runtime.precision import pinned_hint

GRAPHS = ("camera", "lidar_pfe", "fuser", "head")  # the V2X deploy graphs


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    return capsys.readouterr().err


# --- calibrate ---------------------------------------------------------------------------------------------------

def test_calibration_set_holds_each_graphs_inputs(calib, contract, recipe):
    manifest = json.loads((calib / "manifest.json").read_text())
    assert [(f["id"], f["role"]) for f in manifest["frames"]] == \
        [("000000", "calibration"), ("000001", "calibration"), ("000002", "holdout")]
    assert manifest["dataset"]["synthetic"] is False and manifest["warning"] is None
    assert all(4000 < f["pillars"] <= 7000 and f["dropped_pillars"] == 0 for f in manifest["frames"])
    for graph in GRAPHS:
        spec = contract[graph]
        feed = load_feed(calib / graph / "000001.npz")
        assert sorted(feed) == sorted(t.name for t in spec.inputs)
        for t in spec.inputs:
            assert feed[t.name].shape == t.shape and feed[t.name].dtype == np.dtype(t.dtype)


def test_calibration_tensors_are_the_pipelines(calib, scenes, exported, recipe, contract):
    """Stored feeds equal the preprocessing and voxelizer outputs, and each graph's feed is the previous graph's
    output: the head saw exactly what the fuser computed from its own stored inputs."""
    frame = open_dataset(scenes).frame("000001")
    assert np.array_equal(load_feed(calib / "camera" / "000001.npz")["img"], image_tensor(recipe, frame.image()))
    pfe = load_feed(calib / "lidar_pfe" / "000001.npz")
    padded = voxelize_for_deploy(recipe, frame.points())
    assert np.array_equal(pfe["features"], padded.features) and np.array_equal(pfe["coors"], padded.coors)
    core = ov.Core()
    fuser = core.compile_model(str(exported / contract["fuser"].file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    middle = fuser(load_feed(calib / "fuser" / "000001.npz"))["middle"]
    assert np.array_equal(middle, load_feed(calib / "head" / "000001.npz")["middle"])
    bevs = load_feed(calib / "fuser" / "000001.npz")
    assert bevs["cam_bev"].any() and bevs["lidar_bev"].any()


def test_without_data_calibrates_on_synthetic_scenes_and_says_so(exported, tmp_path, capsys):
    out = tmp_path / "calib"
    main(["calibrate", "--onnx", str(exported), "--num-samples", "1", "--holdout", "1", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert "NOT FOR PRODUCTION" in err and "SYNTHETIC" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["synthetic"] is True and "NOT for production" in manifest["warning"]


def test_frames_beyond_the_static_voxel_count_are_calibrated_whole(exported, tmp_path, capsys):
    """Dense frames keep every pillar (the PFE runs once per V rows): nothing dropped, runs counted per frame."""
    from bevport.data.scenes import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "dense", frames=2, seed=1, density=1.6)
    out = tmp_path / "calib"
    main(["calibrate", "--onnx", str(exported), "--data", str(data), "--num-samples", "1", "--holdout", "1",
          "--out", str(out)])
    assert "are dropped" not in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"] == {"static_voxels": 7000, "intensity_scale": 1.0}
    assert all(f["pillars"] > 7000 and f["dropped_pillars"] == 0 and f["pfe_runs"] == 2 for f in manifest["frames"])


def test_bad_frame_is_skipped_and_counted_or_fails(exported, scenes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    (data / "calib" / "000001.txt").write_text("P2: 1 2 3\n")
    out = tmp_path / "calib"
    main(["calibrate", "--onnx", str(exported), "--data", str(data), "--num-samples", "1", "--holdout", "1",
          "--out", str(out), "-q"])
    assert "skipping frame 000001" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["id"] for f in manifest["frames"]] == ["000000", "000002"]
    assert manifest["skipped"][0]["id"] == "000001" and "P2" in manifest["skipped"][0]["reason"]
    err = _fail(["calibrate", "--onnx", str(exported), "--data", str(data), "--num-samples", "1", "--holdout", "1",
                 "--on-bad-frame", "fail", "--out", str(tmp_path / "strict")], capsys)
    assert "000001.txt" in err and "P2" in err
    assert not (tmp_path / "strict").exists()


def test_too_few_usable_frames_fails_without_output(exported, scenes, tmp_path, capsys):
    out = tmp_path / "calib"
    err = _fail(["calibrate", "--onnx", str(exported), "--data", str(scenes), "--num-samples", "4", "--holdout", "2",
                 "--out", str(out)], capsys)
    assert "only 4 usable frames" in err and "--num-samples" in err
    assert not out.exists() and not list(tmp_path.glob(".calib*"))


def test_missing_dataset_folder(exported, tmp_path, capsys):
    err = _fail(["calibrate", "--onnx", str(exported), "--data", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "c")], capsys)
    assert str(tmp_path / "nope") in err and not (tmp_path / "c").exists()


def test_onnx_folder_must_be_a_bevport_export_of_this_recipe(exported, scenes, tmp_path, capsys):
    onnx = tmp_path / "onnx"
    shutil.copytree(exported, onnx)
    (onnx / "export.json").unlink()
    args = ["calibrate", "--onnx", str(onnx), "--data", str(scenes), "--out", str(tmp_path / "c")]
    assert "not a `bevport export` output folder" in _fail(args, capsys)
    summary = json.loads((exported / "export.json").read_text())
    summary["recipe"] = "bevfusion-camonly-swint"
    (onnx / "export.json").write_text(json.dumps(summary))
    assert "exported for recipe `bevfusion-camonly-swint`" in _fail(args, capsys)
    # the right recipe name, but a graph whose ports do not match this recipe's contract
    (onnx / "export.json").write_text((exported / "export.json").read_text())
    shutil.copy(exported / "head.onnx", onnx / "fuser.onnx")
    err = _fail(args, capsys)
    assert "fuser.onnx" in err and "cam_bev" in err
    assert not (tmp_path / "c").exists()


# --- quantize -----------------------------------------------------------------------------------------------------

def test_quantize_writes_fp32_and_int8_irs_with_the_deploy_names(quantized, contract, recipe):
    names = {p.name for p in quantized.iterdir()}
    for stem in ("quantized_camera", "quantized_lidar_pfe", "quantized_fuser", "quantized_head",
                 "camera.backbone", "lidar_pfe_v7000", "fuser", "head"):
        assert {f"{stem}.xml", f"{stem}.bin"} <= names
    assert {"quantize.json", "report.json", "report.md", "report.png"} <= names
    summary = json.loads((quantized / "quantize.json").read_text())
    assert summary["settings"] == {"target_device": "GPU", "preset": "performance", "fast_bias_correction": False,
                                   "compress_to_fp16": False, "max_ap_drop": None}
    assert all(summary["graphs"][g]["settings"] == {"preset": recipe.quantize.graphs[g].get("preset", "performance"),
                                                    "fast_bias_correction": False, "ignored_types": [],
                                                    "ignored_patterns": []} for g in ("camera", "fuser", "head"))
    assert summary["graphs"]["camera"]["settings"]["preset"] == "mixed"
    counts = {g: summary["graphs"][g]["fake_quantize_ops"] for g in GRAPHS}
    assert counts["camera"] > 30 and counts["fuser"] > 10 and counts["head"] > 10
    assert counts["lidar_pfe"] == 0  # the recipe keeps the PFE FP32: NNCF never sees it
    assert summary["graphs"]["lidar_pfe"]["precision"] == "fp32" and summary["graphs"]["camera"]["precision"] == "int8"
    assert "Convolution" in summary["graphs"]["camera"]["quantized_types"]
    assert summary["graphs"]["lidar_pfe"]["quantized_types"] == []
    # ... so its IR is an FP32 graph, pinned to f32 in its rt_info; the quantized ones keep the device default
    precisions = {g: summary["graphs"][g]["inference_precision"] for g in GRAPHS}
    assert precisions == {"camera": "default", "lidar_pfe": "f32", "fuser": "default", "head": "default"}
    core = ov.Core()
    for graph, expected in precisions.items():
        model = core.read_model(str(quantized / f"{recipe.quantize.graphs[graph].ir}.xml"))
        assert pinned_hint(model) == (None if expected == "default" else expected)


def test_int8_irs_load_and_run_with_the_contracts_ports(quantized, calib, contract, recipe):
    core = ov.Core()
    for graph in GRAPHS:
        spec = contract[graph]
        path = quantized / f"{recipe.quantize.graphs[graph].ir}.xml"
        model = core.read_model(str(path))
        check_ports(model, spec, path)
        result = core.compile_model(model, "CPU")(load_feed(calib / graph / "000002.npz"))
        for t in spec.outputs:
            out = result[t.name]
            assert out.shape == t.concrete_shape(0) and np.isfinite(out).all() and out.any()


def test_report_has_held_out_drift_latency_and_flags(quantized, recipe):
    report = json.loads((quantized / "report.json").read_text())
    assert report["heldout_frames"] == ["000002"] and report["calibration_frames"] == 2
    assert report["min_snr_db"] == recipe.quantize.report.min_snr_db
    for graph in GRAPHS:
        g = report["graphs"][graph]
        for variants in g["outputs"].values():
            assert set(variants) == {"fp32 (default)", "int8 (default)", "int8 (f32)"}
            assert 0.5 < variants["int8 (default)"]["cosine"] <= 1.0 + 1e-9
        assert all(g["latency"][v]["median_ms"] > 0 for v in ("fp32 (f32)", "fp32 (default)", "int8 (default)"))
        assert g["bytes"]["int8"] > 0
    pfe = report["graphs"]["lidar_pfe"]["outputs"]["pillar_features"]["int8 (f32)"]
    assert pfe["snr_db"] is None and pfe["max_abs_error"] == 0.0  # nothing quantized: identical to FP32
    camera = report["graphs"]["camera"]
    assert camera["bytes"]["int8"] < camera["bytes"]["fp32"] / 3  # INT8 weights
    flagged = {f.split(":")[0] for f in report["flags"]}
    expected = {f"{g}/{name}" for g, r in report["graphs"].items() for name, v in r["outputs"].items()
                if v["int8 (default)"]["snr_db"] is not None and v["int8 (default)"]["snr_db"] < report["min_snr_db"]}
    assert flagged == expected
    markdown = (quantized / "report.md").read_text()
    assert "| camera | camera_feature | int8 (default) |" in markdown and "held-out" in markdown
    assert (quantized / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quantization_is_byte_identical_on_a_second_run(quantized, exported, calib, recipe, tmp_path):
    again = tmp_path / "ir"
    quantize(recipe, exported, calib, again, report=False)
    for path in sorted(again.glob("*.xml")) + sorted(again.glob("*.bin")):
        assert path.read_bytes() == (quantized / path.name).read_bytes(), path.name


def test_quantize_refuses_a_calibration_set_from_other_graphs_or_recipe(exported, calib, tmp_path, capsys):
    onnx = tmp_path / "onnx"
    shutil.copytree(exported, onnx)
    with open(onnx / "head.onnx", "ab") as f:
        f.write(b"\0")  # different bytes: the tensors were computed with other graphs
    args = ["quantize", "--onnx", str(onnx), "--calib", str(calib), "--out", str(tmp_path / "ir")]
    err = _fail(args, capsys)
    assert "head.onnx" in err and "calibrate" in err
    other = tmp_path / "calib"
    shutil.copytree(calib, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["recipe"] = "other-recipe"
    (other / "manifest.json").write_text(json.dumps(manifest))
    args = ["quantize", "--onnx", str(exported), "--calib", str(other), "--out", str(tmp_path / "ir")]
    assert "calibrated for recipe `other-recipe`" in _fail(args, capsys)
    (other / "manifest.json").write_text("{not json")
    assert "malformed calibration manifest" in _fail(args, capsys)
    (other / "manifest.json").write_text((calib / "manifest.json").read_text())
    (other / "fuser" / "000001.npz").unlink()
    assert "fuser/000001.npz" in _fail(args, capsys)
    assert not (tmp_path / "ir").exists()


def test_intensity_converted_to_unit_range_is_caught_and_rescaled(exported, scenes, calib, tmp_path, capsys):
    """Converters that write .bin divide intensity by 255; training read it raw. bevport warns, and
    --intensity-scale 255 restores exactly the tensors the raw dataset gives."""
    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    for path in (data / "velodyne").glob("*.bin"):
        points = np.fromfile(path, np.float32).reshape(-1, 4)
        points[:, 3] /= 255.0
        points.tofile(path)
    args = ["calibrate", "--onnx", str(exported), "--data", str(data), "--num-samples", "1", "--holdout", "1"]
    main(args + ["--out", str(tmp_path / "unit"), "-q"])
    assert "--intensity-scale 255" in capsys.readouterr().err
    main(args + ["--intensity-scale", "255", "--out", str(tmp_path / "raw"), "-q"])
    assert "intensity" not in capsys.readouterr().err
    rescaled = load_feed(tmp_path / "raw" / "lidar_pfe" / "000000.npz")["features"]
    original = load_feed(calib / "lidar_pfe" / "000000.npz")["features"]
    np.testing.assert_allclose(rescaled, original, rtol=1e-6, atol=1e-4)
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["settings"]["intensity_scale"] == 255.0


def test_an_ignored_op_type_that_nncf_quantized_is_refused(quantized, recipe, tmp_path):
    """The recipe's FP32 rules are checked on the produced IR, whichever NNCF made it: an INT8 fuser whose
    convolutions carry FakeQuantize fails a recipe that says convolutions stay FP32."""
    from bevport.errors import QuantizeError
    from bevport.quantize.ptq import _check_rules, quantized_types

    model = ov.Core().read_model(str(quantized / "quantized_fuser.xml"))
    assert "Convolution" in quantized_types(model)
    _check_rules(recipe, "fuser", model, tmp_path / "quantized_fuser.xml")          # the recipe ignores nothing
    strict = recipe.updated({"quantize": {"graphs": {"fuser": {"ignored_types": ["Convolution"]}}}})
    with pytest.raises(QuantizeError, match="quantized_fuser.xml: NNCF quantized Convolution"):
        _check_rules(strict, "fuser", model, tmp_path / "quantized_fuser.xml")
