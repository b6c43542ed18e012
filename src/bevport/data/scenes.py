"""Synthetic roadside scenes: the built-in default dataset, DAIR-V2X-I-like, deterministic per seed, KITTI layout.

Everything lives in DAIR-V2X-I's virtual-LiDAR frame: x along the road, y left, z up, with the ground *below* the
origin (at `ground_z`). A camera and a LiDAR sit on one roadside pole and see the same objects: the LiDAR is a regular
grid of rays cast against the ground plane and every object cuboid; the image is the road drawn in perspective plus
every cuboid projected with the very K and lidar2cam that the calibration file holds.

Frame `index` of seed `seed` depends on those two numbers (and the parameters) only, so frames 0..N-1 are the same
whatever N is; the camera rig (a small per-dataset jitter) depends on the seed only.

Labels are KITTI's camera-frame convention, as BEVHeight's dair2kitti writes them: `location` is the box's bottom
centre in camera coordinates, `rotation_y` the LiDAR heading turned into the camera frame (-atan2(hz, hx)), and
`occluded` comes from the share of an object's LiDAR rays that reach it before another object does (the camera sits
on the same pole, so this stands in for occlusion in the image).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from bevport.data.calib import Calibration
from bevport.data.kitti import KittiObject, write_frame
from bevport.errors import DatasetError
from bevport.fsutil import atomic_output_dir, atomic_write_bytes
from bevport.geometry.boxes import cuboid_corners, wrap_angle

GENERATOR_VERSION = 1
METADATA_FILE = "bevport_synthetic.json"
F32 = np.float32
NEAR = 0.1                                   # camera near plane (m): faces with a corner closer are not drawn

Color = Tuple[int, int, int]


@dataclass(frozen=True)
class SceneParams:
    """Every knob of the generator (all recorded in bevport_synthetic.json). Defaults give DAIR-V2X-I-like frames."""

    density: float = 1.0                     # multiplies the LiDAR's scan lines: BEV pillar coverage grows with it
    min_objects: int = 5
    max_objects: int = 25
    object_x: Tuple[float, float] = (5.0, 95.0)
    ground_z: float = -1.7
    pole_height: float = 6.0                 # LiDAR above the ground; the camera sits a little lower
    lanes_per_direction: int = 2
    lane_width: float = 3.5
    sidewalk_width: float = 3.0
    image_size: Tuple[int, int] = (1920, 1080)       # W, H
    lidar_half_fov_deg: float = 55.0
    lidar_lines: int = 85                    # scan lines whose ground ranges span lidar_min_range..lidar_max_x
    lidar_columns: int = 600
    lidar_min_range: float = 3.0
    lidar_max_x: float = 110.0
    range_noise: float = 0.015
    dropout: float = 0.02
    bev_range: Tuple[float, float, float, float] = (0.0, -51.2, 102.4, 51.2)  # recipe point_cloud_range, x/y only

    @property
    def road_half_width(self) -> float:
        return self.lanes_per_direction * self.lane_width

    @property
    def lidar_z(self) -> float:
        return self.ground_z + self.pole_height


# ------------------------------------------------------------------------------------------------------ camera rig

@dataclass(frozen=True)
class CameraRig:
    """K [3,3] and the LiDAR -> camera transform x_cam = R x_lidar + t (camera x right, y down, z forward)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    size: Tuple[int, int]

    @property
    def position(self) -> np.ndarray:
        return -self.R.T @ self.t

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float64) @ self.R.T + self.t

    def project(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates [N,2] and camera depth [N] of LiDAR-frame points."""
        cam = self.to_camera(points)
        uvw = cam @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]

    def calibration(self) -> Calibration:
        return Calibration.from_dair(self.K.ravel(), self.R, self.t)


def camera_rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """LiDAR -> camera rotation of a camera looking along +x, turned by `yaw`, tilted down by `pitch`, rolled."""
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    return np.stack([c * right + s * down, -s * right + c * down, forward])


def make_rig(rng: np.random.Generator, params: SceneParams) -> CameraRig:
    w, h = params.image_size
    f = rng.uniform(2100.0, 2200.0)
    k = np.array([[f, 0.0, w / 2 + rng.uniform(-8, 8)], [0.0, f, h / 2 + rng.uniform(-8, 8)], [0.0, 0.0, 1.0]])
    pitch, yaw, roll = np.deg2rad([rng.uniform(10.0, 15.0), rng.uniform(-4.0, 4.0), rng.uniform(-0.8, 0.8)])
    position = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), params.lidar_z - rng.uniform(0.1, 0.4)])
    r = camera_rotation(pitch, yaw, roll)
    return CameraRig(k, r, -r @ position, (w, h))


# ---------------------------------------------------------------------------------------------------------- boxes

# Corner i has signs (x: bit 0, y: bit 1, z: bit 2). FACES[:4] are the sides (bottom edge first, then the top edge
# reversed; FACES[0] is the front), then the top and the bottom.
_SIGNS = np.array([[(i & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i >> 2 & 1) * 2 - 1] for i in range(8)], np.float64)
# Where corner i sits among cuboid_corners' (front-left, front-right, rear-right, rear-left; bottom then top).
_FROM_CUBOID = [2, 1, 3, 0, 6, 5, 7, 4]
FACES = (((1, 3, 7, 5), (1, 0, 0)), ((0, 2, 6, 4), (-1, 0, 0)), ((2, 3, 7, 6), (0, 1, 0)),
         ((0, 1, 5, 4), (0, -1, 0)), ((4, 5, 7, 6), (0, 0, 1)), ((0, 1, 3, 2), (0, 0, -1)))


def rotate_z(vectors: np.ndarray, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.asarray(vectors, np.float64) @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def box_corners(box: Sequence[float]) -> np.ndarray:
    """[8,3] corners of a LiDAR box (x, y, z_center, l, w, h, yaw) in the order of _SIGNS; l lies along the heading."""
    x, y, z, l, w, h, yaw = box
    return cuboid_corners((x, y, z), l, w, -h / 2, h / 2, yaw)[_FROM_CUBOID]


def _bev_corners(box: Sequence[float], margin: float = 0.0) -> np.ndarray:
    x, y, _, l, w, _, yaw = box
    return rotate_z(_SIGNS[:4] * [l / 2 + margin, w / 2 + margin, 0.0], yaw)[:, :2] + [x, y]


def bev_overlap(a: Sequence[float], b: Sequence[float], margin: float = 0.0) -> bool:
    """Whether two boxes' footprints (each grown by `margin`) overlap: separating-axis test on both rectangles."""
    ca, cb = _bev_corners(a, margin), _bev_corners(b, margin)
    for yaw in (a[6], b[6]):
        for axis in ((math.cos(yaw), math.sin(yaw)), (-math.sin(yaw), math.cos(yaw))):
            pa, pb = ca @ axis, cb @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


# ----------------------------------------------------------------------------------------------- object placement

@dataclass(frozen=True)
class ObjectClass:
    weight: float
    length: Tuple[float, float]
    width: Tuple[float, float]
    height: Tuple[float, float]
    place: str                               # "lane", "walk", "bike" or "edge"


CLASSES = {
    "Car": ObjectClass(0.56, (3.9, 4.9), (1.7, 2.0), (1.4, 1.7), "lane"),
    "Van": ObjectClass(0.05, (4.8, 5.6), (1.9, 2.1), (1.9, 2.3), "lane"),
    "Truck": ObjectClass(0.04, (6.5, 9.5), (2.3, 2.6), (2.8, 3.6), "lane"),
    "Bus": ObjectClass(0.03, (10.0, 12.0), (2.5, 2.6), (3.0, 3.3), "lane"),
    "Pedestrian": ObjectClass(0.20, (0.5, 0.8), (0.5, 0.7), (1.6, 1.85), "walk"),
    "Cyclist": ObjectClass(0.12, (1.6, 1.9), (0.5, 0.8), (1.6, 1.8), "bike"),
}
VEHICLES = ("Car", "Van", "Truck", "Bus")
_CLASS_NAMES = tuple(CLASSES)
_CLASS_P = np.array([c.weight for c in CLASSES.values()]) / sum(c.weight for c in CLASSES.values())


def _side(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _along_road(side: float) -> float:
    # right-hand traffic: the lanes right of the road axis (y < 0) drive towards +x
    return 0.0 if side < 0 else math.pi


def _lane_position(rng: np.random.Generator, params: SceneParams) -> Tuple[float, float]:
    side = _side(rng)
    lane = rng.integers(params.lanes_per_direction)
    y = side * (lane + 0.5) * params.lane_width + rng.normal(0.0, 0.25)
    return y, _along_road(side) + rng.normal(0.0, 0.03)


def _walk_position(rng: np.random.Generator, params: SceneParams,
                   crosswalk_x: Optional[float]) -> Tuple[float, float, Optional[float]]:
    """(y, heading, forced x or None) of a pedestrian: on a sidewalk, on the crosswalk, or at the road edge."""
    side, road = _side(rng), params.road_half_width
    pick = rng.random()
    if crosswalk_x is not None and pick < 0.2:
        x = crosswalk_x + rng.uniform(0.5, 3.5)
        return rng.uniform(-road + 0.5, road - 0.5), side * math.pi / 2 + rng.normal(0.0, 0.2), x
    if pick < 0.35:
        return side * rng.uniform(road - 0.8, road - 0.4), rng.uniform(-math.pi, math.pi), None
    y = side * rng.uniform(road + 0.4, road + params.sidewalk_width - 0.4)
    heading = rng.uniform(-math.pi, math.pi) if rng.random() < 0.5 else _along_road(side) + rng.normal(0.0, 0.2)
    return y, heading, None


def _bike_position(rng: np.random.Generator, params: SceneParams) -> Tuple[float, float]:
    side, road = _side(rng), params.road_half_width
    if rng.random() < 0.6:
        return side * rng.uniform(road - 1.0, road - 0.5), _along_road(side) + rng.normal(0.0, 0.1)
    return side * rng.uniform(road + 0.5, road + params.sidewalk_width - 0.5), rng.uniform(-math.pi, math.pi)


def _edge_position(rng: np.random.Generator, params: SceneParams) -> Tuple[float, float]:
    """Along the road's edge line (barriers, cones), facing along the road."""
    side = _side(rng)
    return side * (params.road_half_width - rng.uniform(0.2, 0.6)), _along_road(side) + rng.normal(0.0, 0.05)


def sample_box(rng: np.random.Generator, name: str, params: SceneParams,
               crosswalk_x: Optional[float], classes: Optional[Dict[str, ObjectClass]] = None) -> np.ndarray:
    """A box of class `name` (from `classes`, default the roadside KITTI classes) placed as the class says."""
    cls = (classes or CLASSES)[name]
    l, w, h = (rng.uniform(*r) for r in (cls.length, cls.width, cls.height))
    x = None
    if cls.place == "lane":
        y, yaw = _lane_position(rng, params)
    elif cls.place == "walk":
        y, yaw, x = _walk_position(rng, params, crosswalk_x)
    elif cls.place == "edge":
        y, yaw = _edge_position(rng, params)
    else:
        y, yaw = _bike_position(rng, params)
    if x is None:
        lo, hi = params.object_x
        x = rng.uniform(lo + l / 2, hi - l / 2)
    return np.array([x, y, params.ground_z + h / 2, l, w, h, math.atan2(math.sin(yaw), math.cos(yaw))])


def sample_objects(rng: np.random.Generator, params: SceneParams, crosswalk_x: Optional[float],
                   classes: Optional[Dict[str, ObjectClass]] = None,
                   keep_clear: Sequence[np.ndarray] = ()) -> Tuple[np.ndarray, List[str]]:
    """Non-overlapping boxes [M,7] (z at the box centre) and their class names, drawn from `classes` by weight
    (default the roadside KITTI classes), none overlapping a box of `keep_clear`."""
    names_table, p = _CLASS_NAMES, _CLASS_P
    if classes is not None:
        names_table = tuple(classes)
        p = np.array([c.weight for c in classes.values()]) / sum(c.weight for c in classes.values())
    boxes, names = [], []  # type: List[np.ndarray], List[str]
    for _ in range(rng.integers(params.min_objects, params.max_objects + 1)):
        for _attempt in range(40):
            name = names_table[rng.choice(len(names_table), p=p)]
            box = sample_box(rng, name, params, crosswalk_x, classes)
            if not any(bev_overlap(box, other, 0.3) for other in list(boxes) + list(keep_clear)):
                boxes.append(box)
                names.append(name)
                break
    return np.array(boxes, np.float64).reshape(-1, 7), names


# ------------------------------------------------------------------------------------------------------ the ground

ASPHALT, WHITE, YELLOW, SIDEWALK, GRASS = range(5)
GROUND_RGB = np.array([[92, 92, 96], [228, 228, 220], [222, 184, 48], [168, 162, 152], [72, 112, 48]], F32)
GROUND_INTENSITY = np.array([[5, 20], [60, 120], [50, 100], [12, 28], [3, 12]], F32)   # raw 0..255, like DAIR
DASH_PERIOD, DASH_LENGTH = 9.0, 3.0


def _periodic(values: np.ndarray, period: float, duty: float) -> np.ndarray:
    """Whether each value falls in the first `duty` metres of its period (a dash, a stripe, a paving joint)."""
    return values - np.floor(values * (1.0 / period)) * period < duty


def ground_material(x: np.ndarray, y: np.ndarray, params: SceneParams, crosswalk_x: Optional[float]) -> np.ndarray:
    """Material code of the ground at LiDAR-frame (x, y): the same map feeds the image and the LiDAR intensity."""
    ay, road = np.abs(y), params.road_half_width
    material = np.full(np.shape(x), ASPHALT, np.uint8)
    material[ay >= road] = SIDEWALK
    material[ay >= road + params.sidewalk_width] = GRASS
    material[np.abs(ay - (road - 0.3)) < 0.1] = WHITE                       # solid edge lines
    for lane in range(1, params.lanes_per_direction):                      # dashed lane dividers
        line = np.flatnonzero(np.abs(ay - lane * params.lane_width) < 0.075)
        material.flat[line[_periodic(x.flat[line], DASH_PERIOD, DASH_LENGTH)]] = WHITE
    if crosswalk_x is not None:                                            # zebra stripes along the road
        zone = np.flatnonzero((x >= crosswalk_x) & (x < crosswalk_x + 4.0) & (ay < road - 0.5))
        material.flat[zone[_periodic(y.flat[zone], 1.0, 0.5)]] = WHITE
    material[np.abs(ay - 0.15) < 0.06] = YELLOW                            # double centre line
    return material


# ---------------------------------------------------------------------------------------------------------- LiDAR

@dataclass(frozen=True)
class ScanPattern:
    """A regular grid of rays from `origin`: `elevations` (lines) x `azimuths` (columns), both ascending."""

    origin: np.ndarray
    elevations: np.ndarray
    azimuths: np.ndarray

    def directions(self) -> np.ndarray:
        el, az = self.elevations[:, None], self.azimuths[None, :]
        return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)


def scan_pattern(params: SceneParams) -> ScanPattern:
    """Lines spaced so their ground ranges grow geometrically from lidar_min_range to lidar_max_x (like a real
    roadside scanner, denser towards the horizon), plus lines at the same spacing up to just below the horizon, so
    far objects are scanned to their tops."""
    lines = max(2, int(round(params.lidar_lines * params.density)))
    ranges = params.lidar_min_range * (params.lidar_max_x / params.lidar_min_range) ** np.linspace(0, 1, lines)
    ground = -np.arctan(params.pole_height / ranges)
    step = ground[-1] - ground[-2]
    upper = ground[-1] + step * np.arange(1, int((math.radians(-0.3) - ground[-1]) / step) + 1)
    half = math.radians(params.lidar_half_fov_deg)
    return ScanPattern(np.array([0.0, 0.0, params.lidar_z]), np.concatenate([ground, upper]),
                       np.linspace(-half, half, params.lidar_columns))


def _angular_window(pattern: ScanPattern, box: np.ndarray) -> Tuple[slice, slice]:
    """The lines and columns whose rays can reach `box` (a conservative bound from its corners)."""
    rel = box_corners(box) - pattern.origin
    azimuth = np.arctan2(rel[:, 1], rel[:, 0])
    local = rotate_z(pattern.origin - box[:3], -box[6])
    nearest = math.hypot(max(abs(local[0]) - box[3] / 2, 0.0), max(abs(local[1]) - box[4] / 2, 0.0))
    farthest = np.hypot(rel[:, 0], rel[:, 1]).max()
    low, high = rel[:, 2].min(), rel[:, 2].max()
    el_lo = math.atan2(low, max(nearest, 1e-6) if low < 0 else farthest)
    el_hi = math.atan2(high, farthest if high < 0 else max(nearest, 1e-6))
    return _between(pattern.elevations, el_lo, el_hi), _between(pattern.azimuths, azimuth.min(), azimuth.max())


def _between(sorted_values: np.ndarray, low: float, high: float) -> slice:
    return slice(int(np.searchsorted(sorted_values, low)), int(np.searchsorted(sorted_values, high, "right")))


def ray_box_distance(origin: np.ndarray, directions: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Distance along each ray [..., 3] to its first hit on `box` (slab test in the box frame); inf on a miss."""
    o = rotate_z(origin - box[:3], -box[6])
    d = rotate_z(directions.reshape(-1, 3), -box[6])
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    half = box[3:6] / 2
    t1, t2 = (-half - o) / d, (half - o) / d
    near, far = np.minimum(t1, t2).max(axis=1), np.maximum(t1, t2).min(axis=1)
    hit = (near <= far) & (near > 0)
    return np.where(hit, near, np.inf).reshape(directions.shape[:-1])


@dataclass
class Scan:
    points: np.ndarray                       # [N,4] float32, scan order (column by column)
    visible_rays: np.ndarray                 # per box: rays whose first hit is the box
    unoccluded_rays: np.ndarray              # per box: rays that would hit the box if it were alone


def scan_lidar(rng: np.random.Generator, boxes: np.ndarray, names: Sequence[str], params: SceneParams,
               crosswalk_x: Optional[float]) -> Scan:
    pattern = scan_pattern(params)
    directions = pattern.directions()
    dz = directions[..., 2]
    distance = np.where(dz < 0, (params.ground_z - pattern.origin[2]) / np.minimum(dz, -1e-12), np.inf)
    hit = np.full(distance.shape, -1, np.int64)
    unoccluded = np.zeros(len(boxes), np.int64)
    for k, box in enumerate(boxes):
        lines, cols = _angular_window(pattern, box)
        t = ray_box_distance(pattern.origin, directions[lines, cols], box)
        unoccluded[k] = np.isfinite(t).sum()
        closer = t < distance[lines, cols]
        distance[lines, cols] = np.where(closer, t, distance[lines, cols])
        hit[lines, cols] = np.where(closer, k, hit[lines, cols])
    visible = np.bincount(hit[hit >= 0], minlength=len(boxes))
    # scan order: one column (firing) after another, each from the lowest line up
    directions, distance, hit = directions.transpose(1, 0, 2), distance.T, hit.T
    noisy = distance + rng.normal(0.0, params.range_noise, distance.shape)
    keep = np.isfinite(distance) & (rng.random(distance.shape) >= params.dropout)
    xyz = pattern.origin + noisy[keep][:, None] * directions[keep]
    hit = hit[keep]
    inside = (xyz[:, 0] > 0) & (xyz[:, 0] < params.lidar_max_x)
    xyz, hit = xyz[inside], hit[inside]
    intensity = _intensities(rng, xyz, hit, boxes, names, params, crosswalk_x)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(F32)
    return Scan(points, visible, unoccluded)


def _intensities(rng: np.random.Generator, xyz: np.ndarray, hit: np.ndarray, boxes: np.ndarray,
                 names: Sequence[str], params: SceneParams, crosswalk_x: Optional[float]) -> np.ndarray:
    """Raw 0..255 intensities: ground by material, objects by a per-object level, licence plates retro-bright."""
    material = ground_material(xyz[:, 0], xyz[:, 1], params, crosswalk_x)
    lo, hi = GROUND_INTENSITY[material, 0], GROUND_INTENSITY[material, 1]
    out = lo + (hi - lo) * rng.random(len(xyz))
    levels = np.array([rng.uniform(10, 40) if n == "Pedestrian" else rng.uniform(15, 45) if n == "Cyclist"
                       else rng.uniform(30, 80) for n in names])
    on_object = hit >= 0
    if on_object.any():
        out[on_object] = levels[hit[on_object]] + rng.uniform(-5, 5, on_object.sum())
        out[on_object] = np.where(_on_plate(xyz[on_object], boxes[hit[on_object]], names, hit[on_object]),
                                  rng.uniform(180, 255, on_object.sum()), out[on_object])
    return np.clip(out, 0, 255)


def _on_plate(xyz: np.ndarray, boxes: np.ndarray, names: Sequence[str], index: np.ndarray) -> np.ndarray:
    """Whether each object hit lies on a vehicle's front or rear licence plate."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    rel = xyz - boxes[:, :3]
    along, across = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    above_ground = rel[:, 2] + boxes[:, 5] / 2
    vehicle = np.isin(np.asarray(names, dtype=object)[index], VEHICLES)
    return (vehicle & (np.abs(along) > boxes[:, 3] / 2 - 0.05) & (np.abs(across) < 0.26)
            & (above_ground > 0.35) & (above_ground < 0.55))


# ---------------------------------------------------------------------------------------------------------- image

SKY_HORIZON, SKY_ZENITH = np.array([188, 206, 224], F32), np.array([86, 136, 196], F32)
HAZE = np.array([196, 204, 212], F32)
GROUND_CONTRAST = np.array([0.45, 0.12, 0.12, 0.25, 0.7], F32)     # texture strength per material
SKYLINE_DISTANCE = 400.0                    # ground farther than this is hidden by the background band
SKYLINE_BIN = math.radians(0.6)
LATTICE_ORIGIN, LATTICE_CELL, LATTICE_SHAPE = (-20.0, -60.0), 0.25, (481, 1761)   # wear over x -20..420, y -60..60
SHADOW_RGB = (46, 46, 50)
WINDOW_RGB = (34, 46, 78)
TROUSERS_RGB = (38, 44, 92)
BIKE_RGB = (30, 30, 36)
SUN = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
PALETTES = {
    "vehicle": ((178, 34, 40), (32, 64, 170), (40, 132, 64), (214, 172, 30), (216, 104, 28), (22, 142, 150),
                (112, 48, 142), (150, 30, 90)),
    "Pedestrian": ((220, 60, 160), (60, 200, 220), (150, 220, 40), (240, 120, 120), (120, 90, 230)),
    "Cyclist": ((250, 140, 0), (0, 200, 170), (230, 230, 40)),
    "Cone": ((255, 110, 20), (250, 90, 10)),
    "Barrier": ((200, 200, 196), (214, 60, 50), (230, 226, 210)),
}
# (face indices, (u0, u1, v0, v1) on the face, colour): u runs along the bottom edge, v up the face
DETAILS = {
    "Car": ((range(4), (0.1, 0.9, 0.55, 0.88), WINDOW_RGB),),
    "Van": ((range(4), (0.1, 0.9, 0.6, 0.88), WINDOW_RGB),),
    "Bus": ((range(4), (0.05, 0.95, 0.5, 0.85), WINDOW_RGB),),
    "Truck": (((0,), (0.1, 0.9, 0.6, 0.88), WINDOW_RGB),),
    "Pedestrian": ((range(4), (0.0, 1.0, 0.0, 0.45), TROUSERS_RGB),),
    "Cyclist": ((range(4), (0.0, 1.0, 0.0, 0.4), BIKE_RGB),),
}


def object_colors(rng: np.random.Generator, names: Sequence[str]) -> List[Color]:
    colors = []
    for name in names:
        palette = PALETTES.get(name, PALETTES["vehicle"])
        base = np.array(palette[rng.integers(len(palette))]) + rng.integers(-12, 13, 3)
        colors.append(tuple(int(c) for c in np.clip(base, 0, 255)))
    return colors


def _pixel_rays(rig: CameraRig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LiDAR-frame direction (unnormalised) of the ray through every pixel centre, three [H,W] float32 arrays."""
    w, h = rig.size
    k = rig.K
    a = ((np.arange(w, dtype=F32) - F32(k[0, 2])) / F32(k[0, 0]))[None, :]
    b = ((np.arange(h, dtype=F32) - F32(k[1, 2])) / F32(k[1, 1]))[:, None]
    m = rig.R.T.astype(F32)
    return tuple(m[i, 0] * a + m[i, 1] * b + m[i, 2] for i in range(3))


def _wear_lattice(rng: np.random.Generator) -> np.ndarray:
    """Smooth patches of wear (about 4 m) sampled on a 0.25 m lattice, in -0.5..0.5."""
    coarse = Image.fromarray(rng.random((31, 111), dtype=F32), "F")
    return np.asarray(coarse.resize(LATTICE_SHAPE[::-1], Image.BILINEAR), F32) - F32(0.5)


def _ground_rgb(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, dist: np.ndarray, params: SceneParams,
                crosswalk_x: Optional[float]) -> np.ndarray:
    material = ground_material(x, y, params, crosswalk_x)
    lattice = _wear_lattice(rng)
    grain = rng.random(x.shape, dtype=F32) - F32(0.5)        # per pixel: asphalt grain is finer than any pixel
    ix = np.clip((x - F32(LATTICE_ORIGIN[0])) * F32(1 / LATTICE_CELL), 0, LATTICE_SHAPE[1] - 1).astype(np.int32)
    iy = np.clip((y - F32(LATTICE_ORIGIN[1])) * F32(1 / LATTICE_CELL), 0, LATTICE_SHAPE[0] - 1).astype(np.int32)
    wear = np.take(lattice, iy * LATTICE_SHAPE[1] + ix) * np.exp(dist * F32(-1 / 150))
    shade = 1 + np.take(GROUND_CONTRAST, material) * (F32(0.6) * grain + wear)
    walk = np.flatnonzero(material == SIDEWALK)
    joints = walk[_periodic(x.flat[walk], 0.8, 0.05) | _periodic(y.flat[walk], 0.8, 0.05)]
    shade.flat[joints] *= F32(0.8)
    fog = 1 - np.exp(dist * F32(-1 / 350))
    return np.take(GROUND_RGB, material, axis=0) * (shade * (1 - fog))[..., None] + HAZE * fog[..., None]


def _background_rgb(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Sky gradient above a distant skyline band of buildings and trees (piecewise constant in azimuth)."""
    elevation, azimuth = np.arctan2(dz, np.hypot(dx, dy)), np.arctan2(dy, dx)
    bins = int(math.pi / SKYLINE_BIN) + 1
    heights = rng.uniform(math.radians(0.2), math.radians(2.0), bins).astype(F32)
    tones = rng.uniform(0.55, 0.85, bins).astype(F32)
    hue = np.where(rng.random(bins) < 0.4, 1, 0)               # trees (greenish) or buildings (grey-blue)
    base = np.array([[112, 120, 138], [70, 100, 72]], F32)[hue] * tones[:, None]
    band_rgb = (0.45 * base + 0.55 * HAZE).astype(F32)
    which = np.clip(((azimuth + math.pi / 2) / SKYLINE_BIN).astype(np.int32), 0, bins - 1)
    t = np.clip(elevation / F32(0.3), 0, 1)[..., None]
    sky = SKY_HORIZON * (1 - t) + SKY_ZENITH * t
    return np.where((elevation < heights[which])[..., None], band_rgb[which], sky)


def render_background(rng: np.random.Generator, rig: CameraRig, params: SceneParams,
                      crosswalk_x: Optional[float]) -> Image.Image:
    """The empty scene: the ground plane's materials seen through every pixel, and the sky above."""
    dx, dy, dz = _pixel_rays(rig)
    cam = rig.position.astype(F32)
    s = (F32(params.ground_z) - cam[2]) / np.minimum(dz, F32(-1e-9))
    dist = s * np.hypot(dx, dy)
    ground = (dz < 0) & (dist < SKYLINE_DISTANCE)
    np.minimum(dist, F32(SKYLINE_DISTANCE), out=dist)
    rgb = _ground_rgb(rng, cam[0] + s * dx, cam[1] + s * dy, dist, params, crosswalk_x)
    sky = ~ground
    rgb[sky] = _background_rgb(rng, dx[sky], dy[sky], dz[sky])
    rgb += F32(0.5)
    np.clip(rgb, 0, 255, out=rgb)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _shade(color: Color, normal: np.ndarray) -> Color:
    light = 0.5 + 0.5 * max(0.0, float(normal @ SUN))
    return tuple(int(round(c * light)) for c in color)


def _face_quad(corners: np.ndarray, face: Sequence[int], u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    b0, b1, t0 = corners[face[0]], corners[face[1]], corners[face[3]]
    return np.array([b0 + u * (b1 - b0) + v * (t0 - b0) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))])


def _polygon(uv: np.ndarray) -> List[Tuple[float, float]]:
    return [(float(u), float(v)) for u, v in uv]


class _Painter:
    """Draws cuboids into the image and, with the same polygons, their index into an instance map."""

    def __init__(self, image: Image.Image, rig: CameraRig):
        self.rig = rig
        self.draw = ImageDraw.Draw(image)
        self.instance_map = Image.new("L", image.size, 0)
        self.ids = ImageDraw.Draw(self.instance_map)

    def shadow(self, box: np.ndarray, ground_z: float) -> None:
        footprint = np.concatenate([_bev_corners(box, 0.3), np.full((4, 1), ground_z)], axis=1)
        uv, depth = self.rig.project(footprint)
        if depth.min() > NEAR:
            self.draw.polygon(_polygon(uv), fill=SHADOW_RGB)

    def cuboid(self, box: np.ndarray, name: str, color: Color, instance: int) -> List[Color]:
        """Draw the faces that look at the camera and lie wholly before the near plane; return the colours used."""
        corners = box_corners(box)
        uv, depth = self.rig.project(corners)
        normals = rotate_z([n for _, n in FACES], box[6])
        used = []  # type: List[Color]
        for f, (face, _) in enumerate(FACES):
            toward = corners[list(face)].mean(axis=0) - self.rig.position
            if depth[list(face)].min() <= NEAR or normals[f] @ toward >= 0:
                continue
            used.append(self._fill(uv[list(face)], _shade(color, normals[f]), instance))
            for faces, (u0, u1, v0, v1), detail in DETAILS.get(name, ()):
                if f in faces:
                    quad, _ = self.rig.project(_face_quad(corners, face, u0, u1, v0, v1))
                    used.append(self._fill(quad, _shade(detail, normals[f]), instance))
        return used

    def _fill(self, uv: np.ndarray, color: Color, instance: int) -> Color:
        self.draw.polygon(_polygon(uv), fill=color)
        self.ids.polygon(_polygon(uv), fill=instance)
        return color


def render_image(rng: np.random.Generator, rig: CameraRig, boxes: np.ndarray, names: Sequence[str],
                 colors: Sequence[Color], params: SceneParams, crosswalk_x: Optional[float]):
    """(image, instance map [H,W] uint8 with k+1 where boxes[k] is in front, colours drawn per box)."""
    image = render_background(rng, rig, params, crosswalk_x)
    painter = _Painter(image, rig)
    depth = rig.to_camera(boxes[:, :3])[:, 2] if len(boxes) else np.zeros(0)
    far_to_near = np.argsort(-np.linalg.norm(boxes[:, :3] - rig.position, axis=1), kind="stable")
    drawn = [int(k) for k in far_to_near if depth[k] > NEAR]
    for k in drawn:
        painter.shadow(boxes[k], params.ground_z)
    face_colors = [[] for _ in names]  # type: List[List[Color]]
    for k in drawn:  # painter's algorithm: nearer boxes overwrite farther ones
        face_colors[k] = painter.cuboid(boxes[k], names[k], colors[k], k + 1)
    return image, np.asarray(painter.instance_map), face_colors


# --------------------------------------------------------------------------------------------------------- labels

def camera_rotation_y(rig: CameraRig, yaw: float) -> float:
    """KITTI rotation_y (about camera y; 0 faces camera +x) of a LiDAR-frame heading `yaw` (from +x toward +y)."""
    hx, _, hz = rig.R @ np.array([math.cos(yaw), math.sin(yaw), 0.0])
    return float(wrap_angle(-math.atan2(hz, hx)))


def occlusion_level(visible_fraction: float) -> int:
    """KITTI occluded: 0 fully visible, 1 partly, 2 largely occluded."""
    return 0 if visible_fraction >= 0.8 else 1 if visible_fraction >= 0.4 else 2


def in_bev_range(box: np.ndarray, bev_range: Sequence[float]) -> bool:
    corners = _bev_corners(box)
    x0, y0, x1, y1 = bev_range
    return bool(np.all((corners[:, 0] >= x0) & (corners[:, 0] < x1) & (corners[:, 1] >= y0) & (corners[:, 1] < y1)))


def kitti_object(box: np.ndarray, name: str, rig: CameraRig, visible_fraction: float) -> Optional[KittiObject]:
    """The KITTI label of a LiDAR box, or None when it is not wholly in front of the camera or not in the image."""
    uv, depth = rig.project(box_corners(box))
    if depth.min() <= NEAR:
        return None
    w, h = rig.size
    x1, y1 = uv.min(axis=0)
    x2, y2 = uv.max(axis=0)
    cx1, cx2 = np.clip([x1, x2], 0, w - 1)
    cy1, cy2 = np.clip([y1, y2], 0, h - 1)
    clipped = (cx2 - cx1) * (cy2 - cy1)
    if clipped <= 0:
        return None
    x, y, z, l, wid, hgt, yaw = (float(v) for v in box)
    location = rig.to_camera([x, y, z - hgt / 2])
    rotation_y = camera_rotation_y(rig, yaw)
    alpha = float(wrap_angle(rotation_y - math.atan2(location[0], location[2])))
    return KittiObject(type=name, truncated=float(1 - clipped / ((x2 - x1) * (y2 - y1))),
                       occluded=occlusion_level(visible_fraction), alpha=alpha,
                       bbox=(float(cx1), float(cy1), float(cx2), float(cy2)), dimensions=(hgt, wid, l),
                       location=tuple(float(v) for v in location), rotation_y=rotation_y)


def kitti_objects(boxes: np.ndarray, names: Sequence[str], rig: CameraRig, visible_fraction: np.ndarray,
                  params: SceneParams) -> Tuple[List[KittiObject], List[int]]:
    objects, labelled = [], []
    for k, box in enumerate(boxes):
        obj = kitti_object(box, names[k], rig, visible_fraction[k]) if in_bev_range(box, params.bev_range) else None
        if obj is not None:
            objects.append(obj)
            labelled.append(k)
    return objects, labelled


# ---------------------------------------------------------------------------------------------------------- scene

@dataclass
class Scene:
    """One synthetic frame. `boxes` [M,7] are LiDAR-frame (x, y, z_center, l, w, h, yaw), yaw from +x toward +y;
    `objects[i]` is the KITTI label of `boxes[labelled[i]]` (boxes outside the BEV grid or the image get none)."""

    index: int
    image: Image.Image
    points: np.ndarray                       # [N,4] float32 x, y, z, raw intensity 0..255, in scan order
    calib: Calibration
    boxes: np.ndarray
    names: List[str]
    objects: List[KittiObject]
    labelled: List[int]
    rig: CameraRig
    visible_fraction: np.ndarray             # per box: LiDAR rays that reach it / rays that would if it were alone
    instance_map: np.ndarray                 # [H,W] uint8: k+1 where boxes[k] is the front-most drawn box, else 0
    face_colors: List[List[Color]]           # per box: every colour drawn for it (shaded faces and details)


def _params(params: Optional[SceneParams], overrides: Dict[str, object]) -> SceneParams:
    params = params or SceneParams()
    try:
        params = dataclasses.replace(params, **overrides)
    except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(SceneParams))
        raise DatasetError(f"unknown scene parameter(s): {', '.join(sorted(overrides))}", f"known: {known}") from None
    if not 0 < params.density <= 20:
        raise DatasetError(f"scene density {params.density} is out of range", "use a value in (0, 20]; 1 is DAIR-like")
    if not 0 <= params.min_objects <= params.max_objects:
        raise DatasetError(f"min_objects {params.min_objects} / max_objects {params.max_objects} are inconsistent",
                           "use 0 <= min_objects <= max_objects")
    return params


def _check_seed(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DatasetError(f"{what} must be a non-negative integer, got {value!r}", f"pass e.g. {what}=0")
    return int(value)


def _generators(seed: Union[int, np.random.Generator], index: int):
    """(rig generator, frame generator): the rig depends on the seed only, the frame on (seed, index)."""
    if isinstance(seed, np.random.Generator):
        return seed, seed
    seed, index = _check_seed(seed, "seed"), _check_seed(index, "index")
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1, index])


def make_scene(seed: Union[int, np.random.Generator], index: int = 0, params: Optional[SceneParams] = None,
               **overrides) -> Scene:
    """Frame `index` of the synthetic dataset `seed`, in memory. Keyword overrides replace SceneParams fields.
    Given a Generator instead of a seed, the rig and the frame are both drawn from it."""
    params = _params(params, overrides)
    rig_rng, rng = _generators(seed, index)
    rig = make_rig(rig_rng, params)
    crosswalk_x = float(rng.uniform(25.0, 70.0)) if rng.random() < 0.5 else None
    boxes, names = sample_objects(rng, params, crosswalk_x)
    colors = object_colors(rng, names)
    scan = scan_lidar(rng, boxes, names, params, crosswalk_x)
    visible = scan.visible_rays / np.maximum(scan.unoccluded_rays, 1)
    image, instance_map, face_colors = render_image(rng, rig, boxes, names, colors, params, crosswalk_x)
    objects, labelled = kitti_objects(boxes, names, rig, visible, params)
    return Scene(int(index), image, scan.points, rig.calibration(), boxes, names, objects, labelled, rig,
                 visible, instance_map, face_colors)


# ---------------------------------------------------------------------------------------------------------- disk

def frame_id(index: int) -> str:
    return f"{index:06d}"


def _metadata(seed: int, frames: int, start_id: int, params: SceneParams) -> bytes:
    meta = {"generator": "bevport.data.scenes", "version": GENERATOR_VERSION, "seed": seed, "frames": frames,
            "start_id": start_id, "layout": "kitti", "image_format": "jpg", "point_format": "bin",
            "intensity": "raw 0..255", "params": dataclasses.asdict(params)}
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_synthetic_dataset(out: Union[str, Path], frames: int, seed: int, *, start_id: int = 0,
                            overwrite: bool = False, params: Optional[SceneParams] = None,
                            progress: Optional[Callable[[int, int], None]] = None, **overrides) -> Path:
    """Write frames start_id .. start_id+frames-1 of dataset `seed` as a KITTI-layout folder (image_2, velodyne,
    calib, label_2, ImageSets/val.txt, bevport_synthetic.json). Built beside `out` and moved into place when
    complete; an existing non-empty `out` is replaced only with overwrite=True. `progress(done, total)` is called
    after each frame."""
    out = Path(out)
    params = _params(params, overrides)
    seed, start_id = _check_seed(seed, "seed"), _check_seed(start_id, "start_id")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise DatasetError(f"frames must be a positive integer, got {frames!r}", "pass e.g. frames=8")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty",
                           "choose another folder, delete it, or pass overwrite=True (--overwrite)")
    ids = [frame_id(i) for i in range(start_id, start_id + frames)]
    with atomic_output_dir(out) as tmp:
        for done, index in enumerate(range(start_id, start_id + frames), 1):
            scene = make_scene(seed, index, params)
            write_frame(tmp, frame_id(index), scene.image, scene.points, scene.calib, scene.objects,
                        image_format="jpg", point_format="bin")
            if progress is not None:
                progress(done, frames)
        atomic_write_bytes(tmp / "ImageSets" / "val.txt", "".join(i + "\n" for i in ids).encode("ascii"))
        atomic_write_bytes(tmp / METADATA_FILE, _metadata(seed, frames, start_id, params))
    return out
