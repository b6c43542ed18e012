"""`bevport validate`: does every IR compile on the target device, and do FP32 and INT8 agree on held-out frames?

Per graph, the INT8 graph is fed the FP32 pipeline's own inputs to that graph, so each graph's drift is measured
alone; per frame, the boxes of the all-FP32 and the all-INT8 pipelines are matched (same label, centres closer
than `runtime.validate.match_distance_m`). The recipe's bounds decide pass or fail; validate.json holds everything.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from bevport.contract import build_contract
from bevport.errors import BevportError
from bevport.runtime.decode import Detections
from bevport.runtime.drift import Drift
from bevport.formats import dataset_or_synthetic
from bevport.runtime.graphs import compile_graph, deploy_graphs, infer, read_graph, resolve_graphs
from bevport.runtime.infer import (RuntimeOptions, graph_precisions, iterate_frames, json_dump, open_core,
                                   open_pipeline, with_precisions)


class ValidationFailed(BevportError):
    pass


def compile_all(recipe, contract, bundle: Path, options: RuntimeOptions, core, warn) -> Dict[str, Dict]:
    """Compile the FP32 and the INT8 graph of every stage on the device; a failure is recorded, not raised."""
    status = {}
    for precision, int8 in (("fp32", False), ("int8", True)):
        files = resolve_graphs(recipe, contract, bundle, graph_precisions(recipe, fp32=not int8, int8=int8), warn)
        for graph, path in files.items():
            start = time.perf_counter()
            entry = {"file": path.name}
            try:
                hint = "default" if path.name.startswith("quantized_") else options.inference_precision
                compile_graph(core, read_graph(core, path, contract[graph]), options.device, hint)
                entry.update(compiled=True, seconds=round(time.perf_counter() - start, 3))
            except RuntimeError as exc:
                entry.update(compiled=False, error=str(exc).splitlines()[0])
            status[f"{graph}/{precision}"] = entry
    return status


def match_boxes(reference: Detections, other: Detections, threshold: float, distance: float) -> Dict:
    """Greedy matching in descending reference score: same label, nearest centre within `distance`."""
    ref = reference.select(reference.scores >= threshold)
    oth = other.select(other.scores >= threshold)
    used = np.zeros(len(oth.scores), bool)
    shifts, score_diffs = [], []
    for i in np.argsort(-ref.scores, kind="stable"):
        d = np.hypot(*(oth.boxes[:, :2] - ref.boxes[i, :2]).T)
        d[(oth.labels != ref.labels[i]) | used] = np.inf
        j = int(np.argmin(d)) if d.size else -1
        if j >= 0 and d[j] < distance:
            used[j] = True
            shifts.append(float(d[j]))
            score_diffs.append(float(abs(oth.scores[j] - ref.scores[i])))
    return {"reference_boxes": int(len(ref.scores)), "other_boxes": int(len(oth.scores)), "matched": len(shifts),
            "sum_centre_shift_m": float(np.sum(shifts)), "sum_score_diff": float(np.sum(score_diffs))}


def _summarize_matches(per_frame: List[Dict]) -> Dict:
    total = sum(m["reference_boxes"] for m in per_frame)
    matched = sum(m["matched"] for m in per_frame)
    return {"reference_boxes": total, "int8_boxes": sum(m["other_boxes"] for m in per_frame), "matched": matched,
            "matched_fraction": matched / total if total else 1.0,
            "mean_centre_shift_m": sum(m["sum_centre_shift_m"] for m in per_frame) / matched if matched else 0.0,
            "mean_score_diff": sum(m["sum_score_diff"] for m in per_frame) / matched if matched else 0.0}


def run_validate(recipe, bundle: Path, data, options: RuntimeOptions, out: Path, num_samples: int = 4,
                 split: Optional[str] = None, seed: int = 3000, report_only: bool = False, first_frame: int = 0,
                 progress: Callable = lambda m: None, warn: Callable = lambda m: None) -> Dict:
    """Write validate.json to `out`; raise ValidationFailed (after writing it) when a recipe bound is crossed,
    unless `report_only`, which warns instead (a graph that does not compile always fails)."""
    bounds = recipe.runtime.validate
    contract = build_contract(recipe)
    core = open_core(options)
    progress(f"compiling every graph on {options.device}")
    compiled = compile_all(recipe, contract, bundle, options, core, warn)
    failures = [f"{key} ({entry['file']}) does not compile on {options.device}: {entry['error']}"
                for key, entry in compiled.items() if not entry["compiled"]]
    report = {"recipe": recipe.name, "bundle": str(bundle), "device": options.device,
              "device_name": core.get_property(options.device, "FULL_DEVICE_NAME") if ":" not in options.device
              else options.device, "compile": compiled, "bounds": dict(bounds)}
    if not failures:
        report.update(_compare(recipe, contract, bundle, data, options, core, num_samples, split, seed,
                               first_frame, progress, warn))
        failures += _check_bounds(report, bounds)
    report["passed"] = not failures
    report["failures"] = failures
    report["report_only"] = report_only
    json_dump(Path(out), report)
    compiles = all(entry["compiled"] for entry in compiled.values())
    if failures and report_only and compiles:
        for failure in failures:
            warn(f"validate (report only): {failure}")
    elif failures:
        raise ValidationFailed(f"validation failed ({len(failures)}): " + "; ".join(failures[:3]),
                               f"details in {out}")
    return report


def _compare(recipe, contract, bundle, data, options, core, num_samples, split, seed, first_frame, progress,
             warn) -> Dict:
    fp32 = open_pipeline(recipe, bundle, with_precisions(options, graph_precisions(recipe, fp32=True)), warn, core)
    int8 = open_pipeline(recipe, bundle, with_precisions(options, graph_precisions(recipe, int8=True)), warn, core)
    graphs = deploy_graphs(recipe)
    drift = {g: {t.name: Drift() for t in contract[g].outputs} for g in graphs}
    matches, frames, skipped = [], [], []
    with dataset_or_synthetic(recipe, data, split, num_samples, seed, progress, warn) as (dataset, _):
        for outcome in iterate_frames(fp32, dataset, num_samples, "skip", warn, skipped, first_frame):
            progress(f"frame {outcome.frame.id}: FP32 vs INT8")
            for graph in graphs:
                quantized = infer(int8.pipeline.compiled[graph], contract[graph], outcome.result.feeds[graph])
                for name, ref in outcome.result.outputs[graph].items():
                    drift[graph][name].add(ref, quantized[name])
            int8_result = int8.run(outcome.result.inputs)
            bounds = recipe.runtime.validate
            matches.append(match_boxes(outcome.detections, int8.detect(int8_result), bounds.box_score_threshold,
                                       bounds.match_distance_m))
            frames.append(outcome.frame.id)
    return {"frames": frames, "skipped": skipped,
            "drift": {g: {name: d.summary() for name, d in outs.items()} for g, outs in drift.items()},
            "boxes": _summarize_matches(matches), "stages": {"fp32": fp32.describe(), "int8": int8.describe()}}


def min_snr_db(bounds, graph: str) -> float:
    """The recipe's SNR bound for a graph's outputs: one number for all graphs, or a number per deploy graph."""
    bound = bounds.min_snr_db
    return float(bound[graph]) if isinstance(bound, dict) else float(bound)


def _check_bounds(report: Dict, bounds) -> List[str]:
    failures = []
    for graph, outputs in report["drift"].items():
        for name, m in outputs.items():
            bound = min_snr_db(bounds, graph)
            if m["snr_db"] is not None and m["snr_db"] < bound:
                failures.append(f"{graph}/{name}: INT8 SNR {m['snr_db']:.1f} dB < {bound:g} dB")
    fraction = report["boxes"]["matched_fraction"]
    if fraction < bounds.min_matched_fraction:
        failures.append(f"INT8 finds {fraction:.0%} of the FP32 boxes (score >= {bounds.box_score_threshold:g}), "
                        f"below {bounds.min_matched_fraction:.0%}")
    return failures
