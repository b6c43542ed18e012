"""Synthetic surround-view scenes in nuScenes' layout: the camera-only recipe's built-in dataset, deterministic per seed.

A car drives on a straight two-way road; six cameras on its roof (nuScenes' mounting and intrinsics, with a small
per-dataset jitter of angles, focal length and principal point) see cars, trucks, buses, trailers, construction
vehicles, pedestrians, motorcycles, bicycles, barriers and traffic cones around it, drawn as shaded cuboids over a
textured road by the roadside generator's renderer (`bevport.data.scenes`).

Frames are written as nuScenes' converters leave them: `samples/CAM_*/<scene>__CAM_*__<timestamp>.jpg` and an info
file `nuscenes_infos_val.pkl` with mmdet3d's keys (per camera `data_path` as `./data/nuscenes/samples/...`,
`cam_intrinsic`, `sensor2lidar_rotation/translation`, the sensor and ego poses; per sample `gt_boxes` [N,7] =
(x, y, z of the box centre, w, l, h, -yaw - pi/2) in the LIDAR_TOP frame, `gt_names`, `gt_velocity`, ...). The
LIDAR_TOP frame is nuScenes': x to the car's right, y forward, z up, 1.84 m above the ground. No point clouds are
written (the camera-only model reads none). Beside the info file, the official tables `v1.0-synthetic/*.json` hold
the same samples (`bevport.data.nuscenes_tables`), so nuScenes' own evaluation can score results on them. `num_lidar_pts`, which upstream's validation requires to be > 0 for an
object to count, holds instead the pixels the object covers over the six images: an object no camera sees does not
count, as one no LiDAR ray hits does not in nuScenes; `valid_flag` is the same test.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from bevport.data import scenes
from bevport.data.nuscenes_tables import TableCamera, TableSample, write_tables
from bevport.data.nuscenes_tables import rotation_quaternion as quaternion
from bevport.data.scenes import ObjectClass, SceneParams
from bevport.errors import DatasetError
from bevport.fsutil import atomic_output_dir, atomic_write_bytes

GENERATOR_VERSION = 2                   # 2: the official tables beside the info file
INFO_FILE = "nuscenes_infos_val.pkl"
METADATA_FILE = "bevport_synthetic.json"
SCENE_NAME = "bevport-synthetic"
VERSION = "v1.0-synthetic"                    # the info files' metadata and the tables' folder

# nuScenes' six cameras in converter order (name, fx, cx, cy, mount (ego x, y, z), optical-axis yaw and down-tilt in
# degrees), from a v1.0 vehicle's calibrated_sensor records; all 1600 x 900.
CAMERAS = (
    ("CAM_FRONT", 1266.4, 816.3, 491.5, (1.70, 0.02, 1.51), 0.3, 0.3),
    ("CAM_FRONT_RIGHT", 1260.8, 808.0, 495.3, (1.55, -0.49, 1.50), -56.4, 0.8),
    ("CAM_FRONT_LEFT", 1272.6, 826.6, 479.8, (1.52, 0.49, 1.51), 55.2, -0.1),
    ("CAM_BACK", 809.2, 829.2, 481.8, (0.03, 0.00, 1.58), 179.9, -1.0),
    ("CAM_BACK_LEFT", 1256.7, 792.1, 492.8, (1.04, 0.48, 1.59), 108.6, 0.9),
    ("CAM_BACK_RIGHT", 1259.5, 807.3, 501.2, (1.01, -0.48, 1.56), -110.8, 0.9),
)
IMAGE_SIZE = (1600, 900)                       # W, H
LIDAR_TO_EGO = np.array([0.94, 0.0, 1.84])     # LIDAR_TOP mount; its x points to the car's right
LIDAR_ROTATION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # LiDAR -> ego (yaw -90 deg)

# nuScenes' ten detection classes: (weight, length, width, height ranges in m, placement), and how they are drawn.
CLASSES = {
    "car": ObjectClass(0.40, (3.9, 4.9), (1.7, 2.0), (1.4, 1.8), "lane"),
    "truck": ObjectClass(0.07, (6.0, 9.5), (2.3, 2.6), (2.6, 3.6), "lane"),
    "bus": ObjectClass(0.03, (10.0, 12.5), (2.6, 3.0), (3.0, 3.6), "lane"),
    "trailer": ObjectClass(0.02, (8.0, 12.0), (2.4, 2.6), (3.0, 3.8), "lane"),
    "construction_vehicle": ObjectClass(0.02, (5.0, 7.5), (2.5, 3.0), (2.8, 3.6), "edge"),
    "pedestrian": ObjectClass(0.18, (0.5, 0.8), (0.5, 0.7), (1.6, 1.85), "walk"),
    "motorcycle": ObjectClass(0.04, (1.9, 2.3), (0.7, 0.9), (1.3, 1.6), "bike"),
    "bicycle": ObjectClass(0.05, (1.6, 1.9), (0.5, 0.7), (1.1, 1.4), "bike"),
    "barrier": ObjectClass(0.10, (0.4, 0.6), (1.8, 2.6), (0.9, 1.1), "edge"),
    "traffic_cone": ObjectClass(0.09, (0.35, 0.45), (0.35, 0.45), (0.6, 1.0), "edge"),
}
LOOKS = {"car": "Car", "truck": "Truck", "bus": "Bus", "trailer": "Truck", "construction_vehicle": "Truck",
         "pedestrian": "Pedestrian", "motorcycle": "Cyclist", "bicycle": "Cyclist", "barrier": "Barrier",
         "traffic_cone": "Cone"}
EGO_BOX = np.array([0.0, 0.0, 0.75, 5.0, 2.2, 1.5, 0.0])   # the car itself: objects keep clear of it


@dataclass(frozen=True)
class SurroundParams:
    """Every knob of the generator (all recorded in bevport_synthetic.json)."""

    min_objects: int = 12
    max_objects: int = 40
    object_range: float = 50.0                 # |x| along the road, ego frame
    lanes_per_direction: int = 2
    lane_width: float = 3.5
    sidewalk_width: float = 3.0

    def road(self) -> SceneParams:
        """The roadside generator's parameters for the ground and placement: the road along the ego x axis, the
        ground at ego z = 0."""
        return SceneParams(min_objects=self.min_objects, max_objects=self.max_objects,
                           object_x=(-self.object_range, self.object_range), ground_z=0.0,
                           lanes_per_direction=self.lanes_per_direction, lane_width=self.lane_width,
                           sidewalk_width=self.sidewalk_width, image_size=IMAGE_SIZE)


@dataclass(frozen=True)
class Camera:
    name: str
    K: np.ndarray              # [3,3]
    camera2ego: np.ndarray     # [4,4]

    @property
    def camera2lidar(self) -> np.ndarray:
        return np.linalg.inv(lidar2ego()) @ self.camera2ego

    def rig(self) -> scenes.CameraRig:
        """The renderer's camera in the ego frame (x_cam = R x_ego + t)."""
        ego2cam = np.linalg.inv(self.camera2ego)
        return scenes.CameraRig(self.K, ego2cam[:3, :3], ego2cam[:3, 3], IMAGE_SIZE)


def lidar2ego() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = LIDAR_ROTATION, LIDAR_TO_EGO
    return m


def make_cameras(rng: np.random.Generator) -> List[Camera]:
    """The six cameras with this dataset's jitter: +-0.5 deg of yaw, tilt and roll, +-1% focal length, +-4 px."""
    cameras = []
    for name, f, cx, cy, mount, yaw, tilt in CAMERAS:
        f *= 1 + rng.uniform(-0.01, 0.01)
        k = np.array([[f, 0.0, cx + rng.uniform(-4, 4)], [0.0, f, cy + rng.uniform(-4, 4)], [0.0, 0.0, 1.0]])
        pitch, turn, roll = np.deg2rad([tilt + rng.uniform(-0.5, 0.5), yaw + rng.uniform(-0.5, 0.5),
                                        rng.uniform(-0.5, 0.5)])
        camera2ego = np.eye(4)
        camera2ego[:3, :3] = scenes.camera_rotation(pitch, turn, roll).T
        camera2ego[:3, 3] = mount
        cameras.append(Camera(name, k, camera2ego))
    return cameras


def to_lidar(boxes_ego: np.ndarray) -> np.ndarray:
    """Ego-frame boxes (x, y, z_centre, l, w, h, yaw) -> LIDAR_TOP frame, same layout."""
    out = np.array(boxes_ego, np.float64).reshape(-1, 7)
    out[:, :3] = (out[:, :3] - LIDAR_TO_EGO) @ LIDAR_ROTATION          # R^T (p - t), row vectors
    out[:, 6] = np.arctan2(np.sin(out[:, 6] + math.pi / 2), np.cos(out[:, 6] + math.pi / 2))
    return out


def info_boxes(boxes_lidar: np.ndarray) -> np.ndarray:
    """mmdet3d's info layout: (x, y, z_centre, w, l, h, -yaw - pi/2), yaw the heading in the LiDAR frame."""
    b = np.asarray(boxes_lidar, np.float64).reshape(-1, 7)
    return np.concatenate([b[:, :3], b[:, 4:5], b[:, 3:4], b[:, 5:6], -b[:, 6:7] - math.pi / 2], axis=1)


@dataclass
class SurroundScene:
    index: int
    images: Dict[str, object]            # camera name -> PIL image
    instance_maps: Dict[str, np.ndarray]  # camera name -> [H,W] uint8, k+1 where box k is the front-most
    cameras: List[Camera]
    boxes: np.ndarray                    # [M,7] ego frame (x, y, z_centre, l, w, h, yaw)
    names: List[str]


def dataset_cameras(seed: int) -> List[Camera]:
    """The camera rig of the synthetic surround dataset `seed` (the same for all its frames)."""
    return make_cameras(np.random.default_rng([seed, 2]))


def make_scene(seed: int, index: int = 0, params: Optional[SurroundParams] = None) -> SurroundScene:
    """Frame `index` of the synthetic surround dataset `seed`: the rig depends on the seed only."""
    params = params or SurroundParams()
    rng = np.random.default_rng([seed, 3, index])
    cameras = dataset_cameras(seed)
    road = params.road()
    crosswalk_x = float(rng.uniform(-30.0, 30.0)) if rng.random() < 0.4 else None
    boxes, names = scenes.sample_objects(rng, road, crosswalk_x, CLASSES, keep_clear=[EGO_BOX])
    looks = [LOOKS[n] for n in names]
    colors = scenes.object_colors(rng, looks)
    images, maps = {}, {}
    for camera in cameras:
        image, instance_map, _ = scenes.render_image(rng, camera.rig(), boxes, looks, colors, road, crosswalk_x)
        images[camera.name], maps[camera.name] = image, instance_map
    return SurroundScene(index, images, maps, cameras, boxes, names)


def _camera_info(camera: Camera, path: str, timestamp: int) -> Dict[str, object]:
    c2e = camera.camera2ego
    c2l = camera.camera2lidar
    return {"data_path": path, "type": camera.name, "sample_data_token": Path(path).stem,
            "sensor2ego_translation": c2e[:3, 3].tolist(), "sensor2ego_rotation": quaternion(c2e[:3, :3]),
            "ego2global_translation": [0.0, 0.0, 0.0], "ego2global_rotation": [1.0, 0.0, 0.0, 0.0],
            "timestamp": timestamp, "sensor2lidar_rotation": c2l[:3, :3], "sensor2lidar_translation": c2l[:3, 3],
            "cam_intrinsic": camera.K}


def sample_info(scene: SurroundScene, token: str, timestamp: int, paths: Dict[str, str]) -> Dict[str, object]:
    """The scene's entry of the info file, as mmdet3d's converter writes one."""
    lidar_boxes = to_lidar(scene.boxes)
    pixels = np.zeros(len(scene.boxes), np.int64)
    for instance_map in scene.instance_maps.values():
        pixels += np.bincount(instance_map.reshape(-1), minlength=len(scene.boxes) + 1)[1:]
    l2e = lidar2ego()
    return {
        "token": token, "timestamp": timestamp, "lidar_path": "", "sweeps": [], "prev_token": "",
        "cams": {c.name: _camera_info(c, paths[c.name], timestamp) for c in scene.cameras},
        "lidar2ego_translation": l2e[:3, 3].tolist(), "lidar2ego_rotation": quaternion(l2e[:3, :3]),
        "ego2global_translation": [0.0, 0.0, 0.0], "ego2global_rotation": [1.0, 0.0, 0.0, 0.0],
        "gt_boxes": info_boxes(lidar_boxes), "gt_names": np.array(scene.names),
        "gt_velocity": np.zeros((len(scene.names), 2)), "num_lidar_pts": pixels,
        "num_radar_pts": np.zeros(len(scene.names), np.int64), "valid_flag": pixels > 0,
    }


def table_sample(scene: SurroundScene, info: Dict[str, object], paths: Dict[str, str]) -> TableSample:
    """The scene as the official tables hold it (the ego pose is the identity: global = ego frame)."""
    cameras = [TableCamera(c.name, paths[c.name].replace("./data/nuscenes/", ""), c.K, c.camera2ego, IMAGE_SIZE)
               for c in scene.cameras]
    return TableSample(str(info["token"]), int(info["timestamp"]), f"{SCENE_NAME}-{info['token']}", cameras,
                       lidar2ego(), scene.boxes, list(scene.names), np.asarray(info["num_lidar_pts"]))


def write_synthetic_surround(out: Union[str, Path], frames: int, seed: int, *, overwrite: bool = False,
                             params: Optional[SurroundParams] = None, progress=None) -> Path:
    """Write frames 0..frames-1 of dataset `seed` in nuScenes' layout (samples/CAM_*/ and the info file), built
    beside `out` and moved into place when complete."""
    out = Path(out)
    params = params or SurroundParams()
    for value, what in ((seed, "seed"), (frames, "frames")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if what == "seed" else 1):
            raise DatasetError(f"{what} must be a {'non-negative' if what == 'seed' else 'positive'} integer, "
                               f"got {value!r}")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty",
                           "choose another folder, delete it, or pass overwrite=True (--overwrite)")
    infos, tables = [], []
    with atomic_output_dir(out) as tmp:
        for index in range(frames):
            scene = make_scene(seed, index, params)
            timestamp = 1_530_000_000_000_000 + index * 500_000
            paths = {}
            for name, image in scene.images.items():
                relative = f"samples/{name}/{SCENE_NAME}__{name}__{timestamp}.jpg"
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                image.save(tmp / relative, quality=92)
                paths[name] = f"./data/nuscenes/{relative}"
            infos.append(sample_info(scene, f"{seed:04d}{index:028x}", timestamp, paths))
            tables.append(table_sample(scene, infos[-1], paths))
            if progress is not None:
                progress(index + 1, frames)
        write_tables(tmp, VERSION, tables, dataset=f"{SCENE_NAME}-{seed}")
        atomic_write_bytes(tmp / INFO_FILE, pickle.dumps({"infos": infos, "metadata": {"version": VERSION}},
                                                         protocol=2))
        meta = {"generator": "bevport.data.surround", "version": GENERATOR_VERSION, "seed": int(seed),
                "frames": int(frames), "layout": "nuscenes-infos", "params": dataclasses.asdict(params)}
        atomic_write_bytes(tmp / METADATA_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out
