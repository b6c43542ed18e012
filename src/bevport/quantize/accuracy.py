"""`bevport quantize --max-ap-drop X`: NNCF's accuracy-controlled quantization, driven by bevport's own AP.

For each graph the recipe quantizes, NNCF quantizes it as usual, then scores the whole pipeline (that graph's
candidate, every other graph FP32 at f32, decoding, the dataset format's evaluator) on labelled frames the
calibration never saw. While the drop against the all-FP32 pipeline exceeds X AP points, NNCF returns the
quantizers it ranks most harmful to FP32, one group at a time (ranked by how far the graph's outputs move on the
same frames). The metric is the mean over classes of the moderate BEV AP (KITTI R40 for the kitti format).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bevport.errors import QuantizeError
from bevport.formats import dataset_format
from bevport.runtime.decode import decode
from bevport.runtime.pipeline import FrameInputs, Pipeline, pipeline_class, prepared_frames

METRIC = "mean moderate BEV AP"


@dataclass
class LabelledFrame:
    frame: object                      # the dataset frame (labels, calibration, image size)
    inputs: FrameInputs                # prepared once
    feeds: Dict[str, Dict]             # every graph's FP32-pipeline input, for NNCF's ranking


class APScorer:
    """Runs labelled frames through a pipeline whose graphs can be swapped, and scores the detections."""

    def __init__(self, recipe, contract, fp32: Dict[str, object], dataset, frames: List[LabelledFrame]):
        self.recipe, self.contract, self.fp32 = recipe, contract, fp32
        self.dataset, self.frames = dataset, frames
        self.format = dataset_format(recipe)

    def score(self, replaced: Optional[Dict[str, object]] = None, frames: Optional[List[LabelledFrame]] = None,
              details: bool = False):
        pipeline: Pipeline = pipeline_class(self.recipe)(self.recipe, self.contract, dict(self.fp32, **(replaced or {})))
        frames = self.frames if frames is None else list(frames)
        with tempfile.TemporaryDirectory(prefix="bevport-ap-") as pred:
            for item in frames:
                result = pipeline.run(item.inputs)
                detections = decode(pipeline.head_outputs(result), self.recipe, self.contract)
                self.format.write_predictions(pred, item.frame, detections, self.recipe)
            path = self.format.evaluate(self.dataset, pred, [item.frame.id for item in frames])
            ap = json.loads(Path(path).read_text())
        return (mean_ap(ap), ap) if details else mean_ap(ap)


def mean_ap(ap: Dict) -> float:
    """Mean over classes with labelled objects of the moderate BEV AP."""
    values = [v["moderate"]["AP_BEV"] for v in ap["classes"].values() if v["moderate"]["num_gt"] > 0]
    return float(sum(values) / len(values)) if values else 0.0


def labelled_frames(recipe, pipeline: Pipeline, dataset, first: int, count: int,
                    progress: Callable = lambda m: None, warn: Callable = lambda m: None) -> List[LabelledFrame]:
    """`count` usable frames from index `first`, each with its FP32 feeds; refused when the dataset has no labels
    its format can score."""
    if not dataset_format(recipe).has_labels(dataset):
        raise QuantizeError(f"{dataset.root}: --max-ap-drop needs labelled frames, and this dataset has no labels "
                            f"the {recipe.dataset.format} format can score",
                            "pass --data with a labelled dataset (KITTI layout with label_2/), or drop --max-ap-drop")
    frames = []
    for frame, inputs, _ in prepared_frames(pipeline, dataset, start=first, warn=warn):
        frames.append(LabelledFrame(frame, inputs, pipeline.run(inputs).feeds))
        progress(f"AP frame {frame.id} ({len(frames)}/{count})")
        if len(frames) == count:
            return frames
    raise QuantizeError(f"{dataset.root}: {len(frames)} usable frames from index {first}; --ap-frames asks for "
                        f"{count}", "lower --ap-frames, or pass --data with more labelled frames")


def quantize_with_ap(model, recipe, graph: str, scorer: APScorer, calibration, max_drop: float, settings: Dict,
                     subset_size: int):
    """NNCF's quantize_with_accuracy_control on `graph` with bevport's AP as the metric."""
    import nncf

    validation = nncf.Dataset(scorer.frames, lambda item: item.feeds[graph])

    def validate(compiled, items) -> float:
        return scorer.score({graph: compiled}, items)

    return nncf.quantize_with_accuracy_control(
        model, calibration, validation, validation_fn=validate, max_drop=float(max_drop),
        drop_type=nncf.DropType.ABSOLUTE, subset_size=subset_size, **settings)
