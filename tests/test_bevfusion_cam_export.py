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


# (x, y, z_centre, w, l, h, yaw) and label per box: one of each class, far apart, plus a second pedestrian 1 m from
# the first with a lower score. Pedestrians' 0.7 m boxes do not overlap at 1 m, but nms_scale 2.5 makes them
# 1.75 m boxes with an IoU of 0.27 > nms_thr 0.2: the task's rotated NMS with upstream's per-class scale drops it.
PLANTED = [((-30.0, -30.0, -1.0, 1.9, 4.5, 1.6, 0.3), 0), ((-30.0, 0.0, -0.5, 2.5, 8.0, 3.0, -1.2), 1),
           ((-30.0, 30.0, -0.5, 2.8, 6.0, 3.1, 2.0), 2), ((0.0, -30.0, 0.0, 2.9, 11.0, 3.5, 0.0), 3),
           ((0.0, 30.0, 0.0, 2.9, 12.0, 3.8, 1.5), 4), ((30.0, -30.0, -1.2, 2.4, 0.5, 1.0, 0.7), 5),
           ((30.0, 0.0, -1.0, 0.8, 2.1, 1.5, -0.4), 6), ((30.0, 30.0, -1.0, 0.6, 1.7, 1.3, 2.5), 7),
           ((12.0, 12.0, -0.9, 0.7, 0.7, 1.8, 0.0), 8), ((-12.0, 12.0, -1.5, 0.4, 0.4, 1.0, 0.0), 9),
           ((13.0, 12.0, -0.9, 0.7, 0.7, 1.8, 0.0), 8)]


def test_planted_decoder_outputs_come_out_as_the_planted_boxes(cam_export, cam_recipe, tmp_path):
    """The five parts in OpenVINO on a synthetic surround frame, the decoder replaced by one that emits planted head
    maps: the six tasks decode (circle NMS for car and barrier, rotated NMS with nms_scale elsewhere) to exactly the
    planted boxes, labels in the recipe's class order, and the results file puts them where they were planted."""
    import shutil

    from planted import encode, head_spec, write_head_ir

    from bevport.runtime.infer import RuntimeOptions, iterate_frames, open_pipeline

    contract = build_contract(cam_recipe)
    folder = tmp_path / "graphs"
    shutil.copytree(cam_export / "onnx", folder)
    boxes, labels = [b for b, _ in PLANTED], [label for _, label in PLANTED]
    maps = encode(cam_recipe, contract, boxes, labels)
    task, first = 5, 8                      # the weaker second pedestrian: task 5's first heatmap channel
    name, start, _ = contract.head_layout()[task]["heatmap"]
    cell = cam_recipe.model.head.bbox_coder.out_size_factor * cam_recipe.model.head.bbox_coder.voxel_size[0]
    maps[name][0, start + labels[-1] - first, int((13.0 + 51.2) / cell), int((12.0 + 51.2) / cell)] = 2.0
    (folder / "decoder.onnx").unlink()
    write_head_ir(contract, maps, folder / "decoder.xml")
    assert head_spec(contract).key == "decoder"

    scenes = tmp_path / "scenes"
    main(["synth-data", "--recipe", RECIPE, "--frames", "1", "--seed", "2", "--out", str(scenes), "-q"])
    runtime = open_pipeline(cam_recipe, folder, RuntimeOptions(int8={g: False for g in cam_recipe.quantize.graphs},
                                                               cache_dir=None))
    from bevport.formats.nuscenes import open_dataset

    (outcome,) = list(iterate_frames(runtime, open_dataset(cam_recipe, scenes), 1, "fail", print, []))
    det = outcome.detections
    expected = np.array(boxes[:-1])
    order = np.lexsort((det.boxes[:, 1], det.boxes[:, 0]))
    want = np.lexsort((expected[:, 1], expected[:, 0]))
    assert det.labels[order].tolist() == [labels[i] for i in want]
    np.testing.assert_allclose(det.boxes[order, :2], expected[want, :2], atol=1e-4)
    np.testing.assert_allclose(det.boxes[order, 2], expected[want, 2] - expected[want, 5] / 2, atol=1e-5)
    np.testing.assert_allclose(det.boxes[order, 3:6], expected[want, 3:6], rtol=1e-5)
    np.testing.assert_allclose(np.cos(det.boxes[order, 6] - expected[want, 6]), 1.0, atol=1e-6)


def test_the_chained_parts_in_openvino_equal_the_whole_pytorch_model(cam_export, cam_recipe, tmp_path):
    """A synthetic surround frame through the runtime pipeline (host preprocessing and pool tables, the five FP32
    parts in OpenVINO at f32) gives the head maps the whole native model computes from the same images and matrices
    (upstream's geometry and point-by-point pooling in torch, no tables)."""
    import torch

    from bevport.checkpoint import load_weights
    from bevport.data.imageaug import img_aug_matrix
    from bevport.formats.nuscenes import open_dataset
    from bevport.models import architecture
    from bevport.models.head import head_tensors
    from bevport.runtime.infer import RuntimeOptions, iterate_frames, open_pipeline

    scenes = tmp_path / "scenes"
    main(["synth-data", "--recipe", RECIPE, "--frames", "1", "--seed", "8", "--out", str(scenes), "-q"])
    runtime = open_pipeline(cam_recipe, cam_export / "onnx",
                            RuntimeOptions(int8={g: False for g in cam_recipe.quantize.graphs}, cache_dir=None))
    (outcome,) = list(iterate_frames(runtime, open_dataset(cam_recipe, scenes), 1, "fail", print, []))
    (got,) = runtime.pipeline.head_outputs(outcome.result).values()

    model = architecture(cam_recipe).build(cam_recipe)
    load_weights(model, cam_export / "cam.pth")
    inputs = outcome.result.inputs
    img_aug = torch.from_numpy(np.stack([img_aug_matrix(cam_recipe)] * len(inputs.img)))
    with torch.no_grad():
        tasks = model(torch.from_numpy(inputs.img), torch.from_numpy(inputs.camera2lidar),
                      torch.from_numpy(inputs.intrinsics), img_aug, torch.eye(4))
    contract = build_contract(cam_recipe)
    (expected,) = [t.numpy() for t in head_tensors(tasks, [t.slices for t in contract["decoder"].outputs])]
    assert got.shape == expected.shape == (1, 70, 128, 128)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
