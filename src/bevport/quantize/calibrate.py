"""`bevport calibrate`: run the FP32 graphs over the first usable frames and store what each graph saw.

The calibration set is a folder:

    manifest.json            recipe, ONNX hashes, dataset, frames (calibration | holdout) with their stats, skips
    <graph>/<frame id>.npz   the named input tensors of that deploy graph for that frame

Frames are taken in dataset order, as Intel's calibration takes the first N of the split: the first
`num_samples` usable frames calibrate, the next `holdout` frames are kept for the FP32-vs-INT8 report.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from bevport import __version__
from bevport.contract import build_contract
from bevport.errors import QuantizeError
from bevport.formats import dataset_or_synthetic
from bevport.fsutil import atomic_output_dir, sha256_file
from bevport.runtime.graphs import deploy_graphs, source_graph
from bevport.runtime.pipeline import PREFETCH, Pipeline, pipeline_class, prefetched, prepared_frames

MANIFEST = "manifest.json"
SYNTHETIC_WARNING = ("calibrated on SYNTHETIC scenes: these INT8 scales are NOT for production; "
                     "pass --data with frames of your deployment site")


def onnx_files(recipe, contract, onnx_dir: Path) -> Dict[str, Path]:
    """The exported graph of every deploy graph and quantization source, after checking the folder was exported for
    this recipe."""
    onnx_dir = Path(onnx_dir)
    summary_path = onnx_dir / "export.json"
    if not summary_path.is_file():
        raise QuantizeError(f"{onnx_dir}: no export.json; this is not a `bevport export` output folder",
                            "run `bevport export --ckpt ... --out DIR` and pass that DIR as --onnx")
    summary = json.loads(summary_path.read_text())
    if summary.get("recipe") != recipe.name:
        raise QuantizeError(f"{onnx_dir} was exported for recipe `{summary.get('recipe')}`, not `{recipe.name}`",
                            f"pass --recipe {summary.get('recipe')}, or export again with --recipe {recipe.name}")
    keys = dict.fromkeys(deploy_graphs(recipe) + [source_graph(recipe, g) for g in deploy_graphs(recipe)])
    return {key: onnx_dir / contract[key].file for key in keys}


def _fingerprints(files: Dict[str, Path]) -> Dict[str, str]:
    return {path.name: sha256_file(path) for path in files.values()}


def _store(folder: Path, frame_id: str, feed: Dict[str, np.ndarray]) -> None:
    folder.mkdir(exist_ok=True)
    with open(folder / f"{frame_id}.npz", "wb") as f:
        np.savez(f, **feed)


def _collect(dataset, pipeline: Pipeline, tmp: Path, wanted: int, calibration: int, on_bad_frame: str,
             progress: Callable, warn: Callable):
    """Run frames in order until `wanted` succeeded; returns (frame records, skipped records)."""
    frames: List[Dict] = []
    skipped: List[Dict] = []
    # frames are read and preprocessed on a background thread while the previous one runs (nothing past `wanted`)
    ahead = itertools.islice(prepared_frames(pipeline, dataset, on_bad_frame=on_bad_frame, warn=warn,
                                             skipped=skipped), wanted)
    for frame, inputs, seconds in prefetched(ahead, PREFETCH):
        pipeline.seconds["read_and_preprocess"] += seconds
        if not frames:
            pipeline.inspect(inputs, warn)
        role = "calibration" if len(frames) < calibration else "holdout"
        stats = inputs.stats()
        progress(f"{role} frame {frame.id} ({len(frames) + 1}/{wanted})"
                 + "".join(f", {k.replace('_', ' ')} {v}" for k, v in stats.items()))
        result = pipeline.run(inputs)
        with pipeline.timed("store"):
            for graph, feed in result.feeds.items():
                _store(tmp / graph, frame.id, feed)
        frames.append(dict({"id": frame.id, "role": role}, **stats))
        if len(frames) == wanted:
            break
    return frames, skipped


def _set_hash(tmp: Path, graphs) -> str:
    """One sha256 over every stored tensor file, in a fixed order: the calibration set's identity."""
    digest = hashlib.sha256()
    for graph in sorted(graphs):
        for path in sorted((tmp / graph).glob("*.npz")):
            digest.update(f"{graph}/{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


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
    pipeline = pipeline_class(recipe).from_files(recipe, contract, files, device=device, precision="f32")
    wanted = num_samples + holdout
    with dataset_or_synthetic(recipe, data, split, wanted, seed, progress, warn, SYNTHETIC_WARNING) \
            as (dataset, synthetic), atomic_output_dir(out) as tmp:
        frames, skipped = _collect(dataset, pipeline, tmp, wanted, num_samples, on_bad_frame, progress, warn)
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
            "settings": pipeline.settings(),
            "frames": frames,
            "skipped": skipped,
            "graphs": deploy_graphs(recipe),
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
