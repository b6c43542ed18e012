"""The camera-only recipe end to end through `bevport export`: a synthetic checkpoint in the upstream layout, the five
parts as ONNX with the contract's ports, parity in OpenVINO against the native modules, and the frustum beside them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bevport.cli import main
from bevport.contract import build_contract
from bevport.errors import RecipeError
from bevport.recipe import load_recipe

RECIPE = "bevfusion-cam-swint"


@pytest.fixture(scope="module")
def cam_recipe():
    return load_recipe(RECIPE)


@pytest.fixture(scope="module")
def cam_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cam")
    main(["synth-ckpt", "--recipe", RECIPE, "--out", str(folder / "cam.pth"), "-q"])
    main(["export", "--recipe", RECIPE, "--ckpt", str(folder / "cam.pth"), "--out", str(folder / "onnx"), "-q"])
    return folder


def test_the_recipe_gives_qualcomms_five_parts(cam_recipe):
    contract = build_contract(cam_recipe)
    assert [s.key for s in contract] == ["image_encoder", "lift", "pool", "downsample", "decoder"]
    assert contract["image_encoder"].inputs[0].shape == (6, 3, 256, 704)
    assert contract["image_encoder"].outputs[0].shape == (6, 256, 32, 88)
    assert contract["pool"].outputs[0].shape == (1, 80, 256, 256)
    assert contract["downsample"].outputs[0].shape == (1, 80, 128, 128)
    assert contract["decoder"].outputs[0].shape == (1, 70, 128, 128)      # 6 tasks x (10 + classes), Qualcomm's 70
    assert cam_recipe.class_names[:3] == ["car", "truck", "construction_vehicle"]


@pytest.mark.parametrize("change, field", [
    ({"model": {"camera": {"neck": {"in_channels": [192, 384, 512]}}}}, "model.camera.neck.in_channels"),
    ({"model": {"camera": {"vtransform": {"feature_size": [16, 44]}}}}, "model.camera.vtransform.feature_size"),
    ({"export": {"pool_groups": 64}}, "export.pool_groups"),
    ({"model": {"head": {"test_cfg": {"nms_type": ["circle"]}}}}, "model.head.test_cfg.nms_type"),
])
def test_contradictions_in_the_recipe_are_named(cam_recipe, change, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        cam_recipe.updated(change)


def test_export_writes_five_parts_that_pass_parity_and_the_checkpoints_frustum(cam_export):
    import torch

    from bevport.checkpoint import read_checkpoint

    onnx_dir = cam_export / "onnx"
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["passed"] and set(parity["graphs"]) == {"image_encoder", "lift", "pool", "downsample", "decoder"}
    worst = max(o["max_rel_error"] for g in parity["graphs"].values() for o in g["outputs"].values())
    assert worst < 1e-4
    summary = json.loads((onnx_dir / "export.json").read_text())
    assert set(summary["files"]) == {"image_encoder.onnx", "lift.onnx", "pool.onnx", "downsample.onnx", "decoder.onnx"}
    assert list(summary["artifacts"]) == ["frustum.npy"]
    state, _ = read_checkpoint(cam_export / "cam.pth")
    frustum = np.load(onnx_dir / "frustum.npy", allow_pickle=False)
    assert frustum.dtype == np.float32 and torch.equal(torch.from_numpy(frustum),
                                                       state["encoders.camera.vtransform.frustum"])


def test_a_checkpoint_of_the_other_model_is_named_as_such(cam_export, synthetic_ckpt, cam_recipe, recipe):
    """The V2XFusion checkpoint given to the camera-only recipe, and the reverse: one message saying what it is."""
    from bevport.checkpoint import load_weights
    from bevport.errors import CheckpointError
    from bevport.models import architecture

    with pytest.raises(CheckpointError, match="camera\\+LiDAR BEVFusion / V2XFusion checkpoint.*camera-only"):
        load_weights(architecture(cam_recipe).build(cam_recipe), synthetic_ckpt)
    with pytest.raises(CheckpointError, match="camera-only BEVFusion checkpoint \\(Swin-T.*camera\\+LiDAR"):
        load_weights(architecture(recipe).build(recipe), cam_export / "cam.pth")


def test_calibrate_and_infer_run_the_five_parts_on_surround_frames(cam_export, tmp_path, capsys):
    """The pipeline on synthetic nuScenes-layout frames: one rig, its tables built once and said so; every part's
    feed stored for calibration; FP32 inference to boxes of the six tasks' classes."""
    from bevport.runtime.infer import RuntimeOptions, run_infer

    scenes = tmp_path / "scenes"
    main(["synth-data", "--recipe", RECIPE, "--frames", "2", "--seed", "3", "--out", str(scenes), "-q"])
    calib = tmp_path / "calib"
    main(["calibrate", "--recipe", RECIPE, "--onnx", str(cam_export / "onnx"), "--data", str(scenes),
          "--num-samples", "1", "--holdout", "1", "--out", str(calib)])
    err = capsys.readouterr().err
    assert err.count("new camera rig, pool tables built") == 1
    manifest = json.loads((calib / "manifest.json").read_text())
    assert [f["role"] for f in manifest["frames"]] == ["calibration", "holdout"]
    assert all(f["occupied_cells"] > 40_000 for f in manifest["frames"])
    for part in ("image_encoder", "lift", "pool", "downsample", "decoder"):
        assert len(list((calib / part).glob("*.npz"))) == 2
    recipe = load_recipe(RECIPE)
    summary = run_infer(recipe, cam_export / "onnx", scenes, RuntimeOptions(int8={g: False for g in
                        recipe.quantize.graphs}, cache_dir=None), num_samples=1)
    assert len(summary["frames"]) == 1 and summary["boxes_per_frame"][0] >= 0
    assert set(summary["stages"]) == {"image_encoder", "lift", "pool", "downsample", "decoder"}


def test_quantize_carries_exports_artifacts_and_refuses_a_changed_one(cam_export, tmp_path):
    from bevport.errors import QuantizeError
    from bevport.quantize.ptq import copy_artifacts

    out = tmp_path / "ir"
    out.mkdir()
    assert list(copy_artifacts(cam_export / "onnx", out)) == ["frustum.npy"]
    assert (out / "frustum.npy").read_bytes() == (cam_export / "onnx" / "frustum.npy").read_bytes()
    changed = tmp_path / "onnx"
    changed.mkdir()
    for name in ("export.json", "frustum.npy"):
        (changed / name).write_bytes((cam_export / "onnx" / name).read_bytes())
    with open(changed / "frustum.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(QuantizeError, match="missing or changed since export"):
        copy_artifacts(changed, out)


def test_graphs_without_their_frustum_are_refused_by_name(cam_recipe, tmp_path):
    from bevport.contract import build_contract
    from bevport.errors import GraphError
    from bevport.runtime.pipeline import pipeline_class

    pipeline = pipeline_class(cam_recipe)(cam_recipe, build_contract(cam_recipe), {})
    with pytest.raises(GraphError, match="frustum.npy: cannot read the frustum"):
        pipeline.attach(tmp_path)
    np.save(tmp_path / "frustum.npy", np.zeros((118, 32, 88, 2), np.float32))
    with pytest.raises(GraphError, match=r"needs float32 \[118, 32, 88, 3\]"):
        pipeline.attach(tmp_path)
