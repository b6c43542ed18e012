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
