"""nuScenes info `.pkl` files as mmdet3d's and MIT BEVFusion's converters write them, read without running code.

An info file is a pickle of plain data: {"infos": [sample, ...], "metadata": {...}}, each sample a dict with `token`,
`lidar_path`, `cams` (per camera: `data_path`, `cam_intrinsic` or `camera_intrinsics`, `sensor2lidar_rotation`,
`sensor2lidar_translation`, ...) and, in train/val files, `gt_boxes`, `gt_names`, `gt_velocity`, `valid_flag`.
Unpickling runs whatever callables the file names, so these files are read with an unpickler that resolves exactly
what plain data needs (NumPy arrays, dtypes and scalars, OrderedDict, protocol-2 bytes) and refuses anything else
with the file and the name it refused. Every sample is then checked where it enters: the matrices' shapes and
finiteness, and class names against nuScenes' own.

`data_path` is resolved against the user's dataset root: converters store `./data/nuscenes/samples/CAM_FRONT/x.jpg`
(or an absolute path of the machine that made the file), so the part from `samples/` or `sweeps/` on is kept.
"""
from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from bevport.errors import DatasetError

# The ten detection classes (MIT BEVFusion's object_classes) and the raw categories mmdet3d's converter leaves
# unmapped; anything else in `gt_names` is not a nuScenes file.
DETECTION_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                     "pedestrian", "traffic_cone")
RAW_CATEGORIES = ("animal", "human.pedestrian.personal_mobility", "human.pedestrian.stroller",
                  "human.pedestrian.wheelchair", "movable_object.debris", "movable_object.pushable_pullable",
                  "static_object.bicycle_rack", "vehicle.emergency.ambulance", "vehicle.emergency.police",
                  "ignore")


def _numpy_attr(*paths: str):
    """The first of `module:name` that the installed NumPy has (numpy.core became numpy._core in NumPy 2)."""
    import importlib

    for path in paths:
        module, name = path.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"NumPy has none of {paths}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); only that use is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed() -> Dict[tuple, Any]:
    reconstruct = _numpy_attr("numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct")
    scalar = _numpy_attr("numpy._core.multiarray:scalar", "numpy.core.multiarray:scalar")
    frombuffer = _numpy_attr("numpy._core.numeric:_frombuffer", "numpy.core.numeric:_frombuffer")
    import collections

    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise DatasetError(f"{self.source}: the info file names `{module}.{name}`, which bevport does not load",
                               "info files hold dicts, lists, numbers, strings and NumPy arrays; regenerate it with "
                               "the nuScenes converter (nothing in it was run)")
        return found


def load_plain_pickle(path: Path) -> Any:
    """The object in a pickle of plain data; DatasetError for anything else or a damaged file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the info file ({exc.strerror})") from None
    try:
        return _PlainDataUnpickler(io.BytesIO(data), str(path)).load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a readable info file ({type(exc).__name__}: {exc})",
                           "the file is truncated or not a pickle; regenerate it with the nuScenes converter") from None


@dataclass
class Pose:
    """A rigid transform as nuScenes stores it: a unit quaternion [w, x, y, z] and a translation."""
    rotation: np.ndarray        # [4]
    translation: np.ndarray     # [3]

    @property
    def rotation_matrix(self) -> np.ndarray:
        return quaternion_matrix(self.rotation)


@dataclass
class CameraInfo:
    name: str
    image: Path                  # resolved against the dataset root
    intrinsics: np.ndarray       # [3,3] as stored
    camera2lidar: np.ndarray     # [4,4] float32, built as MIT BEVFusion's dataset builds it


@dataclass
class Sample:
    token: str
    cameras: List[CameraInfo]
    lidar_path: Optional[Path]
    gt_boxes: Optional[np.ndarray] = None      # [N,7] x, y, z (bottom centre), dx, dy, dz, yaw in the LiDAR frame
    gt_names: Optional[List[str]] = None
    gt_velocity: Optional[np.ndarray] = None   # [N,2]
    valid: Optional[np.ndarray] = None         # [N] bool
    num_lidar_pts: Optional[np.ndarray] = None  # [N] int: upstream's validation counts objects with > 0
    lidar2ego: Optional["Pose"] = None         # lidar2ego_rotation / _translation
    ego2global: Optional["Pose"] = None        # the ego pose at the LiDAR key frame


def resolve(stored: str, root: Path) -> Path:
    """A converter's path under the user's dataset root: from the `samples/` or `sweeps/` part on, or as given
    relative to the root."""
    parts = PurePosixPath(str(stored).replace("\\", "/")).parts
    for anchor in ("samples", "sweeps"):
        if anchor in parts:
            return root.joinpath(*parts[parts.index(anchor):])
    return root.joinpath(*[p for p in parts if p not in ("/", ".")])


def _matrix(value: Any, shape: Sequence[int], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where} is not numeric") from None
    if array.shape != tuple(shape) or not np.isfinite(array).all():
        raise DatasetError(f"{where} must be a finite {'x'.join(map(str, shape))} array, got shape {array.shape}")
    return array


def _camera(name: str, info: Any, root: Path, where: str) -> CameraInfo:
    if not isinstance(info, dict) or not isinstance(info.get("data_path"), str):
        raise DatasetError(f"{where}: camera {name} has no data_path")
    key = "cam_intrinsic" if "cam_intrinsic" in info else "camera_intrinsics"
    intrinsics = _matrix(info.get(key), (3, 3), f"{where}: {name}.{key}")
    if abs(np.linalg.det(intrinsics)) < 1e-9:
        raise DatasetError(f"{where}: {name}.{key} is singular")
    rotation = _matrix(info.get("sensor2lidar_rotation"), (3, 3), f"{where}: {name}.sensor2lidar_rotation")
    translation = _matrix(info.get("sensor2lidar_translation"), (3,), f"{where}: {name}.sensor2lidar_translation")
    camera2lidar = np.eye(4).astype(np.float32)          # as the upstream dataset assembles it
    camera2lidar[:3, :3] = rotation
    camera2lidar[:3, 3] = translation
    return CameraInfo(name, resolve(info["data_path"], root), intrinsics, camera2lidar)


def quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """The 3x3 rotation of a unit quaternion [w, x, y, z] (nuScenes' order; normalised as pyquaternion does)."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of quaternions [w, x, y, z] (a applied after b)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def _pose(info: dict, prefix: str, where: str) -> Optional[Pose]:
    """The transform of `<prefix>_rotation` (quaternion wxyz) and `<prefix>_translation`, or None if absent."""
    if f"{prefix}_rotation" not in info and f"{prefix}_translation" not in info:
        return None
    rotation = _matrix(info.get(f"{prefix}_rotation"), (4,), f"{where}: {prefix}_rotation")
    if not 0.5 < np.linalg.norm(rotation) < 2.0:
        raise DatasetError(f"{where}: {prefix}_rotation {rotation.tolist()} is not a unit quaternion [w, x, y, z]")
    return Pose(rotation / np.linalg.norm(rotation),
                _matrix(info.get(f"{prefix}_translation"), (3,), f"{where}: {prefix}_translation"))


def parse_sample(info: Any, root: Path, camera_names: Sequence[str], source: str, index: int) -> Sample:
    """One sample of an info file, checked: the recipe's cameras with finite, well-shaped matrices; labels of
    nuScenes classes."""
    if not isinstance(info, dict):
        raise DatasetError(f"{source}: sample {index} is a {type(info).__name__}, not a mapping")
    token = str(info.get("token", index))
    where = f"{source}: sample {token}"
    cams = info.get("cams")
    if not isinstance(cams, dict):
        raise DatasetError(f"{where} has no `cams` mapping")
    missing = [n for n in camera_names if n not in cams]
    if missing:
        raise DatasetError(f"{where} lacks camera(s) {', '.join(missing)}",
                           f"the recipe reads {', '.join(camera_names)}")
    cameras = [_camera(n, cams[n], root, where) for n in camera_names]
    lidar = info.get("lidar_path")
    sample = Sample(token, cameras, resolve(lidar, root) if isinstance(lidar, str) and lidar else None,
                    lidar2ego=_pose(info, "lidar2ego", where), ego2global=_pose(info, "ego2global", where))
    if "gt_boxes" in info:
        try:
            boxes = np.asarray(info["gt_boxes"], dtype=np.float64)
            names = [str(n) for n in np.asarray(info.get("gt_names", []), dtype=object).reshape(-1)]
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: gt_boxes or gt_names is not an array") from None
        boxes = boxes.reshape(0, 7) if boxes.size == 0 else boxes
        if boxes.ndim != 2 or boxes.shape[1] < 7 or len(names) != len(boxes) or not np.isfinite(boxes).all():
            raise DatasetError(f"{where}: gt_boxes {boxes.shape} and gt_names ({len(names)}) do not pair up as "
                               "finite [N,7] boxes with one name each")
        unknown = sorted(set(names) - set(DETECTION_CLASSES) - set(RAW_CATEGORIES))
        if unknown:
            raise DatasetError(f"{where}: unknown class name(s) {', '.join(unknown)}",
                               f"nuScenes detection classes are {', '.join(DETECTION_CLASSES)}")
        sample.gt_boxes, sample.gt_names = boxes[:, :7], names
        velocity = info.get("gt_velocity")
        sample.gt_velocity = None if velocity is None else np.asarray(velocity, np.float64).reshape(-1, 2)
        valid, points = info.get("valid_flag"), info.get("num_lidar_pts")
        sample.valid = None if valid is None else np.asarray(valid, bool).reshape(-1)
        sample.num_lidar_pts = None if points is None else np.asarray(points, np.int64).reshape(-1)
        for key, value in (("gt_velocity", sample.gt_velocity), ("valid_flag", sample.valid),
                           ("num_lidar_pts", sample.num_lidar_pts)):
            if value is not None and len(value) != len(names):
                raise DatasetError(f"{where}: {key} has {len(value)} entries for {len(names)} boxes")
    return sample


def read_infos(path: Path, root: Path, camera_names: Sequence[str]) -> List[Sample]:
    """Every sample of an info file, in timestamp order as upstream's NuScenesDataset orders them."""
    data = load_plain_pickle(path)
    infos = data.get("infos") if isinstance(data, dict) else data
    if not isinstance(infos, list):
        raise DatasetError(f"{path}: expected {{'infos': [...]}} or a list of samples, got {type(data).__name__}",
                           "pass the info file the nuScenes converter wrote (e.g. nuscenes_infos_val.pkl)")
    if all(isinstance(info, dict) and "timestamp" in info for info in infos):
        infos = sorted(infos, key=lambda info: info["timestamp"])     # upstream's dataset sorts them so (stable)
    return [parse_sample(info, Path(root), camera_names, str(path), i) for i, info in enumerate(infos)]
