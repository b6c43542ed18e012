"""`open_dataset`: a DAIR-V2X-I dataset in the KITTI layout (or `<root>/training/`) or in its original layout.

Opening lists the image folder only; a frame's calibration (and labels) are read when the frame is asked for, its
image and points when `Frame.image()` / `Frame.points()` are called. Every missing or unreadable file raises a
DatasetError naming it, so a caller can skip the frame or stop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image

from bevport.data.calib import Calibration
from bevport.data.dair import DairLayout
from bevport.data.kitti import KittiLayout, list_images
from bevport.data.pcd import read_bin, read_pcd
from bevport.errors import DatasetError

EXPECTED_LAYOUTS = ("KITTI: <root>/image_2, velodyne, calib (or <root>/training/...); "
                    "DAIR-V2X-I: <root>/image, velodyne, calib/camera_intrinsic, calib/virtuallidar_to_camera")


@dataclass
class CameraView:
    """One camera of a frame: its image file, intrinsics and pose against the LiDAR. A dataset that stores the
    camera -> LiDAR transform itself (nuScenes infos) passes it as `stored_camera2lidar`, and that very matrix is
    what the geometry reads (an inverse of an inverse would move points across cell borders)."""
    frame_id: str
    name: str
    image_path: Path
    intrinsics: np.ndarray       # [3,3]
    lidar2camera: np.ndarray     # [4,4]
    stored_camera2lidar: Optional[np.ndarray] = None

    @property
    def camera2lidar(self) -> np.ndarray:
        if self.stored_camera2lidar is not None:
            return self.stored_camera2lidar
        # A general inverse: R0_rect and rounded DAIR rotations are not exactly orthonormal.
        return np.linalg.inv(self.lidar2camera)

    def image(self) -> Image.Image:
        """The image as RGB (grey, palette and RGBA images are converted)."""
        try:
            img = Image.open(self.image_path)
            img.load()      # reads the whole file and closes it (single-frame formats)
            # convert() copies even an RGB image: 6 MB and milliseconds per frame at 1920x1080
            return img if img.mode == "RGB" else img.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"frame {self.frame_id}: image not found: {self.image_path}",
                               "skip the frame or restore the file") from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise all three for corrupt files
            raise DatasetError(f"frame {self.frame_id}: cannot decode image {self.image_path}: {e}",
                               "the file is truncated or not an image; skip the frame or restore it") from None

    @classmethod
    def from_kitti(cls, frame_id: str, name: str, image_path: Path, calib: Calibration) -> "CameraView":
        return cls(frame_id, name, image_path, calib.intrinsics, calib.lidar2cam)


@dataclass
class Frame:
    """One sample: N cameras, an optional point cloud, and what the dataset format keeps beside them (its own
    calibration record and labels, for its writers and evaluator)."""
    id: str
    cameras: List[CameraView]
    points_path: Optional[Path]
    calib: Optional[Calibration] = None
    objects: Optional[list] = None
    point_dims: int = 4      # floats per point of a .bin file (a .pcd names its own fields)

    @property
    def image_path(self) -> Path:
        """The first camera's image file."""
        return self.cameras[0].image_path

    def image(self) -> Image.Image:
        """The first camera's image as RGB."""
        return self.cameras[0].image()

    def points(self) -> np.ndarray:
        """The point cloud, float32 [N, F] (F = point_dims for .bin, the PCD's fields otherwise)."""
        if self.points_path is None:
            raise DatasetError(f"frame {self.id}: no point cloud", "this dataset has no LiDAR for the frame")
        if self.points_path.suffix.lower() == ".bin":
            points = read_bin(self.points_path, self.point_dims)
        else:
            points = read_pcd(self.points_path)
        if len(points) == 0:
            raise DatasetError(f"frame {self.id}: point cloud {self.points_path} has no points",
                               "skip the frame or restore the file")
        return points


class Dataset:
    """The frames of one dataset folder: `ids` in order, `frame(i_or_id)` to read one."""

    def __init__(self, root: Path, layout: Union[KittiLayout, DairLayout], ids: List[str], images: dict,
                 point_dims: int = 4):
        self.root = root
        self._layout = layout
        self.ids = ids
        self._images = images
        self.point_dims = point_dims

    @property
    def layout(self) -> str:
        return self._layout.name

    @property
    def data_root(self) -> Path:
        """The folder holding the frame sub-folders (root, or root/training)."""
        return self._layout.root

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, layout={self.layout!r}, frames={len(self)})"

    def frame(self, key: Union[int, str]) -> Frame:
        frame_id = self._frame_id(key)
        image = self._images[frame_id]
        if not image.is_file():
            raise DatasetError(f"frame {frame_id}: image not found: {image}", "skip the frame or restore the file")
        points = self._layout.points_path(frame_id)
        calib = self._layout.calib(frame_id)
        camera = CameraView.from_kitti(frame_id, self._layout.image_folder, image, calib)
        return Frame(frame_id, [camera], points, calib, self._layout.objects(frame_id), self.point_dims)

    def _frame_id(self, key: Union[int, str]) -> str:
        if isinstance(key, (int, np.integer)):
            if not -len(self.ids) <= key < len(self.ids):
                raise IndexError(f"frame index {key} out of range for {len(self.ids)} frames")
            return self.ids[key]
        if key not in self._images:
            raise DatasetError(f"{self.data_root}: no frame `{key}` in {self._layout.image_folder}/",
                               f"frame ids are image file stems, e.g. {self.ids[0]!r}")
        return str(key)


def _detect_layout(root: Path) -> Union[KittiLayout, DairLayout]:
    if (root / "image_2").is_dir():
        return KittiLayout(root)
    if (root / "training" / "image_2").is_dir():
        return KittiLayout(root / "training")
    if (root / "image").is_dir():
        return DairLayout(root)
    raise DatasetError(f"{root}: no image folder (image_2/, training/image_2/ or image/)",
                       f"point --data at a dataset folder; expected {EXPECTED_LAYOUTS}")


def _split_ids(root: Path, data_root: Path, split: str) -> List[str]:
    """Ids of a split: `split` is a file, or the name of ImageSets/<split>.txt under the root or the data root."""
    candidates = [Path(split)] if split.endswith(".txt") else []
    candidates += [r / "ImageSets" / f"{split}.txt" for r in dict.fromkeys([root, data_root, data_root.parent])]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetError(f"split `{split}` not found: looked for {', '.join(str(p) for p in candidates)}",
                           "pass the name of an ImageSets/<split>.txt file (one frame id per line), or no split")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read split file {path}: {e}", "it must be text, one frame id per line") from None


def open_dataset(root: Union[str, os.PathLike], split: Optional[str] = None, point_dims: int = 4) -> Dataset:
    """Detect the layout under `root` and list its frames (optionally those of ImageSets/<split>.txt)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}", f"expected {EXPECTED_LAYOUTS}")
    layout = _detect_layout(root)
    image_dir = layout.root / layout.image_folder
    images = list_images(image_dir)
    if not images:
        raise DatasetError(f"{image_dir}: no images (.jpg, .jpeg or .png)", f"expected {EXPECTED_LAYOUTS}")
    if split is None:
        return Dataset(root, layout, sorted(images), images, point_dims)
    ids = _split_ids(root, layout.root, split)
    missing = [i for i in ids if i not in images]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"split `{split}` names {len(missing)} frame(s) with no image in {image_dir}: {shown}",
                           "regenerate the split file for this dataset, or pass no split")
    if not ids:
        raise DatasetError(f"split `{split}` lists no frames", "the split file must hold one frame id per line")
    return Dataset(root, layout, ids, images, point_dims)
