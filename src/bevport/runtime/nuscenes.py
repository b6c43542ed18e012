"""nuScenes detection results as MIT BEVFusion's `NuScenesDataset._format_bbox` writes them (the JSON the nuScenes
devkit's `DetectionEval` reads), from decoded camera-only detections. NumPy only.

Per box (upstream `output_to_nusc_box` + `lidar_nusc_box_to_global`, commit 326653d):

* centre = the gravity centre (decoded z_bottom + h/2, i.e. the head's height output), size = the decoded dims as
  they come, (w, l, h) in the info files' order, heading = -yaw - pi/2 about z, velocity (vx, vy, 0);
* LiDAR -> ego (rotation then translation; the rotation turns the centre, the heading and the velocity);
* dropped when its ego-frame BEV distance exceeds the class's range of the `detection_cvpr_2019` evaluation config;
* ego -> global likewise;
* attribute from the class and the global speed (> 0.2 m/s moving), as upstream picks it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence

import numpy as np

from bevport.data.infos import quaternion_multiply

# detection_cvpr_2019's class_range (metres, BEV distance to the ego): boxes further out are not submitted.
CLASS_RANGE = {"car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50, "pedestrian": 40,
               "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30}
DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
                     "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
                     "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "",
                     "traffic_cone": ""}
MOVING_SPEED = 0.2

if TYPE_CHECKING:  # pragma: no cover
    from bevport.data.infos import Pose


def attribute(name: str, speed: float) -> str:
    """The attribute upstream submits for a box of class `name` moving at `speed` m/s (global frame)."""
    if speed > MOVING_SPEED:
        if name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
    else:
        if name == "pedestrian":
            return "pedestrian.standing"
        if name == "bus":
            return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def results_entries(token: str, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str], lidar2ego: "Pose", ego2global: "Pose") -> List[Dict]:
    """The submission entries of one sample from decoded boxes [N,9] (x, y, z_bottom, w, l, h, yaw, vx, vy) in the
    LiDAR frame and the sample's two poses (bevport.data.infos.Pose)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 9).astype(np.float64)
    centres = b[:, :3].copy()
    centres[:, 2] += b[:, 5] * 0.5                      # gravity centre, as upstream's boxes_3d.gravity_center
    headings = -b[:, 6] - np.pi / 2
    velocities = np.concatenate([b[:, 7:9], np.zeros((len(b), 1))], axis=1)
    entries = []
    for i in range(len(b)):
        name = class_names[int(labels[i])]
        orientation = np.array([math.cos(headings[i] / 2), 0.0, 0.0, math.sin(headings[i] / 2)])
        centre, velocity = centres[i], velocities[i]
        for step, pose in enumerate((lidar2ego, ego2global)):
            rotation = pose.rotation_matrix
            centre = rotation @ centre + pose.translation
            velocity = rotation @ velocity
            orientation = quaternion_multiply(pose.rotation, orientation)
            if step == 0 and np.linalg.norm(centre[:2]) > CLASS_RANGE[name]:
                break
        else:
            entries.append({
                "sample_token": token, "translation": centre.tolist(), "size": b[i, 3:6].tolist(),
                "rotation": orientation.tolist(), "velocity": velocity[:2].tolist(), "detection_name": name,
                "detection_score": float(scores[i]),
                "attribute_name": attribute(name, float(np.hypot(velocity[0], velocity[1]))),
            })
    return entries


def detection_metrics(root: Path, version: str, results: Path, sample_tokens: Sequence[str]) -> Dict:
    """nuScenes' detection metrics (mAP, NDS, the TP errors per class) of `results` on `sample_tokens`, computed by the
    nuScenes devkit (>= 1.2) with the `detection_cvpr_2019` configuration upstream evaluates with: its loaders, range
    and point filters, matching and AP/TP code, on exactly the samples given (the devkit's own entry point insists
    on a whole split)."""
    import contextlib
    import io
    import os

    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import (add_center_dist, filter_eval_boxes, load_gt_of_sample_tokens,
                                              load_prediction_of_sample_tokens)
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    config = config_factory("detection_cvpr_2019")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):   # its progress bars and prints
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
        evaluation = DetectionEval.__new__(DetectionEval)      # its __init__ would load a whole predefined split
        evaluation.nusc, evaluation.cfg, evaluation.verbose = nusc, config, False
        evaluation.result_path, evaluation.output_dir = str(results), os.path.dirname(str(results))
        predictions, _ = load_prediction_of_sample_tokens(str(results), config.max_boxes_per_sample, DetectionBox,
                                                          list(sample_tokens))
        truth = load_gt_of_sample_tokens(nusc, list(sample_tokens), DetectionBox)
        evaluation.pred_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, predictions), config.class_range)
        evaluation.gt_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, truth), config.class_range)
        evaluation.sample_tokens = evaluation.gt_boxes.sample_tokens
        metrics, _ = evaluation.evaluate()
    summary = metrics.serialize()
    summary["samples"] = len(sample_tokens)
    summary["config"] = "detection_cvpr_2019"
    return summary
