"""nuScenes as the camera-only BEVFusion recipe reads it: an info `.pkl` (mmdet3d's or MIT BEVFusion's converter)
under the dataset root, six camera images per sample. Synthetic surround-view scenes are written in the same layout.
Everything here is torch-free.

Labels follow the upstream dataset at the pinned commit: at validation, objects count when `num_lidar_pts > 0`, and
`gt_boxes` keep the converter's geometric-centre z (MIT's dataset builds its boxes with origin (0.5, 0.5, 0), so
that z is read as the bottom in training and decoding moves it back: predictions and labels meet at the centre).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from bevport.data.dataset import CameraView, Frame
from bevport.data.infos import Sample, read_infos
from bevport.errors import DatasetError

INFO_NAMES = ("nuscenes_infos_{split}.pkl", "nuscenes_infos_{split}_radar.pkl")   # mmdet3d's; MIT's at 326653d


class NuScenesDataset:
    """The samples of one info file: `ids` (sample tokens) in file order, `frame(i_or_token)` to read one."""

    layout = "nuscenes-infos"

    def __init__(self, root: Path, info_path: Path, samples: List[Sample]):
        self.root = root
        self.info_path = info_path
        self.samples = samples
        self.ids = [s.token for s in samples]
        self._index = {token: i for i, token in enumerate(self.ids)}

    @property
    def data_root(self) -> Path:
        return self.root

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"NuScenesDataset({str(self.root)!r}, info={self.info_path.name!r}, frames={len(self)})"

    def frame(self, key: Union[int, str]) -> Frame:
        sample = self.samples[self._position(key)]
        cameras = []
        for cam in sample.cameras:
            if not cam.image.is_file():
                raise DatasetError(f"frame {sample.token}: {cam.name} image not found: {cam.image}",
                                   "skip the frame or restore the file (paths resolve under --data from samples/)")
            cameras.append(CameraView(sample.token, cam.name, cam.image, cam.intrinsics,
                                      np.linalg.inv(cam.camera2lidar.astype(np.float64)), cam.camera2lidar))
        lidar = sample.lidar_path if sample.lidar_path is not None and sample.lidar_path.is_file() else None
        return Frame(sample.token, cameras, lidar, objects=sample, point_dims=5)

    def _position(self, key: Union[int, str]) -> int:
        if isinstance(key, (int, np.integer)):
            if not -len(self.ids) <= key < len(self.ids):
                raise IndexError(f"frame index {key} out of range for {len(self.ids)} frames")
            return int(key)
        if key not in self._index:
            raise DatasetError(f"{self.info_path}: no sample `{key}`", "frame ids are the info file's sample tokens")
        return self._index[key]


def info_file(root: Path, split: Optional[str]) -> Path:
    """The info file of `split` (default val) under `root`, or `split` itself when it names a .pkl file."""
    if split is not None and split.endswith(".pkl"):
        candidates = [Path(split), root / split]
    else:
        candidates = [root / name.format(split=split or "val") for name in INFO_NAMES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DatasetError(f"{root}: no info file ({', '.join(str(p) for p in candidates)})",
                           "make it with the nuScenes converter (tools/create_data.py nuscenes), or pass its path as "
                           "the split")
    return found


def open_dataset(recipe, root: os.PathLike, split: Optional[str] = None) -> NuScenesDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}",
                           "expected a nuScenes root with samples/CAM_*/ and an info file (nuscenes_infos_val.pkl)")
    path = info_file(root, split)
    samples = read_infos(path, root, list(recipe.input.camera_names))
    if not samples:
        raise DatasetError(f"{path}: the info file lists no samples")
    return NuScenesDataset(root, path, samples)


def write_synthetic(out: os.PathLike, frames: int, seed: int, overwrite: bool = False,
                    progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Seeded synthetic surround-view scenes in nuScenes' layout (the recipe's built-in dataset)."""
    from bevport.data.surround import write_synthetic_surround

    return write_synthetic_surround(out, frames=frames, seed=seed, overwrite=overwrite, progress=progress)


def has_labels(dataset: NuScenesDataset) -> bool:
    return any(s.gt_boxes is not None for s in dataset.samples)


def ground_truth(frame, class_names: Sequence[str]):
    """(boxes [N,7] (x, y, z centre, l, w, h, heading) in the LiDAR frame, labels) of the objects the validation
    split counts (`num_lidar_pts > 0`, a class of the recipe), or (None, None)."""
    sample = frame.objects
    if sample is None or sample.gt_boxes is None:
        return None, None
    keep = [i for i, name in enumerate(sample.gt_names)
            if name in class_names and (sample.num_lidar_pts is None or sample.num_lidar_pts[i] > 0)]
    if not keep:
        return None, None
    b = sample.gt_boxes[keep]
    heading = -b[:, 6] - math.pi / 2                       # the converter stores -yaw - pi/2
    boxes = np.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 4], b[:, 3], b[:, 5],
                      np.arctan2(np.sin(heading), np.cos(heading))], axis=1)
    labels = np.array([list(class_names).index(sample.gt_names[i]) for i in keep], np.int64)
    return boxes, labels
