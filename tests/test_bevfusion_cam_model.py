"""The camera-only BEVFusion model (Swin-T + LSS + CenterHead): upstream's checkpoint layout key for key, and the
pieces whose semantics are easy to get subtly wrong (PatchMerging's channel order, the relative position index, the
shift mask, the frustum geometry, the pooling's cell arithmetic), each against an independent formulation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from bevport.models.bevfusion_cam import BEVFusionCamera
from bevport.models.swin import PatchMerging, relative_position_index, shift_mask
from bevport.errors import DatasetError
from bevport.recipe import Node

from conftest import data_file

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "bevfusion-cam-swint.yaml"


@pytest.fixture(scope="module")
def sections():
    return yaml.safe_load(RECIPE.read_text())


@pytest.fixture(scope="module")
def cam_model(sections):
    torch.manual_seed(0)
    return BEVFusionCamera(Node(sections["model"], "model"), sections["input"]["image_size"]).eval()


def test_state_dict_is_upstream_camera_only_det_key_for_key(cam_model):
    expected = [line.split() for line in data_file("bevfusion_camonly_state_dict.txt")]
    got = [[k, "[" + ",".join(map(str, v.shape)) + "]", str(v.dtype).replace("torch.", "")]
           for k, v in cam_model.state_dict().items()]
    assert got == expected                                   # 637 entries, same order, shapes and dtypes
    assert sum(p.numel() for p in cam_model.parameters()) == 44_237_039   # with the frozen frustum and grid


def test_frustum_and_grid_are_upstreams(cam_model):
    vt = cam_model.vtransform
    assert vt.D == 118 and tuple(vt.frustum.shape) == (118, 32, 88, 3) and vt.frustum.dtype == torch.float32
    assert vt.frustum[0, 0, 0].tolist() == [0.0, 0.0, 1.0] and vt.frustum[-1, -1, -1].tolist() == [703.0, 255.0, 59.5]
    assert vt.nx.tolist() == [256, 256, 1] and vt.dx.tolist() == pytest.approx([0.4, 0.4, 20.0])
    assert vt.bx.tolist() == pytest.approx([-51.0, -51.0, 0.0])


@pytest.mark.parametrize("size", [(8, 12), (7, 9)])
def test_patch_merging_takes_unfolds_channel_order(size):
    """mmdet samples 2x2 neighbourhoods with nn.Unfold (after padding odd sizes at the bottom/right)."""
    torch.manual_seed(1)
    c = 5
    merge = PatchMerging(c, 2 * c)
    h, w = size
    x = torch.randn(2, h * w, c)
    ours, hw = merge(x, (h, w))
    grid = nn.functional.pad(x.view(2, h, w, c).permute(0, 3, 1, 2), (0, w % 2, 0, h % 2))
    unfolded = nn.Unfold(kernel_size=2, stride=2)(grid).transpose(1, 2)
    assert hw == ((h + 1) // 2, (w + 1) // 2)
    torch.testing.assert_close(ours, merge.reduction(merge.norm(unfolded)), rtol=0, atol=0)


def test_relative_position_index_is_swins():
    """The Swin paper's construction: pairwise coordinate differences shifted to >= 0, row-major in a (2W-1)^2 table."""
    w = 7
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)
    expected = rel[0] * (2 * w - 1) + rel[1]
    assert relative_position_index(w).tolist() == expected.tolist()


def test_shift_mask_separates_regions_of_the_rolled_map():
    """Two positions of a window attend to each other only when they come from the same region before the roll."""
    h, w, win, shift = 14, 21, 7, 3
    label = np.zeros((h, w), int)
    label[h - win:h - shift] += 1
    label[h - shift:] += 2
    label[:, w - win:w - shift] += 3
    label[:, w - shift:] += 6
    mask = shift_mask(h, w, win, shift).numpy()
    for n, (r, c) in enumerate((r, c) for r in range(0, h, win) for c in range(0, w, win)):
        window = label[r:r + win, c:c + win].reshape(-1)
        same = window[:, None] == window[None, :]
        assert np.array_equal(mask[n] == 0, same) and set(np.unique(mask[n])) <= {0.0, -100.0}


def nuscenes_like_rig():
    """Six cameras 1.5 m up, nuScenes' yaws, fx = fy = 1260 at 1600x900, resized 0.48 and cropped (32, 176)."""
    yaws = np.radians([0, -55, 55, 180, 110, -110])
    cam2lidar = np.zeros((6, 4, 4), np.float32)
    axes = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])   # camera x right, y down, z forward
    for i, yaw in enumerate(yaws):
        turn = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        cam2lidar[i, :3, :3] = turn @ axes
        cam2lidar[i, :3, 3] = [0.0, 0.0, 1.5]
        cam2lidar[i, 3, 3] = 1
    intrinsics = np.tile(np.eye(4, dtype=np.float32), (6, 1, 1))
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = 1260.0
    intrinsics[:, 0, 2], intrinsics[:, 1, 2] = 800.0, 450.0
    img_aug = np.tile(np.diag([0.48, 0.48, 1.0, 1.0]).astype(np.float32), (6, 1, 1))
    img_aug[:, 0, 3], img_aug[:, 1, 3] = -32.0, -176.0
    return [torch.from_numpy(a) for a in (cam2lidar, intrinsics, img_aug, np.eye(4, dtype=np.float32))]


def test_geometry_puts_each_frustum_point_on_its_pixel_ray(cam_model):
    """Back to the camera and through K and the image augmentation: every point lands on its (u, v) at its depth."""
    cam2lidar, intrinsics, img_aug, lidar_aug = nuscenes_like_rig()
    with torch.no_grad():
        geom = cam_model.geometry(cam2lidar, intrinsics, img_aug, lidar_aug).double()
    lidar2cam = torch.inverse(cam2lidar.double())
    hom = torch.cat([geom, torch.ones_like(geom[..., :1])], -1)
    cam = torch.einsum("nij,ndhwj->ndhwi", lidar2cam, hom)[..., :3]
    pix = torch.einsum("nij,ndhwj->ndhwi", intrinsics[:, :3, :3].double(), cam)
    uv = pix[..., :2] / pix[..., 2:3]
    uv = uv * 0.48 + torch.tensor([-32.0, -176.0], dtype=torch.float64)
    frustum = cam_model.vtransform.frustum.double()
    torch.testing.assert_close(uv, frustum[..., :2].expand_as(uv), rtol=0, atol=2e-3)
    torch.testing.assert_close(cam[..., 2], frustum[..., 2].expand_as(cam[..., 2]), rtol=0, atol=1e-4)


def test_pool_reference_sums_each_cells_points_with_upstreams_index_arithmetic(cam_model):
    """Against a plain loop over points: float32 ((p - (bx - dx/2)) / dx) truncated toward zero, x/y/z filter."""
    rng = np.random.default_rng(3)
    n, d, fh, fw, c = 2, 4, 3, 5, 6
    geom = torch.from_numpy(rng.uniform([-53, -53, -11], [53, 53, 11], size=(n, d, fh, fw, 3)).astype(np.float32))
    geom[0, 0, 0, 0] = torch.tensor([-51.3, 0.0, 0.0])          # truncation toward zero: -0.25 cells -> cell 0
    context = torch.from_numpy(rng.normal(size=(n, c, fh, fw)).astype(np.float32))
    depth = torch.from_numpy(rng.uniform(size=(n, d, fh, fw)).astype(np.float32))
    with torch.no_grad():
        bev = cam_model.pool_reference(geom, context, depth)[0].numpy()
    vt = cam_model.vtransform
    lo, dx = (vt.bx - vt.dx / 2.0).numpy(), vt.dx.numpy()
    expected = np.zeros((c, 256, 256), np.float64)
    inside = 0
    for i, di, h, w in np.ndindex(n, d, fh, fw):
        cell = np.trunc((geom[i, di, h, w].numpy() - lo) / dx).astype(np.int64)
        if np.all(cell >= 0) and np.all(cell < vt.nx.numpy()):
            expected[:, cell[0], cell[1]] += depth[i, di, h, w].item() * context[i, :, h, w].numpy()
            inside += 1
    assert 0 < inside < n * d * fh * fw and expected[:, 0, 128].any()
    np.testing.assert_allclose(bev, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_whole_model_runs_on_six_cameras(cam_model):
    cam2lidar, intrinsics, img_aug, lidar_aug = nuscenes_like_rig()
    with torch.no_grad():
        tasks = cam_model(torch.randn(6, 3, 256, 704), cam2lidar, intrinsics, img_aug, lidar_aug)
    assert [t["heatmap"].shape[1] for t in tasks] == [1, 2, 2, 1, 2, 2]
    assert all(t["reg"].shape == (1, 2, 128, 128) and t["vel"].shape == (1, 2, 128, 128) for t in tasks)


def test_host_geometry_and_pool_tables_reproduce_upstream_pooling(cam_model, sections):
    """NumPy geometry puts every frustum point of a nuScenes-like rig in the cell upstream's float32 arithmetic does;
    pooling through the tables (gather, batched MatMul, scatter-add) equals upstream's point-by-point sum."""
    from bevport.geometry import lss_depth

    vt = sections["model"]["camera"]["vtransform"]
    cam2lidar, intrinsics, img_aug, lidar_aug = nuscenes_like_rig()
    frustum = cam_model.vtransform.frustum.numpy()
    with torch.no_grad():
        reference = cam_model.geometry(cam2lidar, intrinsics, img_aug, lidar_aug).numpy()
    geom = np.stack([lss_depth.geometry(frustum, cam2lidar[i].numpy(), intrinsics[i].numpy(), img_aug[i].numpy(),
                                        lidar_aug.numpy()) for i in range(6)])
    np.testing.assert_allclose(geom, reference, rtol=0, atol=1e-5)
    cell, inside = lss_depth.cells(geom, vt["xbound"], vt["ybound"], vt["zbound"])
    ref_cell, ref_inside = lss_depth.cells(reference, vt["xbound"], vt["ybound"], vt["zbound"])
    assert np.array_equal(inside, ref_inside) and np.array_equal(cell[inside], ref_cell[ref_inside])
    tables = lss_depth.pool_tables(cell, inside, (256, 256))
    assert tables.points == int(inside.sum()) and 0 < tables.occupied <= tables.groups
    assert tables.rows.shape == (6 * 88, tables.width_needed) and tables.mask.shape[2] == 32
    assert int(tables.mask.sum()) == tables.points                      # every point in exactly one group
    occupied = np.unique(cell[inside])
    read = tables.first[occupied].tolist() + tables.order.tolist()
    assert len(set(read)) == len(read) == tables.groups == occupied.size + tables.further   # each group read once
    empty = np.ones(256 * 256 + 1, bool)
    empty[occupied] = False
    assert not tables.mask.reshape(-1, 32)[tables.first[empty]].any()  # empty cells and the spare row read zeros
    assert (tables.cells < 256 * 256).all() and tables.further == tables.groups - occupied.size
    wide = lss_depth.pool_tables(cell, inside, (256, 256), tables.width_needed + 7, tables.further + 11)
    assert (wide.cells[tables.further:] == 256 * 256).all()             # padding only into the spare row
    assert not wide.mask.reshape(-1, 32)[wide.order[tables.further:]].any()   # ... and it adds zeros
    with pytest.raises(DatasetError, match="export.pool_groups = 100"):
        lss_depth.pool_tables(cell, inside, (256, 256), 100)
    with pytest.raises(DatasetError, match="export.pool_scatter_rows = 1000"):
        lss_depth.pool_tables(cell, inside, (256, 256), None, 1000)

    rng = np.random.default_rng(5)
    depth = torch.from_numpy(rng.uniform(size=(6, 118, 32, 88)).astype(np.float32)).softmax(dim=1)
    context = torch.from_numpy(rng.normal(size=(6, 80, 32, 88)).astype(np.float32))
    with torch.no_grad():
        expected = cam_model.pool_reference(torch.from_numpy(reference), context, depth).numpy()
    for t in (tables, wide):
        np.testing.assert_allclose(lss_depth.pool(t, depth.numpy(), context.numpy()), expected, rtol=0,
                                   atol=1e-5 * np.abs(expected).max())



def test_pool_graph_in_openvino_equals_upstream_pooling(cam_model, sections, tmp_path):
    """The `pool` part as written (ONNX, opset 16, standard ops), read and run by OpenVINO at f32 on the rig's
    tables at the recipe's static sizes, equals upstream's point-by-point pooling."""
    import onnx
    import openvino as ov

    from bevport.export.pool_onnx import pool_model
    from bevport.geometry import lss_depth

    vt = sections["model"]["camera"]["vtransform"]
    groups, rows = sections["export"]["pool_groups"], sections["export"]["pool_scatter_rows"]
    cam2lidar, intrinsics, img_aug, lidar_aug = nuscenes_like_rig()
    with torch.no_grad():
        geom = cam_model.geometry(cam2lidar, intrinsics, img_aug, lidar_aug)
    cell, inside = lss_depth.cells(geom.numpy(), vt["xbound"], vt["ybound"], vt["zbound"])
    tables = lss_depth.pool_tables(cell, inside, (256, 256), groups, rows)
    names = sections["export"]["graphs"]["pool"]["inputs"]
    path = tmp_path / "pool.onnx"
    onnx.save(pool_model(names, "bev", 6, 118, (32, 88), 80, groups, rows, (256, 256)), str(path))
    rng = np.random.default_rng(9)
    depth = torch.from_numpy(rng.normal(size=(6, 118, 32, 88)).astype(np.float32)).softmax(dim=1)
    context = torch.from_numpy(rng.normal(size=(6, 80, 32, 88)).astype(np.float32))
    feed = dict(zip(names, (context.numpy(), depth.numpy()) + tables.inputs()))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    bev = compiled.infer_new_request(feed)[compiled.output(0)]
    with torch.no_grad():
        expected = cam_model.pool_reference(geom, context, depth).numpy()
    np.testing.assert_allclose(bev, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
