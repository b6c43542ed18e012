"""Which NNCF settings keep the INT8 bundle's accuracy: AP of the all-INT8 pipeline per graph and candidate, to JSON.

    python benchmarks/int8_tuning.py [--work work/accuracy] [--frames 60] [--out benchmarks/results/int8_tuning.json]

Reuses `benchmarks/accuracy.py`'s work folder (the trained demo checkpoint's ONNX, its calibration set, its INT8
bundle made with the recipe's settings, and the held-out scenes of seed 2000). For every graph the recipe quantizes
and every candidate setting, NNCF quantizes the graph in this process and its model replaces the bundle's in the
otherwise unchanged all-INT8 pipeline (quantization errors compound across graphs, so each candidate is judged in
the whole INT8 bundle); bevport's KITTI R40 evaluator scores the held-out frames (`bevport.quantize.accuracy`).
The FP32 pipeline (f32) and the bundle as made are scored too. The recipe's choice per graph comes from this table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from export import host  # benchmarks/export.py

CANDIDATES = {
    "fast bias correction": {"fast_bias_correction": True},
    "mixed preset": {"preset": "mixed"},
}


def per_class(ap: dict) -> dict:
    return {cls: {"AP_BEV": round(v["moderate"]["AP_BEV"], 2), "AP_3D": round(v["moderate"]["AP_3D"], 2)}
            for cls, v in ap["classes"].items()}


def main() -> None:
    import nncf
    import openvino as ov

    from bevport.contract import build_contract
    from bevport.formats import dataset_format
    from bevport.quantize.accuracy import APScorer, labelled_frames
    from bevport.quantize.calibrate import frame_files, load_feed, load_manifest, onnx_files
    from bevport.quantize.ptq import _quiet_nncf, graph_settings, kept_fp32
    from bevport.recipe import load_recipe
    from bevport.runtime.graphs import compile_graph, read_graph, source_graph
    from bevport.runtime.pipeline import pipeline_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="v2xfusion-pp-r34")
    parser.add_argument("--work", type=Path, default=Path("work/accuracy"))
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_tuning.json"))
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    contract = build_contract(recipe)
    onnx = onnx_files(recipe, contract, args.work / "onnx")
    calib = args.work / "calib"
    manifest = load_manifest(calib, recipe)
    pipeline = pipeline_class(recipe).from_files(recipe, contract, onnx, precision="f32")
    dataset = dataset_format(recipe).open_dataset(recipe, args.work / "eval-scenes")
    frames = labelled_frames(recipe, pipeline, dataset, 0, args.frames)
    fp32_mean, fp32_ap = APScorer(recipe, contract, pipeline.compiled, dataset, frames).score(details=True)
    print(f"FP32: {fp32_mean:.2f}", file=sys.stderr)
    core = ov.Core()
    bundle = args.work / "bundle"
    int8 = {g: compile_graph(core, core.read_model(str(bundle / f"{recipe.quantize.graphs[g].ir}.xml")), "CPU",
                             "default") for g in recipe.quantize.graphs}
    scorer = APScorer(recipe, contract, int8, dataset, frames)
    made_mean, made_ap = scorer.score(details=True)
    print(f"INT8 bundle as made: {made_mean:.2f}", file=sys.stderr)
    results = {}
    for graph in recipe.quantize.graphs:
        if kept_fp32(recipe, graph):
            continue
        files = frame_files(calib, manifest, graph, "calibration")
        results[graph] = {}
        for name, change in CANDIDATES.items():
            settings = dict(graph_settings(recipe, graph), **change)
            model = read_graph(core, onnx[source_graph(recipe, graph)], contract[source_graph(recipe, graph)])
            start = time.perf_counter()
            with _quiet_nncf():
                quantized = nncf.quantize(model, nncf.Dataset(files, load_feed), subset_size=len(files),
                                          target_device=getattr(nncf.TargetDevice, str(recipe.quantize.target_device)),
                                          preset=getattr(nncf.QuantizationPreset, settings["preset"].upper()),
                                          fast_bias_correction=settings["fast_bias_correction"])
            seconds = time.perf_counter() - start
            mean, ap = scorer.score({graph: compile_graph(core, quantized, "CPU", "default")}, details=True)
            results[graph][name] = {"settings": settings, "mean_ap": round(mean, 2),
                                    "gain_over_bundle": round(mean - made_mean, 2), "classes": per_class(ap),
                                    "nncf_seconds": round(seconds, 1)}
            print(f"{graph:>8} {name:>24}: {mean:.2f} ({mean - made_mean:+.2f} over the bundle)", file=sys.stderr)
    out = {"benchmark": f"INT8 settings per graph, scored by mean moderate BEV AP on {args.frames} held-out "
                        "synthetic frames (seed 2000), all graphs INT8, one graph's settings changed at a time",
           "calibration_frames": len(frame_files(calib, manifest, next(iter(results)), "calibration")),
           "fp32": {"mean_ap": round(fp32_mean, 2), "classes": per_class(fp32_ap)},
           "int8_bundle": {"settings": {g: graph_settings(recipe, g) for g in results},
                           "mean_ap": round(made_mean, 2), "classes": per_class(made_ap)},
           "graphs": results, "host": host()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
