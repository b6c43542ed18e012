"""nuScenes as the camera-only BEVFusion recipe reads it: an info `.pkl` (mmdet3d's or MIT BEVFusion's converter)
under the dataset root, six camera images per sample. Synthetic surround-view scenes are written in the same layout.
Everything here is torch-free.

Labels follow the upstream dataset at the pinned commit: at validation, objects count when `num_lidar_pts > 0`, and
`gt_boxes` keep the converter's geometric-centre z (MIT's dataset builds its boxes with origin (0.5, 0.5, 0), so
that z is read as the bottom in training and decoding moves it back: predictions and labels meet at the centre).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from bevport.data.dataset import CameraView, Frame
from bevport.data.infos import Sample, read_infos
from bevport.errors import DatasetError

RESULTS_FILE = "results_nusc.json"
# The six pictures as nuScenes shows a sample: the front three above, the rear three below.
PICTURE_LAYOUT = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
INFO_NAMES = ("nuscenes_infos_{split}.pkl", "nuscenes_infos_{split}_radar.pkl")   # mmdet3d's; MIT's at 326653d


class NuScenesDataset:
    """The samples of an info file or of a tables version folder (`info_path`): `ids` (sample tokens) in timestamp
    order, `frame(i_or_token)` to read one."""

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


def info_file(root: Path, split: Optional[str]) -> Optional[Path]:
    """The info file of `split` (default val) under `root`, or `split` itself when it names a .pkl file; None if
    there is none."""
    if split is not None and split.endswith(".pkl"):
        candidates = [Path(split), root / split]
    else:
        candidates = [root / name.format(split=split or "val") for name in INFO_NAMES]
    return next((p for p in candidates if p.is_file()), None)


def tables_source(root: Path, split: Optional[str]) -> Optional[Path]:
    """The official tables' version folder to read frames from: `split` when it names one (v1.0-mini, ...), else the
    only one under `root`; None when the root has none."""
    from bevport.data.nuscenes_tables import table_versions

    versions = table_versions(root)
    if split is not None:
        return next((v for v in versions if v.name == split), None)
    if len(versions) > 1:
        raise DatasetError(f"{root}: several nuScenes versions ({', '.join(v.name for v in versions)}) and no info file",
                           "pick one with --split (e.g. --split v1.0-mini)")
    return versions[0] if versions else None


def open_dataset(recipe, root: os.PathLike, split: Optional[str] = None) -> NuScenesDataset:
    """The frames of an info file (mmdet3d's converter output: `nuscenes_infos_<split>.pkl`, default val), or, without
    one, of the official tables (`--split v1.0-mini` picks a version), converted as the converter converts them."""
    from bevport.data.infos import parse_sample
    from bevport.data.nuscenes_tables import read_table_infos

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}",
                           "expected a nuScenes root with samples/CAM_*/ and an info file (nuscenes_infos_val.pkl) "
                           "or the tables (v1.0-*/)")
    cameras = list(recipe.input.camera_names)
    path = None if split is not None and split.startswith("v1.0-") else info_file(root, split)
    if path is not None:
        samples = read_infos(path, root, cameras)
    else:
        folder = tables_source(root, split)
        if folder is None:
            raise DatasetError(f"{root}: no info file ({', '.join(n.format(split=split or 'val') for n in INFO_NAMES)}) "
                               f"and no nuScenes tables (v1.0-*/sample.json){f' named {split}' if split else ''}",
                               "point --data at a nuScenes root, or pass an info file's path as --split")
        path = folder
        samples = [parse_sample(info, root, cameras, str(folder), i)
                   for i, info in enumerate(read_table_infos(folder, cameras))]
    if not samples:
        raise DatasetError(f"{path}: no samples")
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


# ------------------------------------------------------------------------------------------------------ predictions

def write_predictions(pred_dir: os.PathLike, frame, detections, recipe) -> None:
    """`<pred_dir>/nuscenes/<sample token>.json`: the sample's entries of the results file, in the global frame
    (`write_results` gathers them into results_nusc.json)."""
    from bevport.fsutil import atomic_write_bytes
    from bevport.runtime.nuscenes import results_entries

    sample = frame.objects
    missing = [key for key in ("lidar2ego", "ego2global") if getattr(sample, key, None) is None]
    if missing:
        raise DatasetError(f"frame {frame.id}: the info file gives no {' / '.join(k + '_rotation' for k in missing)}",
                           "nuScenes results are in the global frame; use an info file made by the nuScenes converter, "
                           "or run without --pred-dir")
    det = detections
    entries = results_entries(sample.token, det.boxes, det.scores, det.labels, recipe.class_names,
                              sample.lidar2ego, sample.ego2global)
    path = Path(pred_dir) / "nuscenes" / f"{sample.token}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(entries).encode())


def write_results(dataset: NuScenesDataset, pred_dir: os.PathLike, ids: Sequence[str], recipe) -> Path:
    """`<pred_dir>/results_nusc.json` of the samples `ids` ({"meta": modality, "results": {token: entries}}), the file
    nuScenes' `DetectionEval` reads and the evaluation server takes."""
    from bevport.fsutil import atomic_write_bytes

    results: Dict[str, List[Dict]] = {}
    for token in ids:
        results[token] = json.loads((Path(pred_dir) / "nuscenes" / f"{token}.json").read_text())
    meta = {"use_camera": recipe.model.get("camera") is not None, "use_lidar": recipe.model.get("lidar") is not None,
            "use_radar": False, "use_map": False, "use_external": False}
    path = Path(pred_dir) / RESULTS_FILE
    atomic_write_bytes(path, (json.dumps({"meta": meta, "results": results}) + "\n").encode())
    return path


def tables_folder(dataset: NuScenesDataset, ids: Sequence[str]) -> Optional[Path]:
    """The official tables' folder under the dataset root (`v1.0-*/` with sample.json) that holds the samples `ids`,
    or None."""
    from bevport.data.nuscenes_tables import table_versions

    for folder in table_versions(dataset.root):
        table = folder / "sample.json"
        try:
            tokens = {record["token"] for record in json.loads(table.read_text())}
        except (OSError, ValueError, KeyError, TypeError):
            raise DatasetError(f"{table}: not a nuScenes sample table") from None
        if set(ids) <= tokens:
            return folder
    return None


def evaluate(dataset: NuScenesDataset, pred_dir: os.PathLike, ids: Sequence[str],
             warn: Callable[[str], None] = lambda m: None) -> Optional[Path]:
    """`<pred_dir>/metrics_summary.json`: nuScenes' mAP, NDS and TP errors of the run's samples, scored by the
    nuScenes devkit against the official tables beside the info file. None (with the reason given to `warn`) when
    the dataset root has no tables holding these samples or the devkit is not installed."""
    folder = tables_folder(dataset, ids)
    if folder is None:
        warn(f"{dataset.root}: no nuScenes tables (v1.0-*/sample.json) holding these samples, so no metrics; the "
             f"predictions are in {Path(pred_dir) / RESULTS_FILE}")
        return None
    try:
        import nuscenes.eval.common.loaders as loaders
    except ImportError:
        warn("no metrics: the nuScenes devkit is not installed (pip install nuscenes-devkit); the predictions are in "
             f"{Path(pred_dir) / RESULTS_FILE}")
        return None
    if not hasattr(loaders, "load_gt_of_sample_tokens"):
        warn("no metrics: scoring a subset of samples needs nuscenes-devkit >= 1.2 (pip install -U nuscenes-devkit)")
        return None
    from bevport.fsutil import atomic_write_bytes
    from bevport.runtime.nuscenes import detection_metrics

    summary = detection_metrics(dataset.root, folder.name, Path(pred_dir) / RESULTS_FILE, ids)
    path = Path(pred_dir) / "metrics_summary.json"
    atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


# --------------------------------------------------------------------------------------------------------- pictures

def physical_boxes(boxes: np.ndarray) -> np.ndarray:
    """Decoded boxes (x, y, z_bottom, w, l, h, yaw, ...) -> the drawing convention (x, y, z_bottom, width, length,
    height, heading): the length lies along the heading -yaw - pi/2, as in the results file."""
    b = np.asarray(boxes, np.float64)
    out = b[:, :7].copy()
    out[:, 6] = -b[:, 6] - math.pi / 2
    return out


def _to_ego_axes(boxes: np.ndarray) -> np.ndarray:
    """Boxes of the LiDAR frame (x right, y forward) turned by +90 degrees about z, so that forward is up and left is
    left on the BEV canvas (nuScenes' LiDAR sits at a -90 degree yaw on the car)."""
    out = np.array(boxes, np.float64).copy()
    out[:, 0], out[:, 1] = boxes[:, 1], -boxes[:, 0]
    out[:, 6] = boxes[:, 6] - math.pi / 2
    return out


def picture(recipe, frame, detections, show_gt: bool = True, latency_ms: Optional[float] = None):
    """The six camera images with the boxes projected into each (front row: front-left, front, front-right; rear
    row: back-left, back, back-right) beside the BEV over the decoding range, forward up, with a HUD."""
    from bevport.runtime import vis

    names, det = recipe.class_names, detections
    threshold = recipe.runtime.vis_score_threshold
    preds = physical_boxes(det.boxes)
    gt_boxes, gt_labels = ground_truth(frame, names) if show_gt else (None, None)
    gts = vis.model_boxes_from_physical(gt_boxes) if gt_boxes is not None else np.zeros((0, 7))
    by_name = {cam.name: cam for cam in frame.cameras}
    order = [n for n in PICTURE_LAYOUT if n in by_name] + [n for n in by_name if n not in PICTURE_LAYOUT]
    tiles = []
    for cam in (by_name[n] for n in order):
        calib = SimpleNamespace(lidar2cam=np.linalg.inv(cam.camera2lidar.astype(np.float64)),
                                intrinsics=cam.intrinsics)
        tiles.append(vis.camera_image(cam.image(), calib, preds, det.labels, det.scores, gts, class_names=names,
                                      score_threshold=threshold))
    grid = vis.image_grid(tiles, [n.replace("CAM_", "").replace("_", " ").lower() for n in order], columns=3)
    pc_range = recipe.model.head.bbox_coder.pc_range
    points = frame.points()[:, :3] if frame.points_path is not None else np.zeros((0, 3))
    points = np.stack([points[:, 1], -points[:, 0], points[:, 2]], axis=1)
    bev = vis.bev_image(points, _to_ego_axes(preds), det.labels, det.scores,
                        _to_ego_axes(gts) if len(gts) else None, gt_labels, class_names=names,
                        score_threshold=threshold, x_range=(pc_range[1], pc_range[4]),
                        y_range=(-pc_range[3], -pc_range[0]), title="bird's-eye view (ego axes)")
    shown = int(np.count_nonzero(det.scores >= threshold))
    return vis.frame_picture(grid, bev, frame_id=frame.id, detections=shown, latency_ms=latency_ms)
