from __future__ import annotations

import json

import numpy as np
import onnx
import openvino as ov
import pytest
import torch

from bevport.cli import main
from bevport.export.parity import run_openvino
from bevport.models.v2xfusion import sample_inputs

OV_TYPES = {"float32": ov.Type.f32, "int32": ov.Type.i32}


def test_files_and_parity(exported, contract):
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted([s.file for s in contract] + ["parity.json", "export.json"])
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["passed"] and parity["factor"] == 20.0 and parity["floor"] == 1e-5
    assert set(parity["graphs"]) == {s.key for s in contract}
    for report in parity["graphs"].values():
        assert report["inference_precision"] == "f32"
        for out in report["outputs"].values():
            assert out["passed"] and out["scale"] > 0
            assert out["max_rel_error"] <= out["bound"] == pytest.approx(20.0 * out["torch_f32_rel_error"] + 1e-5)
            # float32 against float64: a real rounding error, far below what a wrong graph gives
            assert 0 < out["torch_f32_rel_error"] < 1e-4 and out["vs_torch_f32_rel_error"] <= 1e-4
    summary = json.loads((exported / "export.json").read_text())
    assert summary["recipe"] == "v2xfusion-pp-r34" and len(summary["checkpoint"]["sha256"]) == 64


@pytest.mark.parametrize("key", ["camera", "lidar_pfe_dynamic", "lidar_pfe", "fuser", "head"])
def test_ports_in_onnx_and_openvino(exported, contract, key):
    spec = contract[key]
    graph = onnx.load(str(exported / spec.file), load_external_data=False)
    assert graph.opset_import[0].version == 13
    initializers = {i.name for i in graph.graph.initializer}
    assert [i.name for i in graph.graph.input if i.name not in initializers] == [t.name for t in spec.inputs]
    assert [o.name for o in graph.graph.output] == [t.name for t in spec.outputs]
    model = ov.Core().read_model(str(exported / spec.file))
    for ports, tensors in ((model.inputs, spec.inputs), (model.outputs, spec.outputs)):
        assert len(ports) == len(tensors)
        for port, t in zip(ports, tensors):
            assert port.get_names() == {t.name}           # the deploy binary binds these by name
            assert port.get_any_name() == t.name
            assert port.get_element_type() == OV_TYPES[t.dtype]
            expected = ov.PartialShape([ov.Dimension() if isinstance(d, str) else d for d in t.shape])
            assert port.get_partial_shape() == expected


def test_camera_feature_is_nhwc_in_memory(exported, contract, model, recipe):
    spec = contract["camera"]
    inputs = sample_inputs(recipe, spec, seed=5)
    feature, depth = run_openvino(exported / spec.file, spec, inputs)
    assert feature.shape == (1, 80, 54, 96)
    with torch.no_grad():
        ref_feat, ref_depth = model.camera_features(torch.from_numpy(inputs["img"]))
    nhwc = feature.reshape(1, 54, 96, 80)  # how the deploy binary's BEV pool reads the buffer
    scale = float(ref_feat.abs().max())
    assert np.abs(nhwc - ref_feat.permute(0, 2, 3, 1).numpy()).max() < 1e-4 * scale
    assert np.abs(feature - ref_feat.numpy()).max() > 0.1 * scale  # read as NCHW it is *not* the feature map
    assert np.abs(depth - ref_depth.numpy()).max() < 1e-4
    np.testing.assert_allclose(depth.sum(axis=1), 1.0, atol=1e-4)  # softmax applied in the graph


def _voxels(slots, counts, rng):
    """Pillars in distinct cells with `counts` points; slot order is the file order."""
    v = len(counts)
    feats = np.zeros((v, slots, 4), np.float32)
    ix, iy = rng.choice(128, v, replace=False), rng.choice(128, v, replace=False)
    for i, n in enumerate(counts):
        feats[i, :n, 0] = ix[i] * 0.8 + rng.uniform(0, 0.8, n)
        feats[i, :n, 1] = -51.2 + iy[i] * 0.8 + rng.uniform(0, 0.8, n)
        feats[i, :n, 2] = rng.uniform(-3, 1, n)
        feats[i, :n, 3] = rng.uniform(0, 255, n)
    coors = np.stack([np.zeros(v), ix, iy, np.zeros(v)], 1).astype(np.int32)
    return feats, np.asarray(counts, np.int32), coors


def test_pfe_reproduces_training_voxels(exported, contract, model):
    """100 slots in, the training features out: the first 10 points of each voxel (file order), further ignored."""
    rng = np.random.default_rng(7)
    counts = [1, 3, 10, 11, 37, 100]
    feats, counts_arr, coors = _voxels(100, counts, rng)
    spec = contract["lidar_pfe_dynamic"]
    (got,) = run_openvino(exported / spec.file, spec, {"features": feats, "num_voxels": counts_arr, "coors": coors})
    # training: the voxelizer keeps the first 10 points, num_points = min(count, 10)
    train_feats = feats[:, :10].copy()
    with torch.no_grad():
        ref = model.pillar_features(torch.from_numpy(train_feats), torch.from_numpy(np.minimum(counts_arr, 10)),
                                    torch.from_numpy(coors)).numpy()
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    # points in slots >= 10 change nothing
    shuffled = feats.copy()
    shuffled[:, 10:] = rng.uniform(-50, 50, size=shuffled[:, 10:].shape) * (shuffled[:, 10:] != 0)
    (again,) = run_openvino(exported / spec.file, spec, {"features": shuffled, "num_voxels": counts_arr, "coors": coors})
    np.testing.assert_array_equal(again, got)


def test_static_pfe_padding_rows_are_finite(exported, contract, model):
    rng = np.random.default_rng(8)
    spec = contract["lidar_pfe"]
    feats = np.zeros((7000, 100, 4), np.float32)
    nvox = np.zeros(7000, np.int32)
    coors = np.zeros((7000, 4), np.int32)
    f, n, c = _voxels(100, list(rng.integers(1, 30, 50)), rng)
    feats[:50], nvox[:50], coors[:50] = f, n, c
    (got,) = run_openvino(exported / spec.file, spec, {"features": feats, "num_voxels": nvox, "coors": coors})
    assert got.shape == (7000, 64) and np.isfinite(got).all()
    (dyn,) = run_openvino(exported / contract["lidar_pfe_dynamic"].file, contract["lidar_pfe_dynamic"],
                          {"features": f, "num_voxels": n, "coors": c})
    assert np.abs(got[:50] - dyn).max() < 1e-4 * np.abs(dyn).max()  # other V, other kernels: f32 rounding
    np.testing.assert_allclose(got[50:], np.broadcast_to(got[60], (6950, 64)))  # all padding rows alike: relu(b')


def test_head_outputs_are_raw(exported, contract, model, recipe):
    spec = contract["head"]
    inputs = sample_inputs(recipe, spec, seed=9)
    outs = dict(zip([t.name for t in spec.outputs], run_openvino(exported / spec.file, spec, inputs)))
    with torch.no_grad():
        tasks = model.head(torch.from_numpy(inputs["middle"]))
    for name, (t, attr) in (("score", (0, "heatmap")), ("dim2", (1, "dim"))):
        ref = tasks[t][attr].numpy()
        assert np.abs(outs[name] - ref).max() < 1e-4 * np.abs(ref).max()  # logits and log-sizes, not sigmoid/exp
    assert outs["score"].min() < 0  # logits, so negative values exist


def test_fuser_input_order(exported, contract, model, recipe):
    spec = contract["fuser"]
    inputs = sample_inputs(recipe, spec, seed=4)
    (middle,) = run_openvino(exported / spec.file, spec, inputs)
    with torch.no_grad():
        ref = model.decode_bev(torch.from_numpy(inputs["cam_bev"]), torch.from_numpy(inputs["lidar_bev"])).numpy()
    assert np.abs(middle - ref).max() < 1e-4 * np.abs(ref).max()


def test_failed_export_writes_nothing(tmp_path, exported):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit) as info:
        main(["export", "--ckpt", str(bad), "--out", str(out), "--quiet"])
    assert info.value.code == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "onnx"]  # no temporary folder left behind
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(bad), "--out", str(tmp_path / "new"), "--quiet"])
    assert not (tmp_path / "new").exists()


def test_bad_recipe_exits_before_writing(tmp_path, synthetic_ckpt, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: broken\ninput: {}\n")
    with pytest.raises(SystemExit) as info:
        main(["export", "--recipe", str(recipe), "--ckpt", str(synthetic_ckpt), "--out", str(tmp_path / "o")])
    assert info.value.code == 1 and not (tmp_path / "o").exists()
    assert "broken.yaml: missing field `" in capsys.readouterr().err


def test_parity_gate_scales_with_the_graph_and_catches_a_wrong_weight(exported, contract, model, recipe):
    """The gate compares OpenVINO with a float64 run of the module: the export itself passes, and the same graph
    checked against a model whose fuser convolution differs by 0.1% fails by far."""
    import copy

    from bevport.export.parity import check_parity, float64_copy
    from bevport.models import v2xfusion

    spec = contract["fuser"]
    ok = check_parity(v2xfusion, exported / spec.file, model, float64_copy(model), spec, recipe, seed=3)
    assert ok["passed"]
    out = ok["outputs"]["middle"]
    assert out["max_rel_error"] <= out["bound"] and out["torch_f32_rel_error"] > 0
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fuser[0].weight.mul_(1.001)
    bad = check_parity(v2xfusion, exported / spec.file, other, float64_copy(other), spec, recipe, seed=3)
    assert not bad["passed"] and bad["outputs"]["middle"]["max_rel_error"] > 3 * bad["outputs"]["middle"]["bound"]


def test_head_graph_packs_a_concatenated_head_output(model, recipe):
    """A recipe may export the head as one tensor (tasks' attributes along channels, as the camera-only split does):
    the traced module then returns exactly the contract's slices."""
    from bevport.contract import build_contract
    from bevport.models.v2xfusion import HeadGraph

    data = recipe.to_dict()
    order = ["heatmap", "reg", "height", "dim", "rot", "vel"]
    data["export"]["graphs"]["head"]["outputs"] = {"tensor": "head_out", "order": order}
    contract = build_contract(type(recipe)(data, "packed head"))
    middle = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 256, 128, 128)).astype(np.float32))
    with torch.no_grad():
        (packed,) = HeadGraph(model, contract["head"]).eval()(middle)
        tasks = model.head(middle)
    assert packed.shape == (1, 30, 128, 128)
    for t, attributes in enumerate(contract.head_layout()):
        for attr, (_, start, stop) in attributes.items():
            assert torch.equal(packed[:, start:stop], tasks[t][attr])
