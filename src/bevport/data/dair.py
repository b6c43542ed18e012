"""The original DAIR-V2X-I (single-infrastructure-side) layout, read without converting it:

    <root>/image/<id>.jpg  velodyne/<id>.pcd
           calib/camera_intrinsic/<id>.json        {"cam_K": 9 numbers row-major, "cam_D": ...}
           calib/virtuallidar_to_camera/<id>.json  {"rotation": 3x3, "translation": 3x1}
           [label/camera/<id>.json]                [{"type", "3d_dimensions", "3d_location", "rotation", "2d_box", ...}]

`data_info.json` is not read: the folder convention above names every file, as it does for BEVHeight's converter.
Labels are returned as the JSON's list of dicts, unchanged: their 3D boxes are in the virtual-LiDAR frame with z at
the box centre, which KittiObject (camera frame, bottom centre) does not describe without a conversion the readers
do not need. Numbers in DAIR files are sometimes strings; calibration values are converted with float().
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from bevport.data.calib import Calibration
from bevport.errors import DatasetError


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}", "every image/<id>.jpg needs this file; skip the frame or "
                           "restore it from the DAIR-V2X-I download") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e}", "the file must be valid JSON") from None


def _numbers(path: Path, data: Any, key: str, count: int) -> np.ndarray:
    if not isinstance(data, dict) or key not in data:
        raise DatasetError(f"{path}: no `{key}` entry", f"DAIR-V2X-I calibration JSON holds `{key}`")
    try:
        values = np.array(data[key], np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: `{key}` is not a list of numbers", f"`{key}` holds {count} numbers") from None
    if values.size != count:
        raise DatasetError(f"{path}: `{key}` has {values.size} values, expected {count}",
                           f"`{key}` holds {count} numbers")
    return values


def read_dair_calib(intrinsic_path: Path, extrinsic_path: Path) -> Calibration:
    intrinsic = _read_json(intrinsic_path, "camera intrinsics")
    extrinsic = _read_json(extrinsic_path, "LiDAR-to-camera calibration")
    calib = Calibration.from_dair(_numbers(intrinsic_path, intrinsic, "cam_K", 9),
                                  _numbers(extrinsic_path, extrinsic, "rotation", 9).reshape(3, 3),
                                  _numbers(extrinsic_path, extrinsic, "translation", 3))
    return calib.checked(f"{intrinsic_path} + {extrinsic_path}")


class DairLayout:
    """Where a frame's files live in the original DAIR-V2X-I layout."""

    name = "dair"
    image_folder = "image"

    def __init__(self, root: Path):
        self.root = root

    def points_path(self, frame_id: str) -> Path:
        path = self.root / "velodyne" / f"{frame_id}.pcd"
        if not path.is_file():
            raise DatasetError(f"frame {frame_id}: point cloud not found: {path}",
                               "every image/<id>.jpg needs a velodyne/<id>.pcd; skip the frame or restore the file")
        return path

    def calib(self, frame_id: str) -> Calibration:
        calib = self.root / "calib"
        return read_dair_calib(calib / "camera_intrinsic" / f"{frame_id}.json",
                               calib / "virtuallidar_to_camera" / f"{frame_id}.json")

    def objects(self, frame_id: str) -> Optional[List[dict]]:
        path = self.root / "label" / "camera" / f"{frame_id}.json"
        if not path.is_file():
            return None
        labels = _read_json(path, "label file")
        if not isinstance(labels, list):
            raise DatasetError(f"{path}: expected a list of objects", "DAIR-V2X-I label files hold a JSON list")
        return labels
