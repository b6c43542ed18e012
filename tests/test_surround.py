"""Synthetic surround-view scenes in nuScenes' layout: deterministic, readable as an info file, and geometrically
consistent (what the info file says about cameras and boxes is what the images show)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bevport.data import surround
from bevport.data.infos import read_infos
from bevport.data.scenes import box_corners
from bevport.errors import DatasetError

CAMERAS = [c[0] for c in surround.CAMERAS]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("surround") / "nuscenes"
    return surround.write_synthetic_surround(out, 2, 5)


def test_frames_depend_on_seed_and_index_only():
    a, b = surround.make_scene(5, 1), surround.make_scene(5, 1)
    assert np.array_equal(a.boxes, b.boxes) and a.names == b.names
    assert all(np.array_equal(np.asarray(a.images[n]), np.asarray(b.images[n])) for n in CAMERAS)
    other = surround.make_scene(5, 2)
    assert not np.array_equal(a.boxes, other.boxes)
    assert all(np.array_equal(x.camera2ego, y.camera2ego) for x, y in zip(a.cameras, other.cameras))   # one rig


def test_info_file_reads_back_in_converter_order(written):
    samples = read_infos(written / surround.INFO_FILE, written, CAMERAS)
    assert len(samples) == 2 and [c.name for c in samples[0].cameras] == CAMERAS
    assert all(c.image.is_file() and c.image.stat().st_size > 10_000 for s in samples for c in s.cameras)
    front = samples[0].cameras[0]
    axis = front.camera2lidar[:3, 2]                        # the front camera looks along LiDAR +y (car forward)
    assert axis[1] > 0.99 and abs(axis[0]) < 0.02
    assert 0 < int(samples[0].valid.sum()) <= len(samples[0].gt_names)


def test_boxes_and_cameras_in_the_info_file_match_the_images(written):
    """Each visible object's centre, taken from the info file (mmdet3d's box layout in the LIDAR_TOP frame) and
    projected with the info file's camera matrices, falls inside the pixels the renderer drew for that object."""
    (sample, _) = read_infos(written / surround.INFO_FILE, written, CAMERAS)
    scene = surround.make_scene(5, 0)
    boxes = sample.gt_boxes
    checked = 0
    for cam in sample.cameras:
        instance_map = scene.instance_maps[cam.name]
        lidar2cam = np.linalg.inv(cam.camera2lidar.astype(np.float64))
        for k in np.unique(instance_map):
            rows, cols = np.nonzero(instance_map == k)
            if k == 0 or rows.size < 400:
                continue
            centre = lidar2cam @ np.append(boxes[k - 1, :3], 1.0)
            u, v, w = cam.intrinsics @ centre[:3]
            margin = 0.1 * max(np.ptp(cols), np.ptp(rows)) + 2
            assert cols.min() - margin <= u / w <= cols.max() + margin and rows.min() - margin <= v / w <= rows.max() + margin
            checked += 1
    assert checked >= 5


def test_info_boxes_use_mmdet3ds_layout():
    """(x, y, z, w, l, h, -yaw - pi/2) in the LiDAR frame: decoding it gives the ego-frame box's corners."""
    scene = surround.make_scene(5, 0)
    info = surround.info_boxes(surround.to_lidar(scene.boxes))
    x, y, z, w, l, h, yaw_mm = info.T
    decoded = np.stack([x, y, z, l, w, h, -yaw_mm - math.pi / 2], 1)
    for box_ego, box_lidar in zip(scene.boxes, decoded):
        corners_lidar = box_corners(box_lidar)
        corners_ego = corners_lidar @ surround.LIDAR_ROTATION.T + surround.LIDAR_TO_EGO
        np.testing.assert_allclose(corners_ego, box_corners(box_ego), atol=1e-9)


def test_existing_folder_and_bad_counts_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(DatasetError, match="already exists"):
        surround.write_synthetic_surround(tmp_path / "x", 1, 0)
    with pytest.raises(DatasetError, match="frames must be a positive integer"):
        surround.write_synthetic_surround(tmp_path / "y", 0, 0)


def test_the_nuscenes_format_reads_the_synthetic_scenes(written):
    """Frames with six cameras whose camera -> LiDAR matrix is the info file's own (float32, not re-inverted), and
    labels as upstream's validation counts them."""
    from types import SimpleNamespace

    from bevport.formats import nuscenes

    recipe = SimpleNamespace(input=SimpleNamespace(camera_names=CAMERAS))
    dataset = nuscenes.open_dataset(recipe, written)
    assert len(dataset) == 2 and nuscenes.has_labels(dataset)
    frame = dataset.frame(0)
    assert [c.name for c in frame.cameras] == CAMERAS and frame.points_path is None
    cam = frame.cameras[3]
    assert cam.camera2lidar.dtype == np.float32 and cam.image().size == (1600, 900)
    boxes, labels = nuscenes.ground_truth(frame, ["car", "pedestrian", "barrier"])
    scene = surround.make_scene(5, 0)
    seen = [k for k, n in enumerate(scene.names) if n in ("car", "pedestrian", "barrier")
            and any((m == k + 1).any() for m in scene.instance_maps.values())]
    np.testing.assert_allclose(boxes, surround.to_lidar(scene.boxes[seen]), atol=1e-9)
    assert [scene.names[k] for k in seen] == [["car", "pedestrian", "barrier"][i] for i in labels]
    (written / "samples" / "CAM_BACK").rename(written / "samples" / "CAM_BACK_gone")
    try:
        with pytest.raises(DatasetError, match="CAM_BACK image not found"):
            dataset.frame(1)
    finally:
        (written / "samples" / "CAM_BACK_gone").rename(written / "samples" / "CAM_BACK")
    with pytest.raises(DatasetError, match="no info file"):
        nuscenes.open_dataset(recipe, written, "train")


def test_camera_preprocessing_is_mit_bevfusions_bit_for_bit(written):
    """ImageAug3D at test time (PIL resize 0.48, bottom-aligned crop) and torchvision's ToTensor + Normalize, as
    torch computes them, on the synthetic scenes' six images; the augmentation matrix as ImageAug3D records it."""
    import torch
    import yaml
    from PIL import Image

    from bevport.data import imageaug
    from bevport.recipe import Node

    from test_bevfusion_cam_model import RECIPE

    recipe = Node(yaml.safe_load(RECIPE.read_text()), "", "recipe")
    paths = sorted((written / "samples").glob("CAM_*/*__1530000000000000.jpg"))
    images = [Image.open(p) for p in paths]
    ours = imageaug.camera_tensor(recipe, images)
    mean = torch.tensor(recipe.input.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(recipe.input.std, dtype=torch.float32)[:, None, None]
    for i, image in enumerate(images):
        cropped = image.resize((768, 432)).crop((32, 176, 736, 432))
        tensor = torch.from_numpy(np.array(cropped, np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
        expected = tensor.sub_(mean).div_(std).numpy()
        assert np.array_equal(ours[i], expected)
    expected_matrix = np.array([[0.48, 0, 0, -32], [0, 0.48, 0, -176], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    assert np.array_equal(imageaug.img_aug_matrix(recipe), expected_matrix)
    with pytest.raises(DatasetError, match="expects 1600x900"):
        imageaug.camera_tensor(recipe, [images[0].resize((800, 450))], ["small.jpg"])


def test_the_official_tables_give_the_info_files_samples(written):
    """The tables the synthetic dataset writes, converted as mmdet3d's converter converts them (camera -> LiDAR
    through the global frame, boxes into the LiDAR frame with pyquaternion's yaw), equal the info file the generator
    computed directly: two independent routes to the same frames."""
    from types import SimpleNamespace

    from bevport.formats import nuscenes

    recipe = SimpleNamespace(input=SimpleNamespace(camera_names=CAMERAS))
    from_infos = nuscenes.open_dataset(recipe, written)
    from_tables = nuscenes.open_dataset(recipe, written, "v1.0-synthetic")
    assert from_tables.info_path.name == "v1.0-synthetic" and from_tables.ids == from_infos.ids
    for a, b in zip(from_infos.samples, from_tables.samples):
        assert [c.image for c in a.cameras] == [c.image for c in b.cameras]
        for ca, cb in zip(a.cameras, b.cameras):
            np.testing.assert_allclose(cb.camera2lidar, ca.camera2lidar, atol=2e-6)
            np.testing.assert_allclose(cb.intrinsics, ca.intrinsics, rtol=1e-12)
        assert b.gt_names == a.gt_names and np.array_equal(b.num_lidar_pts, a.num_lidar_pts)
        np.testing.assert_allclose(b.gt_boxes[:, :6], a.gt_boxes[:, :6], atol=1e-9)
        assert np.allclose(np.cos(b.gt_boxes[:, 6] - a.gt_boxes[:, 6]), 1.0, atol=1e-12)
        np.testing.assert_allclose(b.lidar2ego.rotation, a.lidar2ego.rotation, atol=1e-12)
        assert np.isnan(b.gt_velocity).all()          # lone annotations: the devkit has no velocity for them
    with pytest.raises(DatasetError, match="no nuScenes tables .*named v1.0-trainval"):
        nuscenes.open_dataset(recipe, written, "v1.0-trainval")
