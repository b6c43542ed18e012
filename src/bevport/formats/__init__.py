"""Dataset formats, one module per format (the recipe's `dataset.format` names it): the reader, synthetic scenes in
the same layout, prediction writers, the evaluator that goes with the format's labels, and the picture of a frame.

A format module provides `open_dataset(recipe, root, split)`, `write_synthetic(out, frames, seed, overwrite,
progress)`, `write_predictions(pred_dir, frame, detections, recipe)`, `evaluate(dataset, pred_dir, ids, warn)` (the
metrics file, or None without labels), optionally `write_results(dataset, pred_dir, ids, recipe)` (one results file
per run), `ground_truth(frame, class_names)` and `picture(recipe, frame, detections, show_gt,
latency_ms)`."""
from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple


def dataset_format(recipe):
    """`bevport.formats.<dataset.format>` of the recipe."""
    return importlib.import_module(f"bevport.formats.{recipe.dataset.format}")


@contextlib.contextmanager
def dataset_or_synthetic(recipe, data: Optional[os.PathLike], split: Optional[str], frames: int, seed: int,
                         progress: Callable[[str], None], warn: Callable[[str], None],
                         warning: Optional[str] = None) -> Iterator[Tuple[object, bool]]:
    """(dataset, synthetic?): the user's dataset, or `frames` synthetic scenes of the recipe's format written to a
    temporary folder for the run (saying so with `warning`, or a default line)."""
    fmt = dataset_format(recipe)
    if data is not None:
        yield fmt.open_dataset(recipe, data, split), False
        return
    warn(warning or f"no --data: running on {frames} synthetic scenes (seed {seed})")
    with tempfile.TemporaryDirectory(prefix="bevport-scenes-") as tmp:
        progress(f"writing {frames} synthetic scenes (seed {seed})")
        yield fmt.open_dataset(recipe, fmt.write_synthetic(Path(tmp) / "scenes", frames, seed)), True
