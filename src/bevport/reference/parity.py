"""`bevport parity --source`: bevport's graphs against the user's own training code, on the same inputs.

Per graph and output, three numbers against the original modules run in float64 (all relative to the output's
largest magnitude): the graph in OpenVINO (CPU, f32), PyTorch float32 running the original modules (the output's
inherent rounding error, which sets the bound exactly as `bevport export`'s own parity gate does), and bevport's
native PyTorch model in float64 (zero up to float64 rounding when bevport's model is the user's model). The first
output above its bound fails the run, by name; the report is written either way.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from bevport.checkpoint import load_weights
from bevport.contract import build_contract
from bevport.errors import BevportError, CheckpointError
from bevport.export.onnx_export import export, verify_contract
from bevport.export.parity import compare, float64_copy, relative_error, run_openvino
from bevport.fsutil import atomic_write_bytes, sha256_file
from bevport.models import architecture
from bevport.reference import LoadedReference, load_reference
from bevport.reference.tree import cpu_only


class ParityError(BevportError):
    pass


def first_failure(graphs: Dict[str, Dict]) -> Optional[str]:
    """'<file>:<output> (...)' of the first output, check or decoding over its bound, in contract order (seeded
    inputs, then each dataset frame); None when all pass."""
    for report in graphs.values():
        failure = _graph_failure(report)
        if failure is not None:
            return failure
        for i, frame in enumerate(report.get("frames") or []):
            failure = _graph_failure(frame)
            if failure is not None:
                return f"{failure} on dataset frame {i}"
    return None


def _graph_failure(report: Dict) -> Optional[str]:
    for name, o in report["outputs"].items():
        for check, error in (("OpenVINO", o["max_rel_error"]),
                             ("bevport's native model (float64)", o.get("native_f64_rel_error", 0.0))):
            if not error <= o["bound"]:
                return (f"{report['file']}:{name} ({check} rel. error {error:.2e} > bound {o['bound']:.2e}, "
                        f"PyTorch float32's own {o['torch_f32_rel_error']:.2e})")
    for name, check in (report.get("checks") or {}).items():
        if not check["passed"]:
            return f"{report['file']}: {name} ({', '.join(f'{k} {v}' for k, v in check.items() if k != 'passed')})"
    boxes = report.get("decoded")
    if boxes is not None and boxes["passed"] is False:
        return (f"{report['file']}: decoded boxes (bevport {boxes['boxes'][0]} vs the tree's {boxes['boxes'][1]}, "
                f"labels equal: {boxes['labels_equal']}, max box error {boxes['max_abs_box_error']:.2e}, score "
                f"error {boxes['max_abs_score_error']:.2e})")
    return None


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over entries finite in both (-1 when the two disagree on which entries are inf/NaN)."""
    if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return -1.0
    both = np.isfinite(a)
    return float(np.max(np.abs(a[both].astype(np.float64) - b[both]))) if both.any() else 0.0


def compare_boxes(recipe, contract, spec, ref: LoadedReference, head_maps: List[np.ndarray]) -> Optional[Dict]:
    """For the graph that ends in the head: the same head maps (the tree's float32 run) decoded by the tree's
    `CenterHead.get_bboxes` and by bevport's runtime decoder. The same boxes and labels, or the run fails."""
    from bevport.runtime.decode import decode

    layout = contract.head_layout()
    head_names = {name for task in layout for name, _, _ in task.values()}
    if getattr(ref.arch, "tree_boxes", None) is None or not head_names <= {t.name for t in spec.outputs}:
        return None
    maps = dict(zip([t.name for t in spec.outputs], head_maps))
    tasks = [{attr: torch.from_numpy(maps[name][:, a:b]) for attr, (name, a, b) in task.items()} for task in layout]
    theirs = ref.arch.tree_boxes(tasks)
    ours = decode(maps, recipe, contract)
    ours = {"boxes": ours.boxes, "scores": ours.scores, "labels": ours.labels}
    theirs = {k: v.astype(ours[k].dtype) for k, v in theirs.items()}
    tol = float(recipe.export.parity.box_tolerance)
    report = {"boxes": [len(ours["scores"]), len(theirs["scores"])], "tolerance": tol}
    report.update(_match(ours, theirs, tol))
    if not report["passed"]:
        # Equal float32 scores (sigmoid saturates at 1.0) leave top-K and NMS order to torch.topk / torch.sort,
        # which do not define it; bevport orders ties deterministically. Such boxes cannot be compared one to one:
        # the boxes whose score no other box shares must still be the same.
        tied = np.union1d(_tied_scores(ours["scores"]), _tied_scores(theirs["scores"]))
        untied = [{k: v[~np.isin(d["scores"], tied)] for k, v in d.items()} for d in (ours, theirs)]
        report.update({"tied_score_values": int(tied.size), "untied": _match(*untied, tol)})
        if tied.size and not report["untied"]["passed"]:
            # Which of many equal top scores fill top-K decides every later box of that task: undecidable, not
            # wrong. Reported, not failed (the seeded maps, whose scores do not saturate, are compared strictly).
            report.update(passed=None, comparable=False)
        else:
            report["passed"] = bool(tied.size and report["untied"]["passed"])
    return report


def _tied_scores(scores: np.ndarray) -> np.ndarray:
    values, counts = np.unique(scores, return_counts=True)
    return values[counts > 1]


def _match(ours: Dict[str, np.ndarray], theirs: Dict[str, np.ndarray], tol: float) -> Dict:
    """Same count and labels (after sorting both by label, then score) and boxes/scores within `tol`."""
    order = [np.lexsort((-d["scores"], d["labels"])) for d in (ours, theirs)]
    a, b = ({k: v[o] for k, v in d.items()} for d, o in zip((ours, theirs), order))
    same = len(a["scores"]) == len(b["scores"]) and np.array_equal(a["labels"], b["labels"])
    box_error = _max_abs(a["boxes"], b["boxes"]) if same else -1.0
    score_error = _max_abs(a["scores"], b["scores"]) if same else -1.0
    return {"labels_equal": bool(same), "max_abs_box_error": box_error, "max_abs_score_error": score_error,
            "passed": bool(same and 0 <= box_error <= tol and 0 <= score_error <= tol)}


def frame_feeds(recipe, onnx: Path, data: Path, frames: int, split: Optional[str], folder: Path,
                progress: Callable[[str], None], warn: Callable[[str], None]) -> Dict[str, List[Dict]]:
    """{graph key: [its inputs on each of the first `frames` usable frames of `data`]}, as `bevport calibrate`
    records them: the deploy pipeline on the dataset, graph by graph (FP32 OpenVINO graphs feeding the next)."""
    from bevport.quantize.calibrate import calibrate, frame_files, load_feed
    from bevport.runtime.graphs import source_graph

    progress(f"running bevport's pipeline over {frames} frame(s) of {data} for the graphs' inputs")
    manifest = calibrate(recipe, onnx, data, folder, num_samples=frames, holdout=1, split=split,
                         progress=progress, warn=warn)
    feeds = {}
    for graph in manifest["graphs"]:
        paths = frame_files(folder, manifest, graph, "calibration")
        feeds[source_graph(recipe, graph)] = [load_feed(p) for p in paths]
    return feeds


def compare_graph(recipe, spec, graph: Path, ref: LoadedReference, ref64, native64, seed: int,
                  inputs: Optional[Dict[str, np.ndarray]] = None) -> Dict:
    """One graph against the tree on `inputs` (default: the seeded ones)."""
    arch = architecture(recipe)
    inputs = ref.arch.sample_inputs(recipe, spec, seed) if inputs is None else inputs
    exact = [np.asarray(a, np.float64) for a in ref.arch.reference_outputs(ref64, recipe, spec, inputs)]
    torch_f32 = ref.arch.reference_outputs(ref.model, recipe, spec, inputs)
    gate = recipe.export.parity
    report = compare(spec, exact, torch_f32, run_openvino(graph, spec, inputs), float(gate.factor), float(gate.floor))
    if native64 is not None:
        ours = arch.reference_outputs(native64, recipe, spec, inputs)
        for t, want, got in zip(spec.outputs, exact, ours):
            report["outputs"][t.name]["native_f64_rel_error"] = relative_error(want, np.asarray(got, np.float64))
    report.update(file=spec.file, seed=seed, inputs={k: list(v.shape) for k, v in inputs.items()})
    extra = getattr(ref.arch, "checks", lambda *a: {})(ref.model, recipe, spec, inputs)
    if extra:
        report["checks"] = extra
    boxes = compare_boxes(recipe, build_contract(recipe), spec, ref, torch_f32)   # the tree's float32 maps
    if boxes is not None:
        report["decoded"] = boxes
    report["passed"] = _graph_failure(report) is None
    return report


def reference_parity(recipe, ckpt: Path, source: Path, config: Optional[Path], out: Path,
                     onnx: Optional[Path] = None, seed: int = 0, data: Optional[Path] = None, frames: int = 2,
                     split: Optional[str] = None, progress: Callable[[str], None] = lambda m: None,
                     warn: Callable[[str], None] = lambda m: None) -> Dict:
    """Write `out` (parity-reference.json) and return it; raises ParityError naming the first failing output."""
    ref = load_reference(recipe, source, config, ckpt, progress)
    contract = build_contract(recipe)
    arch = architecture(recipe)
    native, native_note = arch.build(recipe), "bevport's native model in float64"
    try:
        load_weights(native, ckpt, warn=warn)
    except CheckpointError as e:
        if onnx is None:      # the graphs to compare come from the native model: nothing to compare without it
            raise
        # An edited architecture: its graphs (`--backend reference`) are still compared with the tree's modules.
        native, native_note = None, f"skipped: the checkpoint does not load into bevport's model ({e.message})"
        warn(f"bevport's native model is not compared: {e.message}")
    graphs: Dict[str, Dict] = {}
    files: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bevport-parity-") as tmp, cpu_only() as shims:
        folder = Path(onnx) if onnx else Path(tmp) / "onnx"
        if onnx is None:
            progress("exporting bevport's graphs (native backend)")
            export(recipe, ckpt, folder, progress=progress, warn=warn)
        ref64, native64 = float64_copy(ref.model), (float64_copy(native) if native is not None else None)
        feeds = {} if data is None else frame_feeds(recipe, folder, data, frames, split, Path(tmp) / "feeds",
                                                    progress, warn)
        for spec in contract:
            path = folder / spec.file
            verify_contract(path, spec)
            progress(f"comparing {spec.file} with the training tree's modules")
            graphs[spec.key] = compare_graph(recipe, spec, path, ref, ref64, native64, seed)
            files[spec.file] = sha256_file(path)
            frame_inputs = [ref.arch.prepare_feed(recipe, spec, f) for f in feeds.get(spec.key, [])]
            frame_inputs = [f for f in frame_inputs if f is not None]
            if frame_inputs:
                graphs[spec.key]["frames"] = [compare_graph(recipe, spec, path, ref, ref64, native64, seed, f)
                                              for f in frame_inputs]
    failure = first_failure(graphs)
    report = {"recipe": recipe.name, "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
              "graphs_from": str(onnx) if onnx else "bevport export", "files": files,
              "inputs": f"seeded (seed {seed})" + (f", and {frames} frame(s) of {data}" if data else ""),
              "reference": ref.describe(), "native": native_note, "shims": dict(shims),
              "gate": {"factor": recipe.export.parity.factor, "floor": recipe.export.parity.floor},
              "passed": failure is None, "first_failure": failure, "graphs": graphs}
    atomic_write_bytes(Path(out), (json.dumps(report, indent=2) + "\n").encode())
    if failure:
        raise ParityError(f"bevport's graphs differ from the training tree's code: {failure}",
                          f"the whole comparison is in {out}")
    return report


def summary_rows(report: Dict) -> List[List[str]]:
    """[graph, output, OpenVINO error, bound, native float64 error] for the CLI's table."""
    rows = []
    for r in report["graphs"].values():
        for name, o in r["outputs"].items():
            rows.append([r["file"], name, f"{o['max_rel_error']:.1e}", f"{o['bound']:.1e}",
                         f"{o.get('native_f64_rel_error', float('nan')):.1e}"])
    return rows
