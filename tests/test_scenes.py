from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bevport.data import open_dataset
from bevport.data.scenes import (SceneParams, _angular_window, bev_overlap, box_corners, make_scene, ray_box_distance,
                                 rotate_z, scan_pattern, write_synthetic_dataset)
from bevport.errors import DatasetError
from bevport.geometry.boxes import wrap_angle

PILLAR = 0.8


def points_in_box(points: np.ndarray, box, margin: float = 0.0) -> np.ndarray:
    """Mask of the points (x, y, z, ...) inside a LiDAR box (x, y, z_center, l, w, h, yaw) grown by `margin`."""
    local = rotate_z(points[:, :3] - np.asarray(box[:3]), -box[6])
    return np.all(np.abs(local) <= np.asarray(box[3:6]) / 2 + margin, axis=1)


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(0, i) for i in range(2)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "seed0", 2, 0)


def tree_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def pillar_count(points: np.ndarray) -> int:
    x, y = points[:, 0], points[:, 1]
    grid = (x >= 0) & (x < 102.4) & (y >= -51.2) & (y < 51.2)
    ix = np.floor(x[grid] / PILLAR).astype(np.int64)
    iy = np.floor((y[grid] + 51.2) / PILLAR).astype(np.int64)
    return len(np.unique(ix * 128 + iy))


def project(calib, xyz: np.ndarray):
    cam = (calib.lidar2cam @ np.c_[xyz, np.ones(len(xyz))].T).T[:, :3]
    uvw = cam @ calib.intrinsics.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


# ---------------------------------------------------------------------------------------------- determinism

def test_same_seed_writes_byte_identical_files_and_frames_do_not_depend_on_the_count(dataset, tmp_path):
    first = tree_hashes(dataset)
    assert tree_hashes(write_synthetic_dataset(tmp_path / "again", 2, 0)) == first
    longer = tree_hashes(write_synthetic_dataset(tmp_path / "three", 3, 0))
    for name, digest in first.items():
        if "000001" in name or "000000" in name:
            assert longer[name] == digest, name
    assert "image_2/000002.jpg" in longer
    other = tree_hashes(write_synthetic_dataset(tmp_path / "seed1", 1, 1))
    for folder, suffix in (("image_2", "jpg"), ("velodyne", "bin"), ("calib", "txt"), ("label_2", "txt")):
        name = f"{folder}/000000.{suffix}"
        assert other[name] != first[name], name


def test_start_id_names_frames_by_their_index(dataset, tmp_path):
    shifted = write_synthetic_dataset(tmp_path / "shifted", 1, 0, start_id=1)
    assert open_dataset(shifted).ids == ["000001"]
    assert tree_hashes(shifted)["velodyne/000001.bin"] == tree_hashes(dataset)["velodyne/000001.bin"]


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        write_synthetic_dataset(out, 1, 0)
    assert (out / "keep.txt").read_text() == "mine"
    write_synthetic_dataset(out, 1, 0, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "image_2" / "000000.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]       # no temporary folder left behind


def test_bad_arguments_name_the_setting(tmp_path):
    with pytest.raises(DatasetError, match="frames"):
        write_synthetic_dataset(tmp_path / "a", 0, 0)
    with pytest.raises(DatasetError, match="seed"):
        make_scene(-1, 0)
    with pytest.raises(DatasetError, match="unknown scene parameter"):
        make_scene(0, 0, lanes=3)
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------------- read back

def test_dataset_reads_back_with_open_dataset(dataset, scenes):
    ds = open_dataset(dataset)
    assert ds.ids == ["000000", "000001"]
    assert (dataset / "ImageSets" / "val.txt").read_text().split() == ds.ids
    assert open_dataset(dataset, split="val").ids == ds.ids
    meta = json.loads((dataset / "bevport_synthetic.json").read_text())
    assert (meta["seed"], meta["frames"], meta["params"]["density"]) == (0, 2, 1.0)
    for i, scene in enumerate(scenes):
        frame = ds.frame(i)
        image = frame.image()
        assert image.size == (1920, 1080)
        assert np.abs(np.asarray(image, np.int16) - np.asarray(scene.image, np.int16)).mean() < 3   # JPEG
        points = frame.points()
        assert points.dtype == np.float32 and points.shape[1] == 4
        np.testing.assert_array_equal(points, scene.points)
        np.testing.assert_array_equal(frame.calib.lidar2cam, scene.calib.lidar2cam)
        np.testing.assert_array_equal(frame.calib.intrinsics, scene.calib.intrinsics)
        assert frame.objects == scene.objects and len(frame.objects) > 0


def test_scene_grid_matches_the_recipe(recipe):
    pcr = recipe.model.lidar.voxelize.point_cloud_range
    assert SceneParams().bev_range == (pcr[0], pcr[1], pcr[3], pcr[4])
    low, high = recipe.model.camera.vtransform.dbound[:2]
    assert low < SceneParams().ground_z < high


# ---------------------------------------------------------------------------------------------- LiDAR

def test_point_counts_are_dair_like_and_density_raises_them(scenes):
    for scene in scenes:
        assert 4500 <= pillar_count(scene.points) <= 6500
        assert 30_000 <= len(scene.points) <= 80_000
    assert pillar_count(make_scene(0, 0, density=1.8).points) > 7000


def test_ground_points_lie_on_the_ground_and_intensity_is_raw(scenes):
    for scene in scenes:
        points = scene.points
        on_object = np.zeros(len(points), bool)
        for box in scene.boxes:
            on_object |= points_in_box(points, box, margin=0.1)
        assert on_object.sum() > 500
        np.testing.assert_allclose(points[~on_object, 2], SceneParams().ground_z, atol=0.06)
        assert points[:, 0].min() > 0 and points[:, 0].max() < 110
        intensity = points[:, 3]
        assert intensity.min() >= 0 and intensity.max() <= 255
        assert np.median(intensity) < 25 and (intensity > 150).sum() >= 5       # dark ground, bright licence plates


def test_points_are_in_scan_order(scenes):
    points = scenes[0].points
    azimuth = np.arctan2(points[:, 1], points[:, 0])           # the sensor sits on the z axis
    assert np.all(np.diff(azimuth) >= -1e-5)


def test_ray_box_distance_on_a_known_box():
    box = np.array([10.0, 0.0, 0.0, 4.0, 2.0, 2.0, math.pi / 2])  # turned: 2 m deep along x, 4 m across
    dirs = np.array([[1.0, 0, 0], [0, 1.0, 0], [math.cos(0.1), math.sin(0.1), 0]])
    t = ray_box_distance(np.zeros(3), dirs, box)
    assert t[0] == pytest.approx(9.0) and np.isinf(t[1]) and t[2] == pytest.approx(9.0 / math.cos(0.1))


def test_each_box_is_searched_over_every_ray_that_can_hit_it(scenes):
    pattern = scan_pattern(SceneParams())
    directions = pattern.directions()
    for box in scenes[0].boxes:
        everywhere = np.isfinite(ray_box_distance(pattern.origin, directions, box))
        lines, cols = _angular_window(pattern, box)
        assert everywhere.sum() > 0 and everywhere[lines, cols].sum() == everywhere.sum()


# ---------------------------------------------------------------------------------------------- camera vs LiDAR

def test_each_objects_lidar_points_project_into_its_label_bbox(scenes):
    checked = 0
    for scene in scenes:
        for obj, k in zip(scene.objects, scene.labelled):
            inside = scene.points[points_in_box(scene.points, scene.boxes[k])]
            uv, depth = project(scene.calib, inside[:, :3].astype(np.float64))
            in_image = (uv[:, 0] >= 0) & (uv[:, 0] <= 1919) & (uv[:, 1] >= 0) & (uv[:, 1] <= 1079) & (depth > 0)
            uv = uv[in_image]
            x1, y1, x2, y2 = obj.bbox
            assert np.all((uv[:, 0] >= x1 - 2) & (uv[:, 0] <= x2 + 2) & (uv[:, 1] >= y1 - 2) & (uv[:, 1] <= y2 + 2))
            checked += len(uv) > 10
    assert checked >= 10


def test_projected_box_centre_shows_the_objects_colour(scenes):
    hits = labelled = 0
    for scene in scenes:
        pixels = np.asarray(scene.image)
        for k in scene.labelled:
            uv, _ = project(scene.calib, scene.boxes[k:k + 1, :3])
            u, v = (int(round(c)) for c in uv[0])
            if not (0 <= u < 1920 and 0 <= v < 1080):
                continue
            labelled += 1
            if scene.instance_map[v, u] == k + 1:
                hits += 1
                assert tuple(int(c) for c in pixels[v, u]) in scene.face_colors[k]
    assert labelled >= 10 and hits >= 0.5 * labelled


def test_each_drawn_object_stays_inside_its_label_bbox(scenes):
    for scene in scenes:
        for obj, k in zip(scene.objects, scene.labelled):
            rows, cols = np.nonzero(scene.instance_map == k + 1)
            if obj.occluded == 0:
                assert len(rows) > 20
            if len(rows):
                x1, y1, x2, y2 = obj.bbox
                assert x1 - 2 <= cols.min() and cols.max() <= x2 + 2 and y1 - 2 <= rows.min() and rows.max() <= y2 + 2


def test_objects_do_not_overlap_and_stay_in_range(scenes):
    for scene in scenes:
        boxes = scene.boxes
        assert 5 <= len(boxes) <= 25
        assert not any(bev_overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i))
        assert np.all((boxes[:, 0] >= 5) & (boxes[:, 0] <= 95))
        np.testing.assert_allclose(boxes[:, 2] - boxes[:, 5] / 2, SceneParams().ground_z)


# ---------------------------------------------------------------------------------------------- labels

def test_labels_describe_the_lidar_boxes_in_kitti_camera_terms(scenes):
    for scene in scenes:
        r = scene.calib.lidar2cam[:3, :3]
        assert len(scene.objects) == len(scene.labelled) > 0
        for obj, k in zip(scene.objects, scene.labelled):
            x, y, z, l, w, h, yaw = scene.boxes[k]
            bottom = scene.calib.camera2lidar @ np.r_[obj.location, 1.0]
            np.testing.assert_allclose(bottom[:3], [x, y, z - h / 2], atol=1e-9)
            assert obj.dimensions == pytest.approx((h, w, l))
            hx, _, hz = r @ [math.cos(yaw), math.sin(yaw), 0.0]
            assert obj.rotation_y == pytest.approx(-math.atan2(hz, hx), abs=1e-9)
            # a camera looking roughly along LiDAR +x: KITTI's usual ry = -yaw - pi/2, up to the rig's tilt
            assert abs(wrap_angle(obj.rotation_y + yaw + math.pi / 2)) < 0.2
            assert -math.pi < obj.rotation_y <= math.pi and -math.pi < obj.alpha <= math.pi
            assert abs(wrap_angle(obj.alpha - obj.rotation_y + math.atan2(obj.location[0], obj.location[2]))) < 1e-9
            assert 0 <= obj.truncated < 1 and obj.occluded in (0, 1, 2)
            assert 0 <= obj.bbox[0] < obj.bbox[2] <= 1919 and 0 <= obj.bbox[1] < obj.bbox[3] <= 1079
            assert np.all((box_corners(scene.boxes[k])[:, 0] >= 0) & (box_corners(scene.boxes[k])[:, 0] < 102.4))
            assert obj.type in ("Car", "Van", "Truck", "Bus", "Pedestrian", "Cyclist")


def test_unlabelled_boxes_are_outside_the_image(scenes):
    for scene in scenes:
        for k in set(range(len(scene.boxes))) - set(scene.labelled):
            uv, depth = project(scene.calib, box_corners(scene.boxes[k]))
            visible = (depth > 0) & (uv[:, 0] > 0) & (uv[:, 0] < 1919) & (uv[:, 1] > 0) & (uv[:, 1] < 1079)
            assert not visible.any()
