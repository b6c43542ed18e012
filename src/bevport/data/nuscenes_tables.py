"""nuScenes' official tables (`<version>/*.json`, the 13 tables the devkit's `NuScenes` loads) for synthetic samples,
so that the devkit's own detection evaluation can score bevport's results on the synthetic surround dataset.

Each synthetic frame is one scene of one key-frame sample: six camera sample_data records and a LIDAR_TOP record (its
file is not written: the camera-only model reads none and the evaluation reads no point cloud), one ego pose, and an
annotation per object with nuScenes' category, size (w, l, h), rotation (w, x, y, z) in the global frame, the
attribute a parked / standing object has, and `num_lidar_pts` as the info file's count. The devkit also requires a
map record whose mask PNG exists; a 1 x 1 mask stands in (the detection evaluation never reads it).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

# detection class -> the nuScenes category an annotation of it carries (one of those the devkit maps to the class)
CATEGORY = {"car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid", "trailer": "vehicle.trailer",
            "construction_vehicle": "vehicle.construction", "pedestrian": "human.pedestrian.adult",
            "motorcycle": "vehicle.motorcycle", "bicycle": "vehicle.bicycle", "barrier": "movable_object.barrier",
            "traffic_cone": "movable_object.trafficcone"}
# what a still object of each class is (the synthetic scenes do not move)
STILL_ATTRIBUTE = {"car": "vehicle.parked", "truck": "vehicle.parked", "trailer": "vehicle.parked",
                   "construction_vehicle": "vehicle.parked", "bus": "vehicle.stopped",
                   "pedestrian": "pedestrian.standing", "motorcycle": "cycle.without_rider",
                   "bicycle": "cycle.without_rider", "barrier": None, "traffic_cone": None}
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
VISIBILITY = ("v0-40", "v40-60", "v60-80", "v80-100")


@dataclass
class TableCamera:
    channel: str
    filename: str                # relative to the dataset root: samples/CAM_*/...jpg
    intrinsics: np.ndarray       # [3,3]
    camera2ego: np.ndarray       # [4,4]
    size: Sequence[int]          # (W, H)


@dataclass
class TableSample:
    token: str
    timestamp: int
    scene_name: str
    cameras: List[TableCamera]
    lidar2ego: np.ndarray        # [4,4]
    boxes: np.ndarray            # [M,7] global frame (x, y, z_centre, l, w, h, yaw); the ego pose is the identity
    names: List[str]
    num_lidar_pts: np.ndarray    # [M]


def token(*parts) -> str:
    """A deterministic 32-hex-digit token, as nuScenes' tokens look."""
    return hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()


def rotation_quaternion(rotation: np.ndarray) -> List[float]:
    """[w, x, y, z] (w >= 0) of a 3x3 rotation matrix."""
    m = np.asarray(rotation, np.float64)
    w = math.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    return [w, x, y, z]


def _yaw_quaternion(yaw: float) -> List[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _mask_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, format="PNG")
    return out.getvalue()


def build_tables(samples: Sequence[TableSample], dataset: str) -> Dict[str, List[Dict]]:
    """The 13 tables of `samples` (token seeds start with `dataset`, so two synthetic datasets never share one)."""
    channels = [c.channel for c in samples[0].cameras] + ["LIDAR_TOP"]
    tables: Dict[str, List[Dict]] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log", "scene",
        "sample", "sample_data", "sample_annotation", "map")}
    tables["category"] = [{"token": token(dataset, "category", c), "name": c, "description": c}
                          for c in CATEGORY.values()]
    tables["attribute"] = [{"token": token(dataset, "attribute", a), "name": a, "description": a} for a in ATTRIBUTES]
    tables["visibility"] = [{"token": str(i + 1), "level": v, "description": v} for i, v in enumerate(VISIBILITY)]
    tables["sensor"] = [{"token": token(dataset, "sensor", c), "channel": c,
                         "modality": "lidar" if c == "LIDAR_TOP" else "camera"} for c in channels]
    log = token(dataset, "log")
    tables["log"] = [{"token": log, "logfile": dataset, "vehicle": "bevport", "date_captured": "2018-07-26",
                      "location": "singapore-onenorth"}]
    tables["map"] = [{"token": token(dataset, "map"), "log_tokens": [log], "category": "semantic_prior",
                      "filename": f"maps/{token(dataset, 'map')}.png"}]
    for sample in samples:
        _add_sample(tables, sample, dataset)
    return tables


def _add_sample(tables: Dict[str, List[Dict]], sample: TableSample, dataset: str) -> None:
    scene = token(dataset, "scene", sample.scene_name)
    pose = token(dataset, "ego_pose", sample.token)
    tables["scene"].append({"token": scene, "log_token": tables["log"][0]["token"], "nbr_samples": 1,
                            "first_sample_token": sample.token, "last_sample_token": sample.token,
                            "name": sample.scene_name, "description": "bevport synthetic surround scene"})
    tables["sample"].append({"token": sample.token, "timestamp": sample.timestamp, "prev": "", "next": "",
                             "scene_token": scene})
    tables["ego_pose"].append({"token": pose, "timestamp": sample.timestamp, "rotation": [1.0, 0.0, 0.0, 0.0],
                               "translation": [0.0, 0.0, 0.0]})
    sensors = {s["channel"]: s["token"] for s in tables["sensor"]}
    lidar = (sample.lidar2ego, [], f"samples/LIDAR_TOP/{sample.scene_name}__LIDAR_TOP__{sample.timestamp}.pcd.bin",
             (0, 0), "bin")
    for channel, (pose_matrix, intrinsics, filename, size, fmt) in [
            (c.channel, (c.camera2ego, np.asarray(c.intrinsics).tolist(), c.filename, c.size, "jpg"))
            for c in sample.cameras] + [("LIDAR_TOP", lidar)]:
        calibrated = token(dataset, "calibrated_sensor", sample.token, channel)
        tables["calibrated_sensor"].append({
            "token": calibrated, "sensor_token": sensors[channel], "translation": pose_matrix[:3, 3].tolist(),
            "rotation": rotation_quaternion(pose_matrix[:3, :3]), "camera_intrinsic": intrinsics})
        tables["sample_data"].append({
            "token": token(dataset, "sample_data", sample.token, channel), "sample_token": sample.token,
            "ego_pose_token": pose, "calibrated_sensor_token": calibrated, "timestamp": sample.timestamp,
            "fileformat": fmt, "is_key_frame": True, "height": size[1], "width": size[0], "filename": filename,
            "prev": "", "next": ""})
    categories = {c["name"]: c["token"] for c in tables["category"]}
    attributes = {a["name"]: a["token"] for a in tables["attribute"]}
    for k, (box, name) in enumerate(zip(sample.boxes, sample.names)):
        annotation = token(dataset, "sample_annotation", sample.token, k)
        instance = token(dataset, "instance", sample.token, k)
        x, y, z, length, width, height, yaw = (float(v) for v in box)
        attribute = STILL_ATTRIBUTE[name]
        tables["instance"].append({"token": instance, "category_token": categories[CATEGORY[name]],
                                   "nbr_annotations": 1, "first_annotation_token": annotation,
                                   "last_annotation_token": annotation})
        tables["sample_annotation"].append({
            "token": annotation, "sample_token": sample.token, "instance_token": instance, "visibility_token": "4",
            "attribute_tokens": [attributes[attribute]] if attribute else [], "translation": [x, y, z],
            "size": [width, length, height], "rotation": _yaw_quaternion(yaw), "prev": "", "next": "",
            "num_lidar_pts": int(sample.num_lidar_pts[k]), "num_radar_pts": 0})


def write_tables(root: Path, version: str, samples: Sequence[TableSample], dataset: str) -> None:
    """`<root>/<version>/<table>.json` and the map mask under `<root>/maps/`."""
    tables = build_tables(samples, dataset)
    folder = Path(root) / version
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in tables.items():
        (folder / f"{name}.json").write_text(json.dumps(records, indent=0) + "\n")
    mask = Path(root) / tables["map"][0]["filename"]
    mask.parent.mkdir(parents=True, exist_ok=True)
    mask.write_bytes(_mask_png())
