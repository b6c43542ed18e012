"""DAIR-V2X-I as the V2XFusion recipe reads it: KITTI layout (or the original DAIR layout), KITTI prediction files
(plus the deploy binary's own format), and KITTI R40 3D/BEV AP against `label_2/`. Synthetic roadside scenes are
written in the same layout, and frames are drawn (camera view beside the BEV). Everything here is torch-free.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from bevport.data.dataset import Dataset
from bevport.data.dataset import open_dataset as _open_dataset


def open_dataset(recipe, root: os.PathLike, split: Optional[str] = None) -> Dataset:
    return _open_dataset(root, split)


def write_synthetic(out: os.PathLike, frames: int, seed: int, overwrite: bool = False,
                    progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Seeded synthetic roadside scenes in the KITTI layout (the built-in default dataset)."""
    from bevport.data.scenes import write_synthetic_dataset

    return write_synthetic_dataset(out, frames=frames, seed=seed, overwrite=overwrite, progress=progress)


def write_predictions(pred_dir: os.PathLike, frame, detections, recipe) -> None:
    """`<pred_dir>/lidar/<id>.txt` (deploy binary format) and `<pred_dir>/kitti/<id>.txt` (KITTI labels)."""
    from bevport.runtime.kitti import write_predictions as write

    with Image.open(frame.image_path) as header:      # the size only: no second JPEG decode
        size = header.size
    write(pred_dir, frame.id, detections.boxes, detections.scores, detections.labels, recipe.class_names,
          frame.calib, size)


def has_labels(dataset: Dataset) -> bool:
    """Whether `evaluate` can score this dataset: the KITTI layout with label_2/."""
    return dataset.layout == "kitti" and (dataset.data_root / "label_2").is_dir()


def evaluate(dataset: Dataset, pred_dir: os.PathLike, ids: Sequence[str],
             warn: Callable[[str], None] = lambda m: None) -> Optional[Path]:
    """KITTI R40 AP of the predictions of `ids` into `<pred_dir>/ap.json`, when the dataset has KITTI labels."""
    if not has_labels(dataset):
        return None
    labels = dataset.data_root / "label_2"
    from bevport.runtime.evaluate import evaluate as kitti_r40, write_ap_json

    path = Path(pred_dir) / "ap.json"
    write_ap_json(path, kitti_r40(labels, Path(pred_dir) / "kitti", ids))
    return path


def picture(recipe, frame, detections, show_gt: bool = True, latency_ms: Optional[float] = None):
    """The camera image with projected boxes beside the BEV canvas over the recipe's decoding range, with a HUD."""
    from bevport.runtime import vis

    names, det = recipe.class_names, detections
    gt_boxes, gt_labels = ground_truth(frame, names) if show_gt else (None, None)
    threshold = recipe.runtime.vis_score_threshold
    pc_range = recipe.model.head.bbox_coder.pc_range
    bev = vis.bev_image(frame.points(), det.boxes, det.labels, det.scores, gt_boxes, gt_labels, class_names=names,
                        score_threshold=threshold, x_range=(pc_range[0], pc_range[3]),
                        y_range=(pc_range[1], pc_range[4]))
    camera = vis.camera_image(frame.image(), frame.calib, det.boxes, det.labels, det.scores, gt_boxes,
                              class_names=names, score_threshold=threshold)
    shown = int(np.count_nonzero(det.scores >= threshold))
    return vis.frame_picture(camera, bev, frame_id=frame.id, detections=shown, latency_ms=latency_ms)


def ground_truth(frame, class_names: Sequence[str]):
    """(boxes [N,7+] in the LiDAR frame, labels) of the frame's labelled objects, or (None, None)."""
    from bevport.runtime.kitti import kitti_class_labels, kitti_to_lidar_boxes

    objects = [o for o in (frame.objects or []) if hasattr(o, "location") and o.type != "DontCare"]
    if not objects:
        return None, None
    # Labels carry their own (dair2kitti) rotation convention; result2kitti's is for writing predictions.
    boxes = kitti_to_lidar_boxes(objects, frame.calib, heading="dair2kitti")
    return boxes, kitti_class_labels(objects, class_names)
