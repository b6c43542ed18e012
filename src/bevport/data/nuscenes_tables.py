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


# ------------------------------------------------------------------------------------------------------- reading

# nuScenes category -> detection class, as mmdet3d's converter and the devkit map them; other categories keep their
# own name (and count for nothing), as in the converter's info files.
NAME_MAPPING = {"movable_object.barrier": "barrier", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
                "vehicle.bus.rigid": "bus", "vehicle.car": "car", "vehicle.construction": "construction_vehicle",
                "vehicle.motorcycle": "motorcycle", "human.pedestrian.adult": "pedestrian",
                "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
                "human.pedestrian.police_officer": "pedestrian", "movable_object.trafficcone": "traffic_cone",
                "vehicle.trailer": "trailer", "vehicle.truck": "truck"}


def table_versions(root: Path) -> List[Path]:
    """The `v1.0-*` folders under a nuScenes root that hold tables (sample.json)."""
    return sorted(p for p in Path(root).glob("v1.0-*") if (p / "sample.json").is_file())


class Tables:
    """The tables of one version folder, indexed by token (what the converter reads of them, as plain JSON)."""

    NAMES = ("sample", "sample_data", "sample_annotation", "calibrated_sensor", "sensor", "ego_pose", "instance",
             "category")

    def __init__(self, folder: Path):
        from bevport.errors import DatasetError

        self.folder = Path(folder)
        self.rows: Dict[str, Dict[str, Dict]] = {}
        for name in self.NAMES:
            path = self.folder / f"{name}.json"
            try:
                self.rows[name] = {r["token"]: r for r in json.loads(path.read_text())}
            except FileNotFoundError:
                raise DatasetError(f"{path} not found", "a nuScenes version folder holds all 13 tables") from None
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}: not a nuScenes table ({type(exc).__name__}: {exc})") from None
        self.channel = {}                                   # sample_data token -> sensor channel
        self.sample_data: Dict[str, Dict[str, str]] = {t: {} for t in self.rows["sample"]}
        self.annotations: Dict[str, List[str]] = {t: [] for t in self.rows["sample"]}
        for token, record in self.rows["sample_data"].items():
            sensor = self.rows["sensor"][self.rows["calibrated_sensor"][record["calibrated_sensor_token"]]
                                         ["sensor_token"]]
            self.channel[token] = sensor["channel"]
            if record["is_key_frame"]:
                self.sample_data[record["sample_token"]][sensor["channel"]] = token
        for token, record in self.rows["sample_annotation"].items():
            self.annotations[record["sample_token"]].append(token)

    def get(self, table: str, token: str) -> Dict:
        return self.rows[table][token]

    def category(self, annotation: Dict) -> str:
        return self.get("category", self.get("instance", annotation["instance_token"])["category_token"])["name"]


def _pose(record: Dict):
    from bevport.data.infos import Pose

    return Pose(np.asarray(record["rotation"], np.float64) / np.linalg.norm(record["rotation"]),
                np.asarray(record["translation"], np.float64))


def yaw_of(q: np.ndarray) -> float:
    """pyquaternion's `yaw_pitch_roll[0]` (what the converter stores): atan2(2(wz - xy), 1 - 2(y^2 + z^2))."""
    w, x, y, z = q / np.linalg.norm(q)
    return math.atan2(2 * (w * z - x * y), 1 - 2 * (y * y + z * z))


def box_velocity(tables: Tables, annotation: Dict, max_time_diff: float = 1.5) -> np.ndarray:
    """The devkit's `box_velocity`: centred difference over the previous and next annotations (global frame), NaN
    for a lone annotation or a gap over 1.5 s (3 s centred)."""
    has_prev, has_next = annotation["prev"] != "", annotation["next"] != ""
    if not has_prev and not has_next:
        return np.full(3, np.nan)
    first = tables.get("sample_annotation", annotation["prev"]) if has_prev else annotation
    last = tables.get("sample_annotation", annotation["next"]) if has_next else annotation
    span = 1e-6 * (tables.get("sample", last["sample_token"])["timestamp"] -
                   tables.get("sample", first["sample_token"])["timestamp"])
    if span > max_time_diff * (2 if has_prev and has_next else 1):
        return np.full(3, np.nan)
    return (np.asarray(last["translation"], np.float64) - np.asarray(first["translation"], np.float64)) / span


def _camera_info(tables: Tables, token: str, l2e, e2g) -> Dict:
    """One camera's info entry as mmdet3d's `obtain_sensor2top` computes it (row-vector form, its operation order)."""
    from bevport.data.infos import quaternion_matrix

    record = tables.get("sample_data", token)
    calibrated = tables.get("calibrated_sensor", record["calibrated_sensor_token"])
    pose = tables.get("ego_pose", record["ego_pose_token"])
    l2e_r_s, e2g_r_s = quaternion_matrix(calibrated["rotation"]), quaternion_matrix(pose["rotation"])
    l2e_t_s, e2g_t_s = np.asarray(calibrated["translation"], float), np.asarray(pose["translation"], float)
    l2e_r, e2g_r = l2e.rotation_matrix, e2g.rotation_matrix
    to_lidar = np.linalg.inv(e2g_r).T @ np.linalg.inv(l2e_r).T
    rotation = (l2e_r_s.T @ e2g_r_s.T) @ to_lidar
    translation = (l2e_t_s @ e2g_r_s.T + e2g_t_s) @ to_lidar
    translation -= e2g.translation @ to_lidar + l2e.translation @ np.linalg.inv(l2e_r).T
    return {"data_path": record["filename"], "type": tables.channel[token], "sample_data_token": token,
            "sensor2ego_translation": calibrated["translation"], "sensor2ego_rotation": calibrated["rotation"],
            "ego2global_translation": pose["translation"], "ego2global_rotation": pose["rotation"],
            "timestamp": record["timestamp"], "sensor2lidar_rotation": rotation.T,
            "sensor2lidar_translation": translation, "cam_intrinsic": np.asarray(calibrated["camera_intrinsic"])}


def _boxes(tables: Tables, tokens: Sequence[str], l2e, e2g) -> Dict:
    """gt_boxes / names / velocity / point counts of a sample's annotations in the LiDAR frame, as the converter
    writes them: centre, (w, l, h), -yaw - pi/2 with pyquaternion's yaw of the box turned into the LiDAR frame."""
    from bevport.data.infos import quaternion_matrix, quaternion_multiply

    def inverse(q):
        return np.array([q[0], -q[1], -q[2], -q[3]]) / np.dot(q, q)

    boxes, names, velocity, lidar_pts, radar_pts = [], [], [], [], []
    for token in tokens:
        ann = tables.get("sample_annotation", token)
        centre, orientation = np.asarray(ann["translation"], float), np.asarray(ann["rotation"], float)
        for pose in (e2g, l2e):                 # global -> ego (the LiDAR's ego pose) -> LIDAR_TOP
            q = inverse(pose.rotation)
            centre = quaternion_matrix(q) @ (centre - pose.translation)
            orientation = quaternion_multiply(q, orientation)
        boxes.append([*centre, *ann["size"], -yaw_of(orientation) - np.pi / 2])
        category = tables.category(ann)
        names.append(NAME_MAPPING.get(category, category))
        velo = np.array([*box_velocity(tables, ann)[:2], 0.0])
        velocity.append((velo @ np.linalg.inv(e2g.rotation_matrix).T @ np.linalg.inv(l2e.rotation_matrix).T)[:2])
        lidar_pts.append(ann["num_lidar_pts"])
        radar_pts.append(ann["num_radar_pts"])
    lidar_pts, radar_pts = np.asarray(lidar_pts, np.int64), np.asarray(radar_pts, np.int64)
    return {"gt_boxes": np.asarray(boxes, np.float64).reshape(-1, 7), "gt_names": np.array(names),
            "gt_velocity": np.asarray(velocity, np.float64).reshape(-1, 2), "num_lidar_pts": lidar_pts,
            "num_radar_pts": radar_pts, "valid_flag": (lidar_pts + radar_pts) > 0}


def sample_info(tables: Tables, token: str, camera_names: Sequence[str]) -> Dict:
    """The info entry mmdet3d's nuScenes converter writes for sample `token` (the keys the camera-only recipe reads),
    computed from the tables: every camera's sensor -> LiDAR transform through the global frame at the camera's own
    time, the LiDAR's calibration and ego pose, and the labels in the LiDAR frame."""
    from bevport.errors import DatasetError

    sample = tables.get("sample", token)
    data = tables.sample_data[token]
    missing = [c for c in ["LIDAR_TOP", *camera_names] if c not in data]
    if missing:
        raise DatasetError(f"{tables.folder}: sample {token} has no key frame of {', '.join(missing)}")
    lidar = tables.get("sample_data", data["LIDAR_TOP"])
    l2e = _pose(tables.get("calibrated_sensor", lidar["calibrated_sensor_token"]))
    e2g = _pose(tables.get("ego_pose", lidar["ego_pose_token"]))
    info = {"token": token, "timestamp": sample["timestamp"], "lidar_path": lidar["filename"],
            "lidar2ego_translation": l2e.translation.tolist(), "lidar2ego_rotation": l2e.rotation.tolist(),
            "ego2global_translation": e2g.translation.tolist(), "ego2global_rotation": e2g.rotation.tolist(),
            "cams": {c: _camera_info(tables, data[c], l2e, e2g) for c in camera_names}}
    info.update(_boxes(tables, tables.annotations[token], l2e, e2g))
    return info


def read_table_infos(folder: Path, camera_names: Sequence[str]) -> List[Dict]:
    """Info entries of every sample of a version folder, in timestamp order (as upstream's dataset sorts them)."""
    tables = Tables(folder)
    order = sorted(tables.rows["sample"].values(), key=lambda s: s["timestamp"])
    return [sample_info(tables, s["token"], camera_names) for s in order]
