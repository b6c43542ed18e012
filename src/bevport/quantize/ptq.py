"""`bevport quantize`: NNCF post-training quantization of the recipe's deploy graphs, with the recipe's settings.

For each graph the output folder receives the FP32 IR (`<onnx stem>.xml/.bin`) and the INT8 IR under the deploy
binary's name (`quantized_<graph>.xml/.bin`), then the FP32-vs-INT8 report on the held-out frames. An INT8 IR in
which NNCF quantized nothing (the V2X PFE) is an FP32 graph: its IR records INFERENCE_PRECISION_HINT=f32 in its
rt_info (`runtime_options`), which bevport's runtime applies wherever it compiles it (OpenVINO itself does not read
that key: a loader must pass it to compile_model).
The same ONNX and calibration set give byte-identical IRs: frames are fed in manifest order and nothing is sampled.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bevport import __version__
from bevport.contract import build_contract
from bevport.errors import QuantizeError
from bevport.fsutil import atomic_output_dir, sha256_file
from bevport.quantize.calibrate import frame_files, load_feed, load_manifest, onnx_files
from bevport.runtime.graphs import check_ports, read_graph, source_graph
from bevport.runtime.precision import pin_f32, pinned_hint

_AUTO_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_\d+$")


def graph_settings(recipe, graph: str) -> Dict:
    """The NNCF settings of one graph: quantize.<key>, overridden by quantize.graphs.<graph>.<key>."""
    q, own = recipe.quantize, recipe.quantize.graphs[graph]
    return {"preset": str(own.get("preset", q.preset)),
            "fast_bias_correction": bool(own.get("fast_bias_correction", q.fast_bias_correction)),
            "ignored_types": list(own.get("ignored_types") or []),
            "ignored_patterns": list(own.get("ignored_patterns") or [])}


def _nncf_settings(recipe, graph: str, target_device: Optional[str]):
    import nncf

    own = graph_settings(recipe, graph)
    ignored = own["ignored_types"] or own["ignored_patterns"]
    return dict(
        fast_bias_correction=own["fast_bias_correction"],
        target_device=getattr(nncf.TargetDevice, str(target_device or recipe.quantize.target_device).upper()),
        preset=getattr(nncf.QuantizationPreset, own["preset"].upper()),
        ignored_scope=nncf.IgnoredScope(types=own["ignored_types"], patterns=own["ignored_patterns"],
                                        validate=False) if ignored else None,
    )


def canonical_names(model) -> None:
    """Renumber OpenVINO's automatic node names in graph order.

    Nodes without a name get `<Type>_<n>` from a process-wide counter, so the same graph would serialize to
    different bytes depending on what the process built before. Graph order makes the IR a function of the graph.
    """
    for index, op in enumerate(model.get_ordered_ops()):
        match = _AUTO_NAME.match(op.get_friendly_name())
        if match and match.group(1) == op.get_type_name():
            op.set_friendly_name(f"{op.get_type_name()}_{index}")


def save_ir(model, path: Path, compress_to_fp16: bool) -> None:
    import openvino as ov

    canonical_names(model)
    ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)


def count_fake_quantize(model) -> int:
    return sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")


def quantized_types(model) -> List[str]:
    """The op types that read a FakeQuantize output, i.e. the ops NNCF quantized (sorted, unique)."""
    return sorted({target.get_node().get_type_name() for op in model.get_ordered_ops()
                   if op.get_type_name() == "FakeQuantize" for target in op.output(0).get_target_inputs()})


def kept_fp32(recipe, graph: str) -> bool:
    """The recipe keeps this deploy graph FP32 under its INT8 IR's name (`precision: fp32`)."""
    return recipe.quantize.graphs[graph].get("precision", "int8") == "fp32"


def _nncf_quantize(model, recipe, graph: str, files: List[Path], target_device: Optional[str]):
    import nncf

    subset = min(recipe.quantize.subset_size or len(files), len(files))
    with _quiet_nncf():
        return nncf.quantize(model, nncf.Dataset(files, load_feed), subset_size=subset,
                             **_nncf_settings(recipe, graph, target_device))


def _check_rules(recipe, graph: str, quantized, path: Path) -> None:
    """The recipe's rules hold on the produced IR, whichever NNCF made it: no ignored op type reads a FakeQuantize."""
    ignored = set(recipe.quantize.graphs[graph].get("ignored_types") or [])
    broken = sorted(ignored & set(quantized_types(quantized)))
    if broken:
        raise QuantizeError(f"{path.name}: NNCF quantized {', '.join(broken)}, which quantize.graphs.{graph}."
                            "ignored_types keeps FP32", "this NNCF version does not honour the ignored scope; "
                            "please report it with quantize.json")


class AccuracyControl:
    """`--max-ap-drop`: each graph quantized by NNCF's accuracy control against bevport's AP (quantize.accuracy)."""

    def __init__(self, scorer, max_drop: float, progress: Callable[[str], None]):
        self.scorer, self.max_drop, self.progress = scorer, float(max_drop), progress
        self.fp32_ap = scorer.score()
        progress(f"FP32 pipeline: {self.fp32_ap:.2f} mean moderate BEV AP on {len(scorer.frames)} labelled frames")

    def quantize(self, model, recipe, graph: str, files: List[Path], target_device: Optional[str]):
        import nncf

        from bevport.quantize.accuracy import quantize_with_ap

        subset = min(recipe.quantize.subset_size or len(files), len(files))
        with _quiet_nncf():
            return quantize_with_ap(model, recipe, graph, self.scorer, nncf.Dataset(files, load_feed),
                                    self.max_drop, _nncf_settings(recipe, graph, target_device), subset)

    def record(self, core, graph: str, quantized, fake_quantize: int) -> Dict:
        ap = self.scorer.score({graph: core.compile_model(quantized, "CPU")})
        self.progress(f"{graph}: {ap:.2f} AP with it INT8 ({fake_quantize} FakeQuantize ops), FP32 {self.fp32_ap:.2f}")
        return {"metric": "mean moderate BEV AP", "max_drop": self.max_drop, "frames": len(self.scorer.frames),
                "fp32_ap": round(self.fp32_ap, 3), "int8_ap": round(ap, 3)}


def _quantize_graph(core, recipe, contract, graph: str, onnx: Path, calib_dir: Path, manifest: Dict,
                    out: Path, target_device: Optional[str], control: Optional["AccuracyControl"] = None) -> Dict:
    spec = contract[source_graph(recipe, graph)]
    model = read_graph(core, onnx, spec)
    fp32_path = out / f"{onnx.stem}.xml"
    save_ir(model, fp32_path, compress_to_fp16=False)
    files = frame_files(calib_dir, manifest, graph, "calibration")
    int8_path = out / f"{recipe.quantize.graphs[graph].ir}.xml"
    start = time.perf_counter()
    keep_fp32 = kept_fp32(recipe, graph)
    # A graph the recipe keeps FP32 never reaches NNCF: what NNCF would do with it differs between versions (2.13
    # quantized two ops of the V2X PFE that newer versions leave alone).
    if keep_fp32:
        quantized = model
    elif control is not None:
        quantized = control.quantize(model, recipe, graph, files, target_device)
    else:
        quantized = _nncf_quantize(model, recipe, graph, files, target_device)
    seconds = time.perf_counter() - start
    _check_rules(recipe, graph, quantized, int8_path)
    fake_quantize = count_fake_quantize(quantized)
    if not fake_quantize:
        pin_f32(quantized)   # nothing was quantized: it stays an FP32 graph, which must not run in bf16
    save_ir(quantized, int8_path, compress_to_fp16=bool(recipe.quantize.compress_to_fp16))
    check_ports(core.read_model(str(int8_path)), spec, int8_path)
    accuracy = {} if control is None or keep_fp32 else \
        {"accuracy_control": control.record(core, graph, quantized, fake_quantize)}
    return {**accuracy, "onnx": onnx.name, "fp32_ir": fp32_path.name, "int8_ir": int8_path.name,
            "precision": "fp32" if keep_fp32 else "int8",
            "calibration_frames": 0 if keep_fp32 else len(files),
            "subset_size": 0 if keep_fp32 else min(recipe.quantize.subset_size or len(files), len(files)),
            "fake_quantize_ops": fake_quantize, "quantized_types": quantized_types(quantized),
            "inference_precision": pinned_hint(quantized) or "default",
            "nncf_seconds": round(seconds, 2),
            **({} if keep_fp32 else {"settings": graph_settings(recipe, graph)}),
            "ignored_types": list(recipe.quantize.graphs[graph].get("ignored_types") or [])}


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs each algorithm step and draws progress bars on stdout; bevport reports one line per graph."""
    import nncf  # noqa: F401  (nncf sets its logger's level on import: import first, then override)

    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        logger.setLevel(level)


def quantize(recipe, onnx_dir: os.PathLike, calib_dir: os.PathLike, out: os.PathLike,
             target_device: Optional[str] = None, report: bool = True, latency_runs: Optional[int] = None,
             max_ap_drop: Optional[float] = None, data: Optional[os.PathLike] = None, ap_frames: int = 50,
             ap_first_frame: Optional[int] = None,
             progress: Callable[[str], None] = lambda msg: None,
             warn: Callable[[str], None] = lambda msg: None) -> Dict:
    """FP32 and INT8 IRs of every graph in `out`, plus quantize.json and the report. Returns the summary.

    With `max_ap_drop`, each graph is quantized under NNCF's accuracy control, scored by AP on `ap_frames` labelled
    frames of `data` (default: the synthetic scenes the calibration used) from `ap_first_frame` (default: the first
    frame after the calibration set's)."""
    with contextlib.ExitStack() as stack:
        control = None
        if max_ap_drop is not None:
            control = _accuracy_control(stack, recipe, onnx_dir, calib_dir, max_ap_drop, data, ap_frames,
                                        ap_first_frame, progress, warn)
        return _quantize(recipe, onnx_dir, calib_dir, out, target_device, report, latency_runs, control, progress,
                         warn)


def _accuracy_control(stack, recipe, onnx_dir, calib_dir, max_ap_drop, data, ap_frames, first, progress, warn):
    from bevport.formats import dataset_or_synthetic
    from bevport.quantize.accuracy import APScorer, labelled_frames
    from bevport.runtime.pipeline import pipeline_class

    if max_ap_drop < 0 or ap_frames < 1:
        raise QuantizeError(f"--max-ap-drop ({max_ap_drop}) must be >= 0 and --ap-frames ({ap_frames}) >= 1")
    contract = build_contract(recipe)
    manifest = load_manifest(calib_dir, recipe)
    first = len(manifest["frames"]) if first is None else first
    progress("compiling the FP32 graphs for the AP runs")
    pipeline = pipeline_class(recipe).from_files(recipe, contract, onnx_files(recipe, contract, Path(onnx_dir)),
                                                 precision="f32")
    seed = manifest["dataset"].get("seed") or 0
    dataset, _ = stack.enter_context(dataset_or_synthetic(recipe, data, None, first + ap_frames, seed, progress, warn))
    frames = labelled_frames(recipe, pipeline, dataset, first, ap_frames, progress, warn)
    return AccuracyControl(APScorer(recipe, contract, pipeline.compiled, dataset, frames), max_ap_drop, progress)


def _quantize(recipe, onnx_dir, calib_dir, out, target_device, report, latency_runs, control, progress,
              warn) -> Dict:
    import openvino as ov

    from bevport.quantize.report import write_report

    contract = build_contract(recipe)
    manifest = load_manifest(calib_dir, recipe)
    files = onnx_files(recipe, contract, Path(onnx_dir))
    current = {path.name: sha256_file(path) for path in files.values()}
    if current != manifest["onnx"]["files"]:
        changed = sorted(name for name in current if manifest["onnx"]["files"].get(name) != current[name])
        raise QuantizeError(f"{calib_dir} was calibrated with other graphs than those in {onnx_dir} "
                            f"(differs: {', '.join(changed)})", "run `bevport calibrate` again on this ONNX folder")
    if manifest.get("warning"):
        warn(manifest["warning"])
    core = ov.Core()
    with atomic_output_dir(out) as tmp:
        graphs = {}
        for graph in recipe.quantize.graphs:
            source = source_graph(recipe, graph)
            frames = len(frame_files(calib_dir, manifest, graph, "calibration"))
            progress(f"keeping {graph} FP32 ({files[source].name}; recipe)" if kept_fp32(recipe, graph) else
                     f"quantizing {graph} ({files[source].name}) on {frames} calibration frames")
            graphs[graph] = _quantize_graph(core, recipe, contract, graph, files[source], Path(calib_dir),
                                            manifest, tmp, target_device, control)
        for entry in graphs.values():
            entry["files"] = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                              for p in sorted(tmp.iterdir()) if p.stem in (Path(entry["fp32_ir"]).stem,
                                                                          Path(entry["int8_ir"]).stem)}
        artifacts = copy_artifacts(Path(onnx_dir), tmp)
        summary = {
            "bevport_version": __version__,
            "recipe": recipe.name,
            "onnx": {"files": current},
            "calibration": {"folder": str(calib_dir), "sha256": manifest["sha256"],
                            "synthetic": manifest["dataset"]["synthetic"], "warning": manifest.get("warning")},
            "settings": {"target_device": str(target_device or recipe.quantize.target_device).upper(),
                         "preset": recipe.quantize.preset, "fast_bias_correction": recipe.quantize.fast_bias_correction,
                         "compress_to_fp16": recipe.quantize.compress_to_fp16,
                         "max_ap_drop": None if control is None else control.max_drop},
            "versions": {"nncf": _version("nncf"), "openvino": ov.get_version()},
            "graphs": graphs,
            "artifacts": artifacts,
        }
        (tmp / "quantize.json").write_text(json.dumps(summary, indent=2) + "\n")
        if report:
            start = time.perf_counter()
            write_report(recipe, contract, tmp, Path(calib_dir), manifest, summary, progress=progress,
                         latency_runs=latency_runs)
            summary["report_seconds"] = round(time.perf_counter() - start, 2)
            (tmp / "quantize.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def copy_artifacts(onnx_dir: Path, out: Path) -> Dict[str, str]:
    """Export's artifacts (arrays the runtime reads beside the graphs, listed in export.json) copied into `out`,
    each checked against the sha256 export recorded; {file: sha256}."""
    summary = onnx_dir / "export.json"
    listed = json.loads(summary.read_text()).get("artifacts", {}) if summary.is_file() else {}
    copied = {}
    for name, digest in listed.items():
        source = onnx_dir / name
        if not source.is_file() or sha256_file(source) != digest:
            raise QuantizeError(f"{source}: missing or changed since export (export.json records {digest[:12]}...)",
                                "export again, or keep the export folder as export left it")
        shutil.copyfile(source, out / name)
        copied[name] = digest
    return copied


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return "unknown"
