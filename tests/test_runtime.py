"""bevport infer / validate / bench on the synthetic bundle: planted boxes come back, files are written, bad bundles,
devices and frames fail clearly."""
from __future__ import annotations

import json
import math
import shutil

import imageio.v3 as iio
import numpy as np
import pytest

from bevport.cli import main
from bevport.runtime.decode import decode
from planted import encode, write_head_ir

# (x, y, z_center, dx, dy, dz, yaw) and global labels: two cars, a truck, a pedestrian and a cyclist (bicycle)
PLANTED = [(20.3, -4.1, -0.9, 1.9, 4.6, 1.5, 0.1), (41.7, 7.3, -0.8, 1.8, 4.2, 1.6, math.pi - 0.2),
           (63.0, -12.5, -0.3, 2.5, 9.5, 3.2, -1.2), (15.2, 11.9, -0.8, 0.6, 0.7, 1.75, 2.0),
           (33.4, -20.6, -0.8, 0.6, 1.8, 1.7, -2.5)]
LABELS = [0, 0, 1, 8, 7]


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def planted_bundle(quantized, recipe, contract, tmp_path_factory):
    """The synthetic INT8 bundle with its head replaced by one that outputs the planted boxes."""
    bundle = tmp_path_factory.mktemp("planted") / "bundle"
    shutil.copytree(quantized, bundle)
    write_head_ir(contract, encode(recipe, contract, PLANTED, LABELS), bundle / "quantized_head.xml")
    return bundle


def test_planted_outputs_decode_to_the_planted_boxes(recipe, contract):
    det = decode(encode(recipe, contract, PLANTED, LABELS), recipe, contract)
    order = np.argsort(det.boxes[:, 0])
    expected = np.array(sorted(PLANTED))
    np.testing.assert_allclose(det.boxes[order, :2], expected[:, :2], atol=1e-4)
    np.testing.assert_allclose(det.boxes[order, 2], expected[:, 2] - expected[:, 5] / 2, atol=1e-5)  # z = bottom
    np.testing.assert_allclose(det.boxes[order, 3:6], expected[:, 3:6], rtol=1e-5)
    np.testing.assert_allclose(np.cos(det.boxes[order, 6] - expected[:, 6]), 1.0, atol=1e-6)
    assert sorted(det.labels.tolist()) == sorted(LABELS)


def test_infer_runs_the_bundle_and_writes_predictions_pictures_and_video(planted_bundle, scenes, tmp_path, recipe):
    preds, vis = tmp_path / "preds", tmp_path / "vis"
    main(["infer", "--bundle", str(planted_bundle), "--data", str(scenes), "--num-samples", "2", "--pred-dir",
          str(preds), "--vis-dir", str(vis), "--video", "--no-cache", "-q"])
    summary = json.loads((preds / "infer.json").read_text())
    assert summary["frames"] == ["000000", "000001"]
    assert {s["precision"] for s in summary["stages"].values()} == {"int8"}
    for stage in ("camera", "lidar_pfe", "fuser", "head", "prepare", "bev_pool", "scatter", "decode", "frame"):
        assert summary["seconds"][stage]["median_ms"] > 0
    # the deploy binary's LiDAR-frame lines: Class 0 0 0 0 0 0 0 h l w x y z yaw score
    lines = [line.split() for line in (preds / "lidar" / "000001.txt").read_text().splitlines()]
    assert sorted(line[0] for line in lines) == ["Bicycle", "Car", "Car", "Pedestrian", "Truck"]
    got = sorted((float(v[11]), float(v[12]), float(v[13]), float(v[8])) for v in lines)
    want = sorted((b[0], b[1], b[2] - b[5] / 2, b[5]) for b in PLANTED)
    np.testing.assert_allclose(got, want, atol=1e-3)
    # KITTI camera-frame lines: only scores > 0.45 of the mapped classes (car, truck -> Car; bicycle -> Cyclist ...)
    kitti = [line.split()[0] for line in (preds / "kitti" / "000001.txt").read_text().splitlines()]
    assert sorted(kitti) == ["Car", "Car", "Car", "Cyclist", "Pedestrian"]
    ap = json.loads((preds / "ap.json").read_text())
    assert set(ap["classes"]) == {"Car", "Pedestrian", "Cyclist"}
    for name in ("frame_000000.png", "frame_000001.png"):
        assert (vis / name).stat().st_size > 50_000
    video = iio.imread(vis / "bevfusion.mp4", plugin="pyav") if _has_pyav() else iio.imread(vis / "bevfusion.mp4")
    assert video.shape[0] == 2 and video.shape[1] <= 720 and video.shape[2] <= 1280


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_graph_precisions_follow_the_flags(quantized, scenes, tmp_path, capsys):
    preds = tmp_path / "p"
    main(["infer", "--bundle", str(quantized), "--data", str(scenes), "--num-samples", "1", "--int8-graphs",
          "fuser,lidar_pfe", "--pred-dir", str(preds), "--no-cache", "-q"])
    stages = json.loads((preds / "infer.json").read_text())["stages"]
    assert {k: v["precision"] for k, v in stages.items()} == \
        {"camera": "fp32", "lidar_pfe": "int8", "fuser": "int8", "head": "fp32"}
    assert stages["camera"]["file"] == "camera.backbone.xml"    # FP32 IR when the ONNX is not in the folder
    # the INT8 PFE is an FP32 graph pinned to f32 in its IR; quantized graphs take the device default
    assert {k: v["inference_precision"] for k, v in stages.items()} == \
        {"camera": "f32", "lidar_pfe": "f32", "fuser": "default", "head": "f32"}
    main(["infer", "--bundle", str(quantized), "--data", str(scenes), "--num-samples", "1", "--fp32",
          "--inference-precision", "default", "--pred-dir", str(preds), "--no-cache", "-q"])
    stages = json.loads((preds / "infer.json").read_text())["stages"]
    assert {v["inference_precision"] for v in stages.values()} == {"default"}
    err = _fail(["infer", "--bundle", str(quantized), "--data", str(scenes), "--int8-graphs", "camera,pfe"], capsys)
    assert "--int8-graphs names pfe" in err and "camera, lidar_pfe, fuser, head" in err


def test_missing_graphs_name_the_file_and_only_the_pfe_falls_back(quantized, scenes, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(quantized, bundle)
    (bundle / "quantized_lidar_pfe.xml").unlink()
    preds = tmp_path / "p"
    main(["infer", "--bundle", str(bundle), "--data", str(scenes), "--num-samples", "1", "--pred-dir", str(preds),
          "--no-cache"])
    assert "falls back to FP32 lidar_pfe_v7000.xml" in capsys.readouterr().err
    stages = json.loads((preds / "infer.json").read_text())["stages"]
    assert stages["lidar_pfe"] == {**stages["lidar_pfe"], "file": "lidar_pfe_v7000.xml", "precision": "fp32"}
    (bundle / "quantized_fuser.xml").unlink()
    err = _fail(["infer", "--bundle", str(bundle), "--data", str(scenes), "--no-cache"], capsys)
    assert "quantized_fuser.xml is missing" in err and "fuser has no FP32 fallback" in err
    err = _fail(["infer", "--bundle", str(tmp_path / "nowhere"), "--data", str(scenes)], capsys)
    assert "bundle folder not found" in err


def test_graph_with_other_ports_is_refused(quantized, scenes, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(quantized, bundle)
    for ext in (".xml", ".bin"):
        shutil.copy(quantized / f"quantized_fuser{ext}", bundle / f"quantized_head{ext}")
    err = _fail(["infer", "--bundle", str(bundle), "--data", str(scenes), "--no-cache"], capsys)
    assert "quantized_head.xml" in err and "cam_bev" in err


def test_a_device_openvino_does_not_see_is_named_with_the_ones_it_does(quantized, scenes, capsys):
    err = _fail(["infer", "--bundle", str(quantized), "--data", str(scenes), "--device", "NPU.7"], capsys)
    assert "does not see device NPU.7" in err and "CPU" in err


def test_unreadable_frame_is_skipped_or_fails(quantized, scenes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    (data / "image_2" / "000000.jpg").write_bytes(b"not a jpeg")
    preds = tmp_path / "p"
    main(["infer", "--bundle", str(quantized), "--data", str(data), "--num-samples", "1", "--pred-dir", str(preds),
          "--no-cache", "-q"])
    summary = json.loads((preds / "infer.json").read_text())
    assert summary["frames"] == ["000001"] and summary["skipped"][0]["id"] == "000000"
    assert "skipping frame 000000" in capsys.readouterr().err
    err = _fail(["infer", "--bundle", str(quantized), "--data", str(data), "--on-bad-frame", "fail", "--no-cache"],
                capsys)
    assert "000000.jpg" in err


def test_validate_writes_its_report_and_applies_the_recipe_bounds(quantized, scenes, tmp_path, capsys, recipe):
    out = tmp_path / "validate.json"
    args = ["validate", "--bundle", str(quantized), "--data", str(scenes), "--num-samples", "1", "--no-cache",
            "--out", str(out)]
    try:
        main(args + ["-q"])
        exit_code = 0
    except SystemExit as exc:
        exit_code = exc.code
    report = json.loads(out.read_text())
    assert all(entry["compiled"] for entry in report["compile"].values()) and len(report["compile"]) == 8
    assert set(report["drift"]) == {"camera", "lidar_pfe", "fuser", "head"}
    assert report["drift"]["lidar_pfe"]["pillar_features"]["snr_db"] is None        # the PFE stays FP32
    assert 0 <= report["boxes"]["matched_fraction"] <= 1 and report["boxes"]["reference_boxes"] > 0
    assert report["passed"] == (not report["failures"]) and exit_code == (0 if report["passed"] else 1)
    # the same run with bounds nobody can miss passes; with bounds nobody can meet it fails and says why
    for bounds, passes in (({"min_snr_db": 0.001, "min_matched_fraction": 0.0}, True),
                           ({"min_snr_db": 500.0, "min_matched_fraction": 1.0}, False)):
        data = recipe.to_dict()
        data["runtime"]["validate"].update(bounds)
        path = tmp_path / "recipe.yaml"
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False))
        if passes:
            main(args + ["--recipe", str(path), "-q"])
            assert json.loads(out.read_text())["passed"]
        else:
            err = _fail(args + ["--recipe", str(path)], capsys)
            assert "validation failed" in err and "dB < 500 dB" in err and str(out) in err


def test_bench_reports_stages_fps_and_overhead(quantized, scenes, tmp_path):
    out = tmp_path / "bench.json"
    main(["bench", "--bundle", str(quantized), "--data", str(scenes), "--num-samples", "2", "--throughput-frames",
          "3", "--no-cache", "--out", str(out), "-q"])
    report = json.loads(out.read_text())
    for precision in ("int8", "fp32", "fp32-default"):
        entry = report["precisions"][precision]
        assert entry["latency"]["fps"] > 0 and 0 < entry["latency"]["non_model_share"] < 1
        assert entry["latency"]["stages"]["camera"]["p90_ms"] >= entry["latency"]["stages"]["camera"]["median_ms"]
        assert "prepare" in entry["latency"]["stages"] and "prepare_background" not in entry["latency"]["stages"]
        assert entry["throughput"]["frames"] == entry["stream"]["frames"] == 3
        assert entry["throughput"]["fps"] > 0 and entry["stream"]["fps"] > 0
    files = {p: report["precisions"][p]["stages_files"] for p in ("int8", "fp32", "fp32-default")}
    assert files["fp32"]["camera"]["inference_precision"] == "f32" and files["int8"]["camera"]["precision"] == "int8"
    # FP32 at the device default: its own run where that default is not f32 (bf16 on AMX), else the f32 figures
    default = report["device_default_precision"]
    assert (report["precisions"]["fp32-default"].get("same_as") == "fp32") == (default == "f32")
    if default != "f32":
        assert files["fp32-default"]["camera"]["inference_precision"] == "default"
    assert files["fp32-default"]["lidar_pfe"]["precision"] == "fp32"
    assert report["int8_speedup"] > 1.0 and report["peak_rss_mib"] > 100
    assert report["int8_speedup_vs_fp32_default"] > 1.0
    cpu = report["cpu"]
    assert cpu["isa"] in ("amx", "avx512_bf16", "avx512_vnni", "avx512", "avx2_vnni", "avx2", "other", None)
    assert cpu["default_inference_precision"] in ("f32", "bf16") and cpu["cpu_model"]
