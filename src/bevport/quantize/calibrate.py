"""`bevport calibrate`: run the FP32 graphs over the first usable frames and store what each graph saw.

The calibration set is a folder:

    manifest.json            recipe, ONNX hashes, dataset, frames (calibration | holdout) with voxel counts, skips
    <graph>/<frame id>.npz   the named input tensors of that graph for that frame (camera, lidar_pfe, fuser, head)

Frames are taken in dataset order, as Intel's calibration takes the first N of the split: the first
`num_samples` usable frames calibrate, the next `holdout` frames are kept for the FP32-vs-INT8 report.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from bevport import __version__
from bevport.contract import build_contract
from bevport.data.dataset import Dataset, open_dataset
from bevport.errors import QuantizeError
from bevport.fsutil import atomic_output_dir, sha256_file
from bevport.runtime.pipeline import STAGES, Pipeline, prepared_frames

MANIFEST = "manifest.json"
SYNTHETIC_WARNING = ("calibrated on SYNTHETIC scenes: these INT8 scales are NOT for production; "
                     "pass --data with frames of your deployment site")


def onnx_files(recipe, contract, onnx_dir: Path) -> Dict[str, Path]:
    """The exported graph per pipeline stage, after checking the folder was exported for this recipe."""
    onnx_dir = Path(onnx_dir)
    summary_path = onnx_dir / "export.json"
    if not summary_path.is_file():
        raise QuantizeError(f"{onnx_dir}: no export.json; this is not a `bevport export` output folder",
                            "run `bevport export --ckpt ... --out DIR` and pass that DIR as --onnx")
    summary = json.loads(summary_path.read_text())
    if summary.get("recipe") != recipe.name:
        raise QuantizeError(f"{onnx_dir} was exported for recipe `{summary.get('recipe')}`, not `{recipe.name}`",
                            f"pass --recipe {summary.get('recipe')}, or export again with --recipe {recipe.name}")
    return {key: onnx_dir / contract[key].file for key in STAGES}


def _fingerprints(files: Dict[str, Path]) -> Dict[str, str]:
    return {path.name: sha256_file(path) for path in files.values()}


def _store(folder: Path, frame_id: str, feed: Dict[str, np.ndarray]) -> None:
    folder.mkdir(exist_ok=True)
    with open(folder / f"{frame_id}.npz", "wb") as f:
        np.savez(f, **feed)


def _collect(recipe, dataset: Dataset, pipeline: Pipeline, tmp: Path, wanted: int, calibration: int,
             on_bad_frame: str, progress: Callable, warn: Callable):
    """Run frames in order until `wanted` succeeded; returns (frame records, skipped records)."""
    graph_of_stage = {recipe.quantize.graphs[g].source: g for g in recipe.quantize.graphs}
    frames: List[Dict] = []
    skipped: List[Dict] = []
    for frame, inputs, seconds in prepared_frames(recipe, pipeline.contract, dataset, on_bad_frame=on_bad_frame,
                                                  warn=warn, skipped=skipped):
        pipeline.seconds["read_and_preprocess"] += seconds
        if not frames:
            _check_intensity(recipe, inputs, warn)
        role = "calibration" if len(frames) < calibration else "holdout"
        progress(f"{role} frame {frame.id} ({len(frames) + 1}/{wanted}): {inputs.num_voxels} pillars")
        result = pipeline.run(inputs)
        with pipeline.timed("store"):
            for stage, feed in result.feeds.items():
                _store(tmp / graph_of_stage[stage], frame.id, feed)
        frames.append({"id": frame.id, "role": role, "pillars": inputs.num_voxels,
                       "dropped_pillars": inputs.num_dropped})
        if len(frames) == wanted:
            break
    return frames, skipped


def _check_intensity(recipe, inputs, warn: Callable) -> None:
    """Training read raw 0-255 intensity; a dataset converted to 0-1 would silently shift every pillar feature."""
    features = inputs.pfe[recipe.export.graphs.lidar_pfe_static.inputs[0]]
    peak = float(features[..., 3].max())
    scale = float(recipe.input.intensity_scale)
    if peak <= 1.0:
        warn(f"frame {inputs.frame_id}: intensity peaks at {peak:.3g} after scaling by {scale:g}; the checkpoint was "
             "trained on raw 0-255 intensity. If this dataset was converted to 0-1 (velodyne/*.bin from Intel's or "
             "DAIR's converter), pass --intensity-scale 255")
    elif peak > 255 * 1.01:
        warn(f"frame {inputs.frame_id}: intensity reaches {peak:.4g} after scaling by {scale:g}, above the 0-255 "
             "range the checkpoint was trained on; check --intensity-scale")


def _set_hash(tmp: Path, graphs) -> str:
    """One sha256 over every stored tensor file, in a fixed order: the calibration set's identity."""
    digest = hashlib.sha256()
    for graph in sorted(graphs):
        for path in sorted((tmp / graph).glob("*.npz")):
            digest.update(f"{graph}/{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _dataset_or_synthetic(data: Optional[os.PathLike], split: Optional[str], frames: int, seed: int,
                          progress: Callable, warn: Callable):
    if data is not None:
        yield open_dataset(data, split), False
        return
    from bevport.data.scenes import write_synthetic_dataset

    warn(SYNTHETIC_WARNING)
    with tempfile.TemporaryDirectory(prefix="bevport-scenes-") as tmp:
        progress(f"writing {frames} synthetic scenes (seed {seed})")
        root = write_synthetic_dataset(Path(tmp) / "scenes", frames=frames, seed=seed)
        yield open_dataset(root), True


def calibrate(recipe, onnx_dir: os.PathLike, data: Optional[os.PathLike], out: os.PathLike,
              num_samples: Optional[int] = None, holdout: Optional[int] = None, split: Optional[str] = None,
              on_bad_frame: str = "skip", seed: int = 0, device: str = "CPU",
              progress: Callable[[str], None] = lambda msg: None,
              warn: Callable[[str], None] = lambda msg: None) -> Dict:
    """Write the calibration set for `recipe`'s graphs in `onnx_dir` to `out`. Returns its manifest."""
    num_samples = recipe.quantize.calibration_frames if num_samples is None else num_samples
    holdout = recipe.quantize.holdout_frames if holdout is None else holdout
    if num_samples < 1 or holdout < 1:
        raise QuantizeError(f"--num-samples ({num_samples}) and --holdout ({holdout}) must both be at least 1")
    contract = build_contract(recipe)
    files = onnx_files(recipe, contract, Path(onnx_dir))
    progress("compiling the FP32 graphs")
    pipeline = Pipeline.from_files(recipe, contract, files, device=device, precision="f32")
    wanted = num_samples + holdout
    with _dataset_or_synthetic(data, split, wanted, seed, progress, warn) as (dataset, synthetic), \
            atomic_output_dir(out) as tmp:
        frames, skipped = _collect(recipe, dataset, pipeline, tmp, wanted, num_samples, on_bad_frame, progress, warn)
        if len(frames) < wanted:
            raise QuantizeError(
                f"{dataset.root}: only {len(frames)} usable frames of {len(dataset)} ({len(skipped)} skipped); "
                f"{num_samples} calibration + {holdout} held-out frames were asked for",
                "lower --num-samples or --holdout, or fix the frames named in the warnings above")
        manifest = {
            "bevport_version": __version__,
            "recipe": recipe.name,
            "onnx": {"folder": str(onnx_dir), "files": _fingerprints(files)},
            "dataset": {"root": None if synthetic else str(dataset.root), "layout": dataset.layout,
                        "split": split, "synthetic": synthetic, "seed": seed if synthetic else None},
            "warning": SYNTHETIC_WARNING if synthetic else None,
            "static_voxels": recipe.export.static_voxels,
            "intensity_scale": recipe.input.intensity_scale,
            "frames": frames,
            "skipped": skipped,
            "frames_with_dropped_pillars": sum(1 for f in frames if f["dropped_pillars"]),
            "graphs": sorted(recipe.quantize.graphs),
            "seconds": {stage: round(t, 3) for stage, t in sorted(pipeline.seconds.items())},
            "sha256": _set_hash(tmp, recipe.quantize.graphs),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(calib_dir: os.PathLike, recipe) -> Dict:
    """The manifest of a calibration set made for `recipe`; every listed tensor file must be present."""
    calib_dir = Path(calib_dir)
    path = calib_dir / MANIFEST
    if not path.is_file():
        raise QuantizeError(f"{calib_dir}: no {MANIFEST}; this is not a `bevport calibrate` output folder",
                            "run `bevport calibrate ... --out DIR` and pass that DIR as --calib")
    try:
        manifest = json.loads(path.read_text())
        frames, graphs = manifest["frames"], manifest["graphs"]
    except (ValueError, KeyError) as exc:
        raise QuantizeError(f"{path}: malformed calibration manifest ({exc})", "run `bevport calibrate` again") from None
    if manifest.get("recipe") != recipe.name:
        raise QuantizeError(f"{calib_dir} was calibrated for recipe `{manifest.get('recipe')}`, not `{recipe.name}`")
    missing = [f"{g}/{f['id']}.npz" for g in graphs for f in frames if not (calib_dir / g / f"{f['id']}.npz").is_file()]
    if missing:
        raise QuantizeError(f"{calib_dir}: {len(missing)} tensor files listed in {MANIFEST} are missing "
                            f"(first: {missing[0]})", "run `bevport calibrate` again")
    return manifest


def frame_files(calib_dir: os.PathLike, manifest: Dict, graph: str, role: str) -> List[Path]:
    return [Path(calib_dir) / graph / f"{f['id']}.npz" for f in manifest["frames"] if f["role"] == role]


def load_feed(path: Path) -> Dict[str, np.ndarray]:
    """One stored feed, by input name."""
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise QuantizeError(f"{path}: unreadable calibration tensor file ({exc})", "run `bevport calibrate` again") \
            from None
