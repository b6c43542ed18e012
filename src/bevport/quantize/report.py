"""The quantization report: FP32-vs-INT8 drift on held-out frames, latency of each IR on this host, file sizes.

The reference is the FP32 IR compiled with INFERENCE_PRECISION_HINT=f32. Beside INT8, the report also measures the
FP32 IR at the device's default precision (bf16 on CPUs with AMX or AVX512-BF16), because that is what a deployment
that never forces f32 gets, and the INT8 IR with the f32 hint, which isolates the INT8 error from bf16's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from bevport.quantize.calibrate import frame_files, load_feed
from bevport.runtime.drift import Drift
from bevport.runtime.graphs import compile_graph, read_graph, source_graph

# (label, IR kind, precision hint): the variants measured per graph, the first being the drift reference.
VARIANTS = (("fp32 (f32)", "fp32", "f32"), ("fp32 (default)", "fp32", "default"),
            ("int8 (default)", "int8", "default"), ("int8 (f32)", "int8", "f32"))
REFERENCE = VARIANTS[0][0]
FLAGGED = "int8 (default)"


def _latency_ms(compiled, feed: Dict[str, np.ndarray], runs: int) -> Dict[str, float]:
    request = compiled.create_infer_request()
    for name, value in feed.items():
        request.set_tensor(name, _tensor(value))
    request.infer()  # warm-up: first inference allocates
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs}


def _tensor(value: np.ndarray):
    import openvino as ov

    return ov.Tensor(np.ascontiguousarray(value))


def _graph_report(core, spec, paths: Dict[str, Path], feeds: List[Path], runs: int, device: str) -> Dict:
    compiled = {label: compile_graph(core, read_graph(core, paths[kind], spec), device, hint)
                for label, kind, hint in VARIANTS}
    drift = {label: {t.name: Drift() for t in spec.outputs} for label, _, _ in VARIANTS[1:]}
    for path in feeds:
        feed = load_feed(path)
        outs = {label: compiled[label].infer_new_request(feed) for label in compiled}
        for t in spec.outputs:
            ref = outs[REFERENCE][compiled[REFERENCE].output(t.name)]
            for label in drift:
                drift[label][t.name].add(ref, outs[label][compiled[label].output(t.name)])
    first = load_feed(feeds[0])
    latency = {label: _latency_ms(compiled[label], first, runs) for label, _, _ in VARIANTS[:3]}
    return {
        "outputs": {t.name: {label: drift[label][t.name].summary() for label in drift} for t in spec.outputs},
        "latency": latency,
        "int8_speedup_vs_fp32_f32": latency[REFERENCE]["median_ms"] / latency[FLAGGED]["median_ms"],
    }


def _sizes(folder: Path, stem: str) -> int:
    return sum((folder / f"{stem}{ext}").stat().st_size for ext in (".xml", ".bin"))


def build_report(recipe, contract, ir_dir: Path, calib_dir: Path, manifest: Dict, summary: Dict,
                 device: str = "CPU", latency_runs: Optional[int] = None,
                 progress: Callable[[str], None] = lambda msg: None) -> Dict:
    import openvino as ov

    core = ov.Core()
    runs = latency_runs or recipe.quantize.report.latency_runs
    threshold = recipe.quantize.report.min_snr_db
    graphs, flags = {}, []
    for graph, entry in summary["graphs"].items():
        progress(f"report: {graph} on {sum(f['role'] == 'holdout' for f in manifest['frames'])} held-out frames")
        spec = contract[source_graph(recipe, graph)]
        paths = {"fp32": ir_dir / entry["fp32_ir"], "int8": ir_dir / entry["int8_ir"]}
        report = _graph_report(core, spec, paths, frame_files(calib_dir, manifest, graph, "holdout"), runs, device)
        report["bytes"] = {"fp32": _sizes(ir_dir, paths["fp32"].stem), "int8": _sizes(ir_dir, paths["int8"].stem)}
        report["fake_quantize_ops"] = entry["fake_quantize_ops"]
        for name, variants in report["outputs"].items():
            snr = variants[FLAGGED]["snr_db"]
            if snr is not None and snr < threshold:
                flags.append(f"{graph}/{name}: INT8 SNR {variants[FLAGGED]['snr_db']:.1f} dB < {threshold:g} dB")
        graphs[graph] = report
    return {
        "recipe": recipe.name,
        "device": device,
        "device_name": core.get_property(device, "FULL_DEVICE_NAME"),
        "reference": f"FP32 IR with INFERENCE_PRECISION_HINT=f32 on {device}",
        "heldout_frames": [f["id"] for f in manifest["frames"] if f["role"] == "holdout"],
        "calibration_frames": sum(f["role"] == "calibration" for f in manifest["frames"]),
        "synthetic_calibration": bool(manifest["dataset"]["synthetic"]),
        "warning": manifest.get("warning"),
        "min_snr_db": threshold,
        "flags": flags,
        "graphs": graphs,
    }


def report_markdown(report: Dict, latency: bool = True, note: Optional[str] = None) -> str:
    """The report as markdown: the drift table, latency and size per graph (sizes only with latency=False, for a
    report whose timings were taken out), the flags, then `note` if given. Fields a report read back from disk may
    lack are shown as None / nan rather than raising."""
    frames = report.get("heldout_frames") or []
    lines = [f"# Quantization report: {report.get('recipe')}", ""]
    if report.get("warning"):
        lines += [f"> **WARNING: {report['warning']}**", ""]
    lines += [f"Reference: {report.get('reference')} ({report.get('device_name')}). Drift over {len(frames)} held-out "
              f"frames ({', '.join(map(str, frames))}), never used for calibration "
              f"({report.get('calibration_frames')} frames).", ""]
    lines += ["## Drift against FP32 (f32)", "",
              "| graph | output | variant | cosine | SNR (dB) | max abs error |", "|---|---|---|---:|---:|---:|"]
    graphs = report.get("graphs") or {}
    for graph, g in graphs.items():
        for name, variants in (g.get("outputs") or {}).items():
            for label, m in variants.items():
                snr = "identical" if m.get("snr_db") is None else f"{m['snr_db']:.1f}"
                lines.append(f"| {graph} | {name} | {label} | {m.get('cosine', float('nan')):.6f} | {snr} | "
                             f"{m.get('max_abs_error', float('nan')):.3g} |")
    title, head, rule = "## Size", "| graph |", "|---|"
    if latency:
        title = f"## Latency on {report.get('device')} (median ms) and size"
        head += " FP32 (default) | FP32 (f32) | INT8 | INT8 speed-up vs f32 |"
        rule += "---:|---:|---:|---:|"
    lines += ["", title, "", head + " FakeQuantize ops | FP32 MB | INT8 MB |", rule + "---:|---:|---:|"]
    for graph, g in graphs.items():
        row = f"| {graph} |"
        if latency:
            lat = g["latency"]
            row += (f" {lat['fp32 (default)']['median_ms']:.1f} | {lat['fp32 (f32)']['median_ms']:.1f} | "
                    f"{lat['int8 (default)']['median_ms']:.1f} | {g['int8_speedup_vs_fp32_f32']:.2f}x |")
        size = g.get("bytes") or {}
        lines.append(f"{row} {g.get('fake_quantize_ops')} | {size.get('fp32', 0) / 1e6:.1f} | "
                     f"{size.get('int8', 0) / 1e6:.1f} |")
    threshold = report.get("min_snr_db")
    threshold = f"{threshold:g}" if isinstance(threshold, (int, float)) else threshold
    lines += ["", "## Flags", ""]
    lines += [f"- {flag}" for flag in report.get("flags") or []] or \
             [f"None: every INT8 output is at or above {threshold} dB SNR."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _plot(report: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _, _ in VARIANTS[1:]]
    rows = [(f"{g}/{name}", variants) for g, r in report["graphs"].items() for name, variants in r["outputs"].items()]
    fig, (ax_snr, ax_lat) = plt.subplots(1, 2, figsize=(14, 0.35 * len(rows) + 2.5),
                                         gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))
    for i, label in enumerate(labels):
        snr = [150.0 if v[label]["snr_db"] is None else min(v[label]["snr_db"], 150.0) for _, v in rows]
        ax_snr.barh(y + (i - 1) * 0.27, snr, height=0.27, label=label)
    ax_snr.axvline(report["min_snr_db"], color="red", linestyle="--", label=f"threshold {report['min_snr_db']:g} dB")
    ax_snr.set_yticks(y)
    ax_snr.set_yticklabels([name for name, _ in rows], fontsize=8)
    ax_snr.invert_yaxis()
    ax_snr.set_xlabel("SNR vs FP32 (f32), dB (capped at 150)")
    ax_snr.legend(fontsize=8, loc="lower right")
    graphs = list(report["graphs"])
    x = np.arange(len(graphs))
    for i, label in enumerate(("fp32 (default)", "fp32 (f32)", "int8 (default)")):
        ax_lat.bar(x + (i - 1) * 0.27, [report["graphs"][g]["latency"][label]["median_ms"] for g in graphs],
                   width=0.27, label=label)
    ax_lat.set_xticks(x)
    ax_lat.set_xticklabels(graphs)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel(f"median latency on {report['device']}, ms (log)")
    ax_lat.legend(fontsize=8)
    title = f"{report['recipe']}: INT8 vs FP32 on {len(report['heldout_frames'])} held-out frames"
    fig.suptitle(title + ("  [SYNTHETIC CALIBRATION]" if report["synthetic_calibration"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_report(recipe, contract, ir_dir: Path, calib_dir: Path, manifest: Dict, summary: Dict,
                 progress: Callable[[str], None] = lambda msg: None, latency_runs: Optional[int] = None,
                 device: str = "CPU") -> Dict:
    """report.json, report.md and report.png in `ir_dir`."""
    report = build_report(recipe, contract, ir_dir, calib_dir, manifest, summary, device, latency_runs, progress)
    (ir_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (ir_dir / "report.md").write_text(report_markdown(report))
    _plot(report, ir_dir / "report.png")
    return report
