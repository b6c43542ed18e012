"""nuScenes info .pkl files: read as plain data only, every sample checked where it enters."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from bevport.data.infos import load_plain_pickle, read_infos, resolve
from bevport.errors import DatasetError

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]


def sample(token="t0", **changes):
    rng = np.random.default_rng(0)
    cams = {name: {"data_path": f"./data/nuscenes/samples/{name}/{token}.jpg", "type": name,
                   "cam_intrinsic": np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]]),
                   "sensor2lidar_rotation": np.eye(3) + 0.01 * rng.normal(size=(3, 3)),
                   "sensor2lidar_translation": rng.normal(size=3)} for name in CAMERAS}
    info = {"token": token, "lidar_path": f"./data/nuscenes/samples/LIDAR_TOP/{token}.pcd.bin", "cams": cams,
            "gt_boxes": rng.normal(size=(3, 7)), "gt_names": np.array(["car", "pedestrian", "animal"]),
            "gt_velocity": rng.normal(size=(3, 2)), "valid_flag": np.array([True, True, False])}
    info.update(changes)
    return info


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_converter_infos_read_back(tmp_path, protocol):
    path = tmp_path / "nuscenes_infos_val.pkl"
    infos = [sample("a"), sample("b")]
    path.write_bytes(pickle.dumps({"infos": infos, "metadata": {"version": "v1.0-trainval"}}, protocol=protocol))
    samples = read_infos(path, tmp_path / "nuscenes", CAMERAS)
    assert [s.token for s in samples] == ["a", "b"]
    cam = samples[0].cameras[1]
    assert cam.name == "CAM_FRONT_RIGHT" and cam.image == tmp_path / "nuscenes/samples/CAM_FRONT_RIGHT/a.jpg"
    expected = np.eye(4, dtype=np.float32)
    expected[:3, :3] = infos[0]["cams"]["CAM_FRONT_RIGHT"]["sensor2lidar_rotation"]
    expected[:3, 3] = infos[0]["cams"]["CAM_FRONT_RIGHT"]["sensor2lidar_translation"]
    assert cam.camera2lidar.dtype == np.float32 and np.array_equal(cam.camera2lidar, expected)
    assert samples[0].gt_names == ["car", "pedestrian", "animal"] and samples[0].valid.tolist() == [True, True, False]


def test_an_info_file_that_names_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"infos": [sample(extra=Payload())]}))
    with pytest.raises(DatasetError, match=r"evil\.pkl: the info file names `(posix|os|nt)\.system`"):
        load_plain_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    ({"cams": {}}, "lacks camera"),
    ({"gt_names": np.array(["car", "spaceship", "dragon"])}, "unknown class name"),
    ({"gt_boxes": np.full((3, 7), np.nan)}, "finite"),
])
def test_bad_samples_are_named(tmp_path, change, message):
    path = tmp_path / "infos.pkl"
    path.write_bytes(pickle.dumps({"infos": [sample("s1", **change)]}))
    with pytest.raises(DatasetError, match=message) as err:
        read_infos(path, tmp_path, CAMERAS)
    assert "sample s1" in str(err.value)


def test_bad_camera_matrices_and_files_are_named(tmp_path):
    bad = sample("s2")
    bad["cams"]["CAM_BACK"]["cam_intrinsic"] = np.zeros((3, 3))
    path = tmp_path / "infos.pkl"
    path.write_bytes(pickle.dumps({"infos": [bad]}))
    with pytest.raises(DatasetError, match="CAM_BACK.cam_intrinsic is singular"):
        read_infos(path, tmp_path, CAMERAS)
    bad["cams"]["CAM_BACK"]["cam_intrinsic"] = np.eye(4)
    path.write_bytes(pickle.dumps({"infos": [bad]}))
    with pytest.raises(DatasetError, match=r"CAM_BACK.cam_intrinsic must be a finite 3x3 array"):
        read_infos(path, tmp_path, CAMERAS)
    path.write_bytes(pickle.dumps({"infos": [sample()]})[:-40])
    with pytest.raises(DatasetError, match="not a readable info file"):
        read_infos(path, tmp_path, CAMERAS)
    path.write_bytes(pickle.dumps({"samples": 3}))
    with pytest.raises(DatasetError, match="expected"):
        read_infos(path, tmp_path, CAMERAS)


def test_converter_paths_resolve_under_the_dataset_root(tmp_path):
    assert resolve("./data/nuscenes/samples/CAM_FRONT/x.jpg", tmp_path) == tmp_path / "samples/CAM_FRONT/x.jpg"
    assert resolve("/mnt/ds/nuscenes/sweeps/CAM_BACK/y.jpg", tmp_path) == tmp_path / "sweeps/CAM_BACK/y.jpg"
    assert resolve("samples\\CAM_FRONT\\z.jpg", tmp_path) == tmp_path / "samples/CAM_FRONT/z.jpg"
    assert resolve("other/z.jpg", tmp_path) == tmp_path / "other/z.jpg"
