"""KITTI calibration/label files, the DAIR-V2X-I original layout, and open_dataset on small hand-written trees."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from bevport.data import Calibration, Frame, KittiObject, open_dataset
from bevport.data.dair import read_dair_calib
from bevport.data.kitti import calib_text, read_calib_file, read_label_file, write_frame, write_label_file
from bevport.errors import DatasetError
from helpers import write_pcd

K = np.array([[2180.0, 0.0, 940.5], [0.0, 2170.25, 560.75], [0.0, 0.0, 1.0]])
ROTATION = np.array([[-0.0638, -0.9977, 0.0217], [-0.2590, -0.0045, -0.9659], [0.9638, -0.0671, -0.2583]])
TRANSLATION = np.array([-2.2, 5.6, 1.5])


def road_calib() -> Calibration:
    return Calibration.from_dair(K.ravel(), ROTATION, TRANSLATION)


def fingerprint(calib: Calibration) -> str:
    """A key that changes with any bit of the three matrices."""
    digest = hashlib.sha256()
    for m in (calib.P2, calib.R0_rect, calib.Tr_velo_to_cam):
        digest.update(np.ascontiguousarray(m, np.float64).tobytes())
    return digest.hexdigest()


def error_text(call, *args):
    with pytest.raises(DatasetError) as info:
        call(*args)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------- calibration

KITTI_CALIB = """P0: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P1: 7.215377e+02 0.000000e+00 6.095593e+02 -3.875744e+02 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P2: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
P3: 7.215377e+02 0.000000e+00 6.095593e+02 -3.395242e+02 0.000000e+00 7.215377e+02 1.728540e+02 2.199936e+00 0.000000e+00 0.000000e+00 1.000000e+00 2.729905e-03
R0_rect: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
Tr_velo_to_cam: 7.533745e-03 -9.999714e-01 -6.166020e-04 -4.069766e-03 1.480249e-02 7.280733e-04 -9.998902e-01 -7.631618e-02 9.998621e-01 7.523790e-03 1.480755e-02 -2.717806e-01
Tr_imu_to_velo: 9.999976e-01 7.553071e-04 -2.035826e-03 -8.086759e-01 -7.854027e-04 9.998898e-01 -1.482298e-02 3.195559e-01 2.024406e-03 1.482454e-02 9.998881e-01 -7.997231e-01
"""


def test_read_kitti_calib(tmp_path):
    (tmp_path / "c.txt").write_text(KITTI_CALIB)
    calib = read_calib_file(tmp_path / "c.txt")
    assert calib.P2.shape == (3, 4) and calib.P2.dtype == np.float64
    assert calib.P2[0, 3] == 4.485728e+01 and calib.R0_rect[1, 0] == -9.869795e-03
    assert calib.Tr_velo_to_cam[2, 3] == -2.717806e-01
    np.testing.assert_array_equal(calib.intrinsics, calib.P2[:, :3])


@pytest.mark.parametrize("key, values, problem", [
    ("R0_rect", "1 0 0 0 1 0 0 0 0", "R0_rect is singular"),
    ("R0_rect", "1 0 0 1 0 0 0 0 1", "R0_rect is singular"),
    ("P2", "nan 0 609 44 0 721 172 0.2 0 0 1 0.003", "P2 holds non-finite numbers"),
    ("P2", "0 0 609 44 0 0 172 0.2 0 0 1 0.003", "P2[:, :3] is singular"),
    ("Tr_velo_to_cam", "0 0 0 0 0 0 0 0 0 0 0 inf", "Tr_velo_to_cam holds non-finite numbers"),
    ("Tr_velo_to_cam", "0 -1 0 0 0 0 -1 0 0 0 0 0", "Tr_velo_to_cam is singular"),
])
def test_calibration_that_cannot_place_points_is_refused(tmp_path, key, values, problem):
    """A singular or non-finite calibration is a DatasetError naming the file (so the frame is skipped), never a
    LinAlgError traceback or NaN geometry."""
    lines = [f"{key}: {values}" if line.startswith(key + ":") else line for line in KITTI_CALIB.splitlines()]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    message = error_text(read_calib_file, tmp_path / "c.txt")
    assert str(tmp_path / "c.txt") in message and problem in message


def test_lidar2cam_uses_p2_offset():
    """KITTI projects a LiDAR point with P2 . R0 . Tr; K . lidar2cam must give the same pixel."""
    offset = np.array([0.06, -0.003, 0.0027])
    p2 = np.concatenate([K, (K @ offset)[:, None]], axis=1)
    r0 = np.array([[0.9999, 0.0098, -0.0074], [-0.0099, 0.9999, -0.0043], [0.0074, 0.0044, 0.9999]])
    tr = np.concatenate([ROTATION, TRANSLATION[:, None]], axis=1)
    calib = Calibration(p2, r0, tr)
    points = np.array([[20.0, 3.0, -1.0, 1.0], [55.0, -12.0, 0.5, 1.0]]).T
    kitti = p2 @ np.vstack([r0 @ tr @ points, np.ones((1, 2))])
    ours = K @ (calib.lidar2cam @ points)[:3]
    np.testing.assert_allclose(ours, kitti, rtol=1e-12)
    np.testing.assert_allclose(calib.lidar2cam[:3, 3], r0 @ TRANSLATION + offset, rtol=1e-12)
    np.testing.assert_allclose(calib.camera2lidar @ calib.lidar2cam, np.eye(4), atol=1e-12)


def test_from_dair():
    calib = road_calib()
    expected = np.eye(4)
    expected[:3, :3], expected[:3, 3] = ROTATION, TRANSLATION
    np.testing.assert_array_equal(calib.lidar2cam, expected)
    np.testing.assert_array_equal(calib.P2, np.concatenate([K, np.zeros((3, 1))], axis=1))


def test_calib_round_trip_is_exact(tmp_path):
    rs = np.random.RandomState(4)
    calib = Calibration(rs.randn(3, 4) * 1000, rs.randn(3, 3), rs.randn(3, 4) / 3)
    (tmp_path / "c.txt").write_text(calib_text(calib))
    back = read_calib_file(tmp_path / "c.txt")
    for name in ("P2", "R0_rect", "Tr_velo_to_cam"):
        np.testing.assert_array_equal(getattr(back, name), getattr(calib, name))
    assert calib_text(back) == (tmp_path / "c.txt").read_text()
    assert fingerprint(back) == fingerprint(calib)


def test_fingerprint_changes_with_any_value():
    calib = road_calib()
    other = Calibration(calib.P2.copy(), calib.R0_rect, calib.Tr_velo_to_cam)
    assert fingerprint(other) == fingerprint(calib)
    other.P2[1, 2] = np.nextafter(other.P2[1, 2], np.inf)
    assert fingerprint(other) != fingerprint(calib)


def test_calib_with_wrong_value_count(tmp_path):
    path = tmp_path / "000007.txt"
    path.write_text(KITTI_CALIB.replace("R0_rect: 9.999239e-01 ", "R0_rect: "))
    message = error_text(read_calib_file, path)
    assert str(path) in message and "R0_rect" in message and "8 values" in message and "expected 9" in message


def test_calib_missing_key(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(line for line in KITTI_CALIB.splitlines() if not line.startswith("Tr_velo")))
    message = error_text(read_calib_file, path)
    assert str(path) in message and "Tr_velo_to_cam" in message


def test_calib_not_numbers(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(KITTI_CALIB.replace("P2: 7.215377e+02", "P2: seven"))
    assert str(path) in error_text(read_calib_file, path)


# --------------------------------------------------------------------------------------------------------- labels

def test_label_write_read_write_is_byte_identical(tmp_path):
    objects = [KittiObject("Car", 0.0, 1, -1.5707963267948966, (700.12, 180.5, 812.0, 260.25), (1.52, 1.73, 4.12),
                           (30.123456789, 1.5, -7.25), 0.1 + 0.2),
               KittiObject("Pedestrian", 0.33, 2, 2.0, (1.0, 2.0, 3.0, 4.0), (1.7, 0.6, 0.8), (5.0, -1e-7, 1e5),
                           -3.0, score=0.8765432)]
    first = tmp_path / "a.txt"
    write_label_file(first, objects)
    back = read_label_file(first)
    assert back == objects
    write_label_file(tmp_path / "b.txt", back)
    assert (tmp_path / "b.txt").read_bytes() == first.read_bytes()
    lines = first.read_text().splitlines()
    assert len(lines[0].split()) == 15 and len(lines[1].split()) == 16


def test_read_kitti_label_line(tmp_path):
    (tmp_path / "l.txt").write_text("Truck 0.00 0 -1.57 599.41 156.40 629.75 189.25 2.85 2.63 12.34 0.47 1.49 69.44 "
                                    "-1.56\nDontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 "
                                    "-1000 -10\n")
    truck, dontcare = read_label_file(tmp_path / "l.txt")
    assert truck.type == "Truck" and truck.occluded == 0 and truck.bbox == (599.41, 156.40, 629.75, 189.25)
    assert truck.dimensions == (2.85, 2.63, 12.34) and truck.location == (0.47, 1.49, 69.44)
    assert truck.rotation_y == -1.56 and truck.score is None
    assert dontcare.type == "DontCare" and dontcare.occluded == -1


def test_label_with_wrong_column_count(tmp_path):
    path = tmp_path / "000003.txt"
    path.write_text("Car 0 0 0 1 2 3 4 1 1 1 0 0 0\n")
    message = error_text(read_label_file, path)
    assert str(path) in message and "14 columns" in message


# ---------------------------------------------------------------------------------------------------- KITTI tree

def points(n=50, seed=0):
    return np.random.RandomState(seed).rand(n, 4).astype(np.float32)


def image(size=(64, 48), color=(200, 30, 10)):
    return Image.new("RGB", size, color)


def kitti_tree(root, ids=("000002", "000000", "000001"), **kw):
    for k, frame_id in enumerate(ids):
        write_frame(root, frame_id, image(), points(seed=k), road_calib(), None, **kw)
    return root


def test_write_frame_and_open(tmp_path):
    obj = KittiObject("Car", 0.0, 0, 0.25, (1.0, 2.0, 30.0, 40.0), (1.5, 1.8, 4.2), (12.0, -3.0, -0.8), 0.5)
    write_frame(tmp_path, "000005", image(), points(), road_calib(), [obj])
    ds = open_dataset(tmp_path)
    assert ds.layout == "kitti" and ds.ids == ["000005"] and len(ds) == 1
    frame = ds.frame(0)
    assert isinstance(frame, Frame) and frame.id == "000005" and frame.objects == [obj]
    assert frame.image_path.name == "000005.jpg" and frame.points_path.name == "000005.bin"
    np.testing.assert_array_equal(frame.points(), points())
    np.testing.assert_array_equal(frame.calib.lidar2cam, road_calib().lidar2cam)
    img = frame.image()
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.abs(np.asarray(img, np.int32) - [200, 30, 10]).max() <= 3
    assert ds.frame("000005").id == "000005"


def test_write_frame_png_and_pcd_is_lossless_and_deterministic(tmp_path):
    pixels = np.random.RandomState(5).randint(0, 256, (20, 30, 3)).astype(np.uint8)
    for root in (tmp_path / "a", tmp_path / "b"):
        write_frame(root, "000000", Image.fromarray(pixels), points(), road_calib(), [], "png", "pcd")
    frame = open_dataset(tmp_path / "a").frame(0)
    np.testing.assert_array_equal(np.asarray(frame.image()), pixels)
    np.testing.assert_array_equal(frame.points(), points())
    assert frame.objects == []
    for sub in ("image_2/000000.png", "velodyne/000000.pcd", "calib/000000.txt"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()


def test_jpeg_output_is_deterministic(tmp_path):
    pixels = np.random.RandomState(6).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    write_frame(tmp_path / "a", "0", Image.fromarray(pixels), points(), road_calib())
    write_frame(tmp_path / "b", "0", Image.fromarray(pixels), points(), road_calib())
    assert (tmp_path / "a/image_2/0.jpg").read_bytes() == (tmp_path / "b/image_2/0.jpg").read_bytes()


def test_ids_sorted_and_bin_preferred(tmp_path):
    kitti_tree(tmp_path)
    write_pcd(tmp_path / "velodyne" / "000001.pcd", points(3))
    ds = open_dataset(tmp_path)
    assert ds.ids == ["000000", "000001", "000002"]
    assert ds.frame("000001").points_path.suffix == ".bin"
    (tmp_path / "velodyne" / "000001.bin").unlink()
    assert ds.frame("000001").points().shape == (3, 4)


def test_training_subfolder(tmp_path):
    kitti_tree(tmp_path / "training")
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("000002\n000000\n")
    ds = open_dataset(tmp_path, split="val")
    assert ds.layout == "kitti" and ds.ids == ["000002", "000000"]
    assert ds.data_root == tmp_path / "training"
    assert ds.frame(0).id == "000002"


def test_split_with_missing_image(tmp_path):
    kitti_tree(tmp_path)
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("000000\n000009\n")
    message = error_text(open_dataset, tmp_path, "val")
    assert "000009" in message and str(tmp_path / "image_2") in message


def test_unknown_split(tmp_path):
    kitti_tree(tmp_path)
    message = error_text(open_dataset, tmp_path, "test")
    assert "test.txt" in message


def test_missing_root(tmp_path):
    assert str(tmp_path / "nope") in error_text(open_dataset, tmp_path / "nope")


def test_missing_image_folder(tmp_path):
    (tmp_path / "velodyne").mkdir()
    message = error_text(open_dataset, tmp_path)
    assert str(tmp_path) in message and "image_2" in message


def test_empty_image_folder(tmp_path):
    (tmp_path / "image_2").mkdir()
    message = error_text(open_dataset, tmp_path)
    assert str(tmp_path / "image_2") in message and "no images" in message


@pytest.mark.parametrize("missing", ["calib/000001.txt", "velodyne/000001.bin"])
def test_frame_with_missing_file(tmp_path, missing):
    kitti_tree(tmp_path)
    (tmp_path / missing).unlink()
    ds = open_dataset(tmp_path)          # opening does not read frames
    ds.frame("000000")
    assert str(tmp_path / missing) in error_text(ds.frame, "000001")


def test_frame_with_image_removed_after_open(tmp_path):
    kitti_tree(tmp_path)
    ds = open_dataset(tmp_path)
    (tmp_path / "image_2" / "000002.jpg").unlink()
    assert str(tmp_path / "image_2" / "000002.jpg") in error_text(ds.frame, 2)


def test_unknown_frame_id(tmp_path):
    kitti_tree(tmp_path)
    assert "000042" in error_text(open_dataset(tmp_path).frame, "000042")


def test_unreadable_image(tmp_path):
    kitti_tree(tmp_path)
    path = tmp_path / "image_2" / "000000.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    frame = open_dataset(tmp_path).frame("000000")
    assert str(path) in error_text(frame.image)
    path.write_bytes(b"not an image at all")
    assert str(path) in error_text(frame.image)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_image_converted_to_rgb(tmp_path, mode):
    kitti_tree(tmp_path, ids=("000000",))
    Image.new(mode, (8, 6), 100 if mode in ("L", "P") else (10, 20, 30, 40)).save(tmp_path / "image_2" / "000000.png")
    (tmp_path / "image_2" / "000000.jpg").unlink()
    img = open_dataset(tmp_path).frame(0).image()
    assert img.mode == "RGB" and img.size == (8, 6)


def test_empty_point_cloud(tmp_path):
    kitti_tree(tmp_path)
    path = tmp_path / "velodyne" / "000000.bin"
    path.write_bytes(b"")
    message = error_text(open_dataset(tmp_path).frame(0).points)
    assert str(path) in message and "no points" in message


def test_bin_with_wrong_size_in_dataset(tmp_path):
    kitti_tree(tmp_path)
    path = tmp_path / "velodyne" / "000000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    assert str(path) in error_text(open_dataset(tmp_path).frame(0).points)


# ----------------------------------------------------------------------------------------------------- DAIR tree

def dair_tree(root, ids=("000010", "000003")):
    for frame_id in ids:
        for sub in ("image", "velodyne", "calib/camera_intrinsic", "calib/virtuallidar_to_camera", "label/camera"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        image().save(root / "image" / f"{frame_id}.jpg")
        write_pcd(root / "velodyne" / f"{frame_id}.pcd", points(), data="binary_compressed")
        (root / "calib/camera_intrinsic" / f"{frame_id}.json").write_text(json.dumps(
            {"cam_D": [-0.1, 0.05, 0.0, 0.0, 0.0], "cam_K": [str(v) for v in K.ravel()]}))
        (root / "calib/virtuallidar_to_camera" / f"{frame_id}.json").write_text(json.dumps(
            {"rotation": ROTATION.tolist(), "translation": [[v] for v in TRANSLATION]}))
    (root / "label/camera" / f"{ids[0]}.json").write_text(json.dumps([{
        "type": "Car", "truncated_state": "0", "occluded_state": "1", "alpha": "0",
        "2d_box": {"xmin": "1.5", "ymin": "2", "xmax": "30", "ymax": "40"},
        "3d_dimensions": {"h": "1.5", "w": "1.8", "l": "4.2"}, "3d_location": {"x": "30", "y": "-3", "z": "-0.8"},
        "rotation": "1.6"}]))
    return root


def test_dair_layout(tmp_path):
    ds = open_dataset(dair_tree(tmp_path))
    assert ds.layout == "dair" and ds.ids == ["000003", "000010"]
    frame = ds.frame("000010")
    np.testing.assert_array_equal(frame.calib.lidar2cam, road_calib().lidar2cam)
    np.testing.assert_array_equal(frame.points(), points())
    assert frame.objects[0]["type"] == "Car" and frame.objects[0]["3d_dimensions"]["l"] == "4.2"
    assert ds.frame("000003").objects is None
    assert frame.image().size == (64, 48)


def test_dair_missing_extrinsic(tmp_path):
    dair_tree(tmp_path)
    path = tmp_path / "calib/virtuallidar_to_camera/000003.json"
    path.unlink()
    assert str(path) in error_text(open_dataset(tmp_path).frame, "000003")


def test_dair_missing_point_cloud(tmp_path):
    dair_tree(tmp_path)
    path = tmp_path / "velodyne" / "000003.pcd"
    path.unlink()
    assert str(path) in error_text(open_dataset(tmp_path).frame, "000003")


def test_dair_bad_intrinsics(tmp_path):
    dair_tree(tmp_path)
    path = tmp_path / "calib/camera_intrinsic/000003.json"
    path.write_text(json.dumps({"cam_K": [1, 0, 0, 0, 1, 0, 0, 0]}))
    message = error_text(read_dair_calib, path, tmp_path / "calib/virtuallidar_to_camera/000003.json")
    assert str(path) in message and "cam_K" in message and "expected 9" in message
    path.write_text("{not json")
    assert str(path) in error_text(open_dataset(tmp_path).frame, "000003")


def test_empty_pcd_in_dair_tree(tmp_path):
    dair_tree(tmp_path)
    path = tmp_path / "velodyne" / "000003.pcd"
    write_pcd(path, np.zeros((0, 4), np.float32), data="ascii")
    message = error_text(open_dataset(tmp_path).frame("000003").points)
    assert str(path) in message and "no points" in message


def test_write_frame_rejects_bad_points_before_writing(tmp_path):
    with pytest.raises(DatasetError):
        write_frame(tmp_path, "000000", image(), np.zeros((5, 3), np.float32), road_calib())
    assert not (tmp_path / "image_2").exists()
