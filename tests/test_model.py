from __future__ import annotations

import numpy as np
import pytest
import torch

from bevport.models.synthetic import synthetic_state_dict
from bevport.models.v2xfusion import V2XFusion
from conftest import data_file


def test_state_dict_is_key_for_key_upstream(recipe):
    lines = data_file("v2xfusion_state_dict.txt")
    mine = [f"{k} [{','.join(map(str, v.shape))}]" for k, v in V2XFusion(recipe).state_dict().items()]
    assert len(lines) == 472
    assert mine == lines


def test_grid_parameters(recipe):
    sd = V2XFusion(recipe).state_dict()
    assert sd["encoders.camera.vtransform.dx"].tolist() == pytest.approx([0.8, 0.8, 8.0])
    assert sd["encoders.camera.vtransform.bx"].tolist() == pytest.approx([0.4, -50.8, -1.0])
    assert sd["encoders.camera.vtransform.nx"].tolist() == [128, 128, 1]
    assert sd["encoders.camera.vtransform.nx"].dtype == torch.int64


def test_synthetic_checkpoint_is_deterministic_and_realistic(recipe, synthetic_ckpt, tmp_path):
    from bevport.models.synthetic import write_synthetic_checkpoint

    write_synthetic_checkpoint(recipe, 0, tmp_path / "again.pth")
    assert (tmp_path / "again.pth").read_bytes() == synthetic_ckpt.read_bytes()
    other = synthetic_state_dict(recipe, 1)
    sd = torch.load(str(synthetic_ckpt), map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(other["fuser.0.weight"], sd["fuser.0.weight"])
    assert all(v.dtype == torch.float32 for k, v in sd.items() if not k.endswith(("nx", "num_batches_tracked")))
    bn_vars = [v for k, v in sd.items() if k.endswith("running_var")]
    bn_means = [v for k, v in sd.items() if k.endswith("running_mean")]
    assert len(bn_vars) == 74
    assert all(v.min() > 0 for v in bn_vars)
    assert sum(float((v - 1).abs().mean()) > 0.05 for v in bn_vars) > 60       # measured, not default statistics
    assert sum(float(m.abs().mean()) > 0.01 for m in bn_means) > 60
    pfn_mean = sd["encoders.lidar.backbone.pts_voxel_encoder.pfn_layers.0.bn.running_mean"]
    assert pfn_mean[3] > 20  # intensity 0..255 -> a large input-BN mean, as in the real model


def test_pfn_numerics(model, recipe):
    """Decoration, masking before the input BN, padded slots in the max, eps 1e-3 — against a NumPy rendition."""
    pfn = model.pfn
    layer = pfn.pfn_layers[0]
    assert layer.norm.eps == 1e-3 and layer.bn.eps == 1e-5 and layer.bn.num_features == 9
    rng = np.random.default_rng(3)
    feats = np.zeros((2, 10, 4), np.float32)
    feats[0, :3] = [[10.1, -3.0, -1.0, 40.0], [10.5, -3.3, -0.5, 80.0], [10.3, -3.1, 0.2, 10.0]]
    feats[1, :1] = [[0.2, 51.0, -2.0, 255.0]]
    sizes = np.array([3, 1], np.int32)
    coors = np.array([[0, 12, 60, 0], [0, 0, 127, 0]], np.int32)
    out = model.pillar_features(torch.from_numpy(feats), torch.from_numpy(sizes), torch.from_numpy(coors)).detach()

    sd = {k: v.double().numpy() for k, v in layer.state_dict().items() if "num_batches" not in k}
    dec = np.zeros((2, 10, 9))
    for v in range(2):
        pts = feats[v, : sizes[v]].astype(np.float64)
        mean = pts[:, :3].mean(0)
        centre = np.array([coors[v, 1] * 0.8 + 0.4, coors[v, 2] * 0.8 - 51.2 + 0.4])
        dec[v, : sizes[v]] = np.concatenate([pts, pts[:, :3] - mean, pts[:, :2] - centre], 1)
    x = (dec - sd["bn.running_mean"]) / np.sqrt(sd["bn.running_var"] + 1e-5) * sd["bn.weight"] + sd["bn.bias"]
    x = x @ sd["linear.weight"].T
    x = (x - sd["norm.running_mean"]) / np.sqrt(sd["norm.running_var"] + 1e-3) * sd["norm.weight"] + sd["norm.bias"]
    expected = np.maximum(x, 0).max(1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_folded_pfn_equals_unfolded(model):
    layer = model.pfn.pfn_layers[0]
    w, b = layer.folded()
    x = torch.randn(50, 10, 9) * torch.tensor([30, 30, 1, 100, 0.3, 0.3, 0.5, 0.4, 0.4])
    with torch.no_grad():
        np.testing.assert_allclose(torch.relu(x @ w.t() + b).max(1)[0].numpy(), layer(x).numpy(), rtol=1e-5,
                                   atol=1e-4)


def test_scatter_is_x_major(model):
    feats = torch.arange(2 * 64, dtype=torch.float32).view(2, 64)
    coords = torch.tensor([[0, 5, 100, 0], [0, 127, 3, 0]], dtype=torch.int32)
    canvas = model.scatter(feats, coords, 1)
    assert canvas.shape == (1, 64, 128, 128)
    assert torch.equal(canvas[0, :, 5, 100], feats[0]) and torch.equal(canvas[0, :, 127, 3], feats[1])
    assert canvas.abs().sum() == feats.abs().sum()


def test_neck_uses_level_one_and_concat_orders(model):
    """camera_features reads the stride-16 level; the fuser puts the camera BEV first."""
    with torch.no_grad():
        img = torch.randn(1, 3, 256, 384)
        cam = model.encoders["camera"]
        levels = cam["neck"](cam["backbone"](img))
        assert [tuple(l.shape) for l in levels] == [(1, 256, 32, 48), (1, 256, 16, 24)]
        feat, depth = model.camera_features(img)
        y = cam["vtransform"].depthnet(levels[1])
        assert torch.allclose(feat, y[:, 90:]) and torch.allclose(depth, y[:, :90].softmax(1))
        cam_bev, lidar_bev = torch.rand(1, 80, 128, 128), torch.rand(1, 64, 128, 128)
        fused = model.fuser([cam_bev, lidar_bev])
        conv = model.fuser[0]
        direct = torch.nn.functional.conv2d(torch.cat([cam_bev, lidar_bev], 1), conv.weight, padding=1)
        assert torch.allclose(fused, model.fuser[2](model.fuser[1](direct)), atol=1e-5)
