"""The KITTI layout DAIR-V2X-I is converted to (Intel's converter, BEVHeight's dair2kitti): text calibration and
label files, and `write_frame`, which writes one frame of that layout.

    <root>/image_2/<id>.{jpg,jpeg,png}  velodyne/<id>.{bin,pcd}  calib/<id>.txt  [label_2/<id>.txt]
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from bevport.data.calib import Calibration
from bevport.data.pcd import pcd_bytes
from bevport.errors import DatasetError
from bevport.fsutil import atomic_write_bytes

CALIB_COUNTS = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "R0_rect": 9, "Tr_velo_to_cam": 12, "Tr_imu_to_velo": 12}
REQUIRED_CALIB = ("P2", "R0_rect", "Tr_velo_to_cam")


@dataclass
class KittiObject:
    """One line of a KITTI label file. `location` is the bottom centre in the camera frame for KITTI proper
    (Intel's DAIR converter writes the LiDAR-frame centre here instead; the reader does not reinterpret it)."""

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: Tuple[float, float, float, float]
    dimensions: Tuple[float, float, float]
    location: Tuple[float, float, float]
    rotation_y: float
    score: Optional[float] = None


def _number(value: float) -> str:
    # repr is the shortest text that parses back to the same float, so write -> read -> write is byte-identical.
    return repr(float(value))


# ---------------------------------------------------------------------------------------------------- calibration

def _parse_calib_lines(path: Path, text: str) -> Dict[str, np.ndarray]:
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise DatasetError(f"{path}: line {number} is not `KEY: values` ({line.strip()[:40]!r})",
                               "KITTI calib lines look like `P2: 1.0 0.0 ...`")
        key = key.strip()
        try:
            numbers = np.array([float(v) for v in rest.split()], np.float64)
        except ValueError:
            raise DatasetError(f"{path}: `{key}` holds a value that is not a number",
                               "every calib value must be a decimal number") from None
        expected = CALIB_COUNTS.get(key)
        if expected is not None and numbers.size != expected:
            raise DatasetError(f"{path}: `{key}` has {numbers.size} values, expected {expected}",
                               "rewrite the calibration file with the KITTI layout (P*: 3x4, R0_rect: 3x3, Tr_*: 3x4)")
        values[key] = numbers
    return values


def read_calib_file(path: os.PathLike) -> Calibration:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"calibration file not found: {path}",
                           "every image needs a calib/<id>.txt beside it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read calibration file {path}: {e}", "check the file is a KITTI calib text file") from None
    values = _parse_calib_lines(path, text)
    missing = [k for k in REQUIRED_CALIB if k not in values]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)}",
                           "a KITTI calib file needs P2, R0_rect and Tr_velo_to_cam")
    return Calibration(values["P2"], values["R0_rect"], values["Tr_velo_to_cam"]).checked(str(path))


def calib_text(calib: Calibration) -> str:
    """P0..P3 = [K|0] except P2 (the calibration's own), R0_rect, Tr_velo_to_cam, Tr_imu_to_velo = identity."""
    k0 = np.concatenate([calib.intrinsics, np.zeros((3, 1))], axis=1)
    rows = [("P0", k0), ("P1", k0), ("P2", calib.P2), ("P3", k0), ("R0_rect", calib.R0_rect),
            ("Tr_velo_to_cam", calib.Tr_velo_to_cam), ("Tr_imu_to_velo", np.eye(3, 4))]
    # %.16e holds 17 significant digits: every float64 reads back exactly.
    return "".join(f"{key}: {' '.join('%.16e' % v for v in np.ravel(m))}\n" for key, m in rows)


# --------------------------------------------------------------------------------------------------------- labels

def _parse_label_line(path: Path, number: int, line: str) -> KittiObject:
    parts = line.split()
    if len(parts) not in (15, 16):
        raise DatasetError(f"{path}: line {number} has {len(parts)} columns, expected 15 (or 16 with a score)",
                           "KITTI labels are `type trunc occ alpha x1 y1 x2 y2 h w l x y z ry [score]`")
    try:
        v = [float(p) for p in parts[1:]]
    except ValueError:
        raise DatasetError(f"{path}: line {number} holds a value that is not a number",
                           "columns 2-16 of a KITTI label line are numbers") from None
    return KittiObject(parts[0], v[0], int(v[1]), v[2], tuple(v[3:7]), tuple(v[7:10]), tuple(v[10:13]), v[13],
                       v[14] if len(v) == 15 else None)


def read_label_file(path: os.PathLike) -> List[KittiObject]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"label file not found: {path}", "labels are optional; remove the file reference") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read label file {path}: {e}", "check the file is a KITTI label text file") from None
    return [_parse_label_line(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def label_line(obj: KittiObject) -> str:
    numbers = [obj.truncated] + [None] + [obj.alpha] + list(obj.bbox) + list(obj.dimensions) + list(obj.location)
    numbers += [obj.rotation_y] + ([] if obj.score is None else [obj.score])
    fields = [obj.type] + [str(int(obj.occluded)) if n is None else _number(n) for n in numbers]
    return " ".join(fields)


def label_text(objects: List[KittiObject]) -> str:
    return "".join(label_line(o) + "\n" for o in objects)


def write_label_file(path: os.PathLike, objects: List[KittiObject]) -> None:
    atomic_write_bytes(path, label_text(objects).encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------- frame

def _image_bytes(image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    rgb = image.convert("RGB")
    if image_format in ("jpg", "jpeg"):
        rgb.save(buffer, format="JPEG", quality=95, subsampling=0, optimize=False)
    elif image_format == "png":
        rgb.save(buffer, format="PNG", optimize=False)
    else:
        raise DatasetError(f"unknown image format `{image_format}`", "use jpg, jpeg or png")
    return buffer.getvalue()


def _points_bytes(points: np.ndarray, point_format: str) -> bytes:
    points = np.ascontiguousarray(points, np.float32)
    if points.ndim != 2 or points.shape[1] != 4:
        raise DatasetError(f"points have shape {points.shape}, expected [N, 4] (x, y, z, intensity)",
                           "pass one row per point: x, y, z, intensity")
    if point_format == "bin":
        return points.tobytes()
    if point_format == "pcd":
        return pcd_bytes(points, ("x", "y", "z", "intensity"))
    raise DatasetError(f"unknown point format `{point_format}`", "use bin or pcd")


def write_frame(root: os.PathLike, frame_id: str, image, points: np.ndarray, calib: Calibration,
                objects: Optional[List[KittiObject]] = None, image_format: str = "jpg",
                point_format: str = "bin") -> None:
    """Write one frame of the KITTI layout under `root` (folders are created; each file is written atomically)."""
    root = Path(root)
    files = {  # everything is encoded before anything is written, so a bad input leaves no partial frame
        root / "image_2" / f"{frame_id}.{image_format}": _image_bytes(image, image_format),
        root / "velodyne" / f"{frame_id}.{point_format}": _points_bytes(points, point_format),
        root / "calib" / f"{frame_id}.txt": calib_text(calib).encode("ascii"),
    }
    if objects is not None:
        files[root / "label_2" / f"{frame_id}.txt"] = label_text(objects).encode("utf-8")
    for path, data in files.items():
        atomic_write_bytes(path, data)


# -------------------------------------------------------------------------------------------------------- layout

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_images(folder: Path) -> Dict[str, Path]:
    """Frame id (file stem) -> image path; for a stem present with several suffixes the first of IMAGE_SUFFIXES wins."""
    found = {}  # type: Dict[str, Path]
    for path in folder.iterdir():
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES and path.is_file():
            best = found.get(path.stem)
            if best is None or IMAGE_SUFFIXES.index(suffix) < IMAGE_SUFFIXES.index(best.suffix.lower()):
                found[path.stem] = path
    return found


class KittiLayout:
    """Where a frame's files live in the KITTI layout (`root` is the folder holding image_2/)."""

    name = "kitti"
    image_folder = "image_2"

    def __init__(self, root: Path):
        self.root = root

    def points_path(self, frame_id: str) -> Path:
        # Intel's loader prefers .bin and falls back to .pcd; so does this.
        candidates = [self.root / "velodyne" / f"{frame_id}{s}" for s in (".bin", ".pcd")]
        for path in candidates:
            if path.is_file():
                return path
        raise DatasetError(f"frame {frame_id}: point cloud not found: {candidates[0]} (or {candidates[1].name})",
                           "every image_2/<id> needs a velodyne/<id>.bin or .pcd; skip the frame or restore the file")

    def calib(self, frame_id: str) -> Calibration:
        return read_calib_file(self.root / "calib" / f"{frame_id}.txt")

    def objects(self, frame_id: str) -> Optional[List[KittiObject]]:
        path = self.root / "label_2" / f"{frame_id}.txt"
        return read_label_file(path) if path.is_file() else None
