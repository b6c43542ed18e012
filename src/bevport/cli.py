"""The `bevport` command: quiet on success, one precise message on failure (exit 1), progress only on a terminal."""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from rich.console import Console

from bevport import __version__
from bevport.errors import BevportError
from bevport.recipe import DEFAULT_RECIPE

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


class _Progress:
    """A spinner line on a terminal; plain timestamped lines in CI logs (or nothing with --quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.status = None
        self.start = time.monotonic()

    def __enter__(self):
        if not self.quiet and console.is_terminal:
            self.status = console.status("")
            self.status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if self.status is not None:
            self.status.update(message)
        elif not self.quiet:
            console.print(f"[{time.monotonic() - self.start:6.1f}s] {message}")

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)


def _load_recipe(args):
    """The recipe of --recipe; without it, a release bundle's own (its recipe.yaml), else the default. A --recipe that
    is not the bundle's is refused by name."""
    from bevport.recipe import load_recipe

    bundled = _bundle_recipe(getattr(args, "bundle", None))
    if args.recipe is None:
        return load_recipe(bundled[1] if bundled else DEFAULT_RECIPE, args.config)
    recipe = load_recipe(args.recipe, args.config)
    if bundled and bundled[0] != recipe.name:
        from bevport.errors import RecipeError

        raise RecipeError(f"{args.bundle} is a bundle of recipe `{bundled[0]}`, --recipe gives `{recipe.name}`",
                          f"leave --recipe out (the bundle's recipe.yaml is used) or pass --recipe {bundled[0]}")
    return recipe


def _bundle_recipe(bundle: Optional[Path]) -> Optional[Tuple[str, Path]]:
    """(recipe name, recipe.yaml) of a release bundle folder, None for anything else (e.g. a quantize folder)."""
    import json

    if bundle is None or not (Path(bundle) / "recipe.yaml").is_file() or not (Path(bundle) / "manifest.json").is_file():
        return None
    try:
        name = json.loads((Path(bundle) / "manifest.json").read_text()).get("recipe")
    except (OSError, ValueError):
        return None
    return (str(name), Path(bundle) / "recipe.yaml") if name else None


def _config_in_tree(args) -> None:
    """A relative --config names a file of the --source tree (the training scripts run from its root) unless it
    exists as given."""
    source, config = getattr(args, "source", None), args.config
    if source is not None and str(source) == "pinned":
        from bevport.reference import resolve_source

        source = resolve_source(source, _load_recipe(argparse.Namespace(**dict(vars(args), config=None))))
    if source is not None and config is not None and not config.is_absolute() and not config.exists():
        args.config = Path(source) / config


def _reference(args, recipe, progress):
    from bevport.reference import load_reference

    if args.source is None:
        raise BevportError("--backend reference needs --source: the training tree whose modules are exported",
                           "pass --source /path/to/the/training/repository")
    if args.sparsity:
        raise BevportError("--sparsity applies to bevport's native model only",
                           "a reference export takes the weights as the training tree's model loads them")
    return load_reference(recipe, args.source, args.config, args.ckpt, progress)


def cmd_export(args) -> None:
    from bevport.export.onnx_export import export

    _config_in_tree(args)
    recipe = _load_recipe(args)
    with _Progress(args.quiet) as progress:
        reference = _reference(args, recipe, progress) if args.backend == "reference" else None
        summary = export(recipe, args.ckpt, args.out, sparsity=args.sparsity, progress=progress, warn=_warn,
                         reference=reference)
    if not args.quiet:
        _print_export_summary(summary, Path(args.out))


def cmd_parity(args) -> None:
    from rich.table import Table

    from bevport.reference.parity import reference_parity, summary_rows

    _config_in_tree(args)
    recipe = _load_recipe(args)
    with _Progress(args.quiet) as progress:
        report = reference_parity(recipe, args.ckpt, args.source, args.config, args.out, onnx=args.onnx,
                                  seed=args.seed, data=args.data, frames=args.frames, split=args.split,
                                  progress=progress, warn=_warn)
    if args.quiet:
        return
    table = Table(box=None, pad_edge=False)
    for column in ("graph", "output", "OpenVINO", "bound", "native f64"):
        table.add_column(column, justify="left" if column in ("graph", "output") else "right")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    standins = [f"{m.rsplit('.', 1)[1]}.{fn} x{n}" for m, e in report["reference"]["extensions"].items()
                for fn, n in e["calls"].items()]
    console.print(f"all outputs within bounds; stand-ins called: {', '.join(standins) or 'none'}; report: {args.out}")


def _print_export_summary(summary, out: Path) -> None:
    import json

    from rich.table import Table

    parity = json.loads((out / "parity.json").read_text())["graphs"]
    table = Table(box=None, pad_edge=False)
    table.add_column("graph")
    table.add_column("size", justify="right")
    table.add_column("parity (max rel. error)", justify="right")
    for key, report in parity.items():
        worst = max(o["max_rel_error"] for o in report["outputs"].values())
        size = (out / report["file"]).stat().st_size
        table.add_row(report["file"], f"{size / 1e6:.1f} MB", f"{worst:.1e}")
    Console(highlight=False).print(table)
    Console(highlight=False).print(f"[green]exported[/] {len(parity)} graphs of {summary['recipe']} to {out}")


def cmd_synth_ckpt(args) -> None:
    from bevport.models.synthetic import write_synthetic_checkpoint

    recipe = _load_recipe(args)
    if args.trained and args.seed is not None and args.seed != recipe.train.base_seed:
        raise BevportError(f"--trained composes the demo weights over seed {recipe.train.base_seed}, not {args.seed}",
                           "drop --seed, or drop --trained for seeded random weights")
    seed = recipe.train.base_seed if args.trained else (args.seed or 0)
    what = "trained demo weights over seed" if args.trained else "seeded random weights, seed"
    with _Progress(args.quiet) as progress:
        progress(f"{what} {seed}: drawing weights and measuring BatchNorm statistics")
        write_synthetic_checkpoint(recipe, seed, args.out, trained=args.trained)
    if not args.quiet:
        Console(highlight=False).print(f"[green]wrote[/] synthetic {recipe.name} checkpoint ({what} {seed}) "
                                       f"to {args.out}")


def cmd_synth_data(args) -> None:
    from bevport.formats import dataset_format

    recipe = _load_recipe(args)
    with _Progress(args.quiet) as progress:
        dataset_format(recipe).write_synthetic(args.out, args.frames, args.seed, overwrite=args.overwrite,
                                               progress=lambda done, total: progress(f"scene {done}/{total}"))
    if not args.quiet:
        Console(highlight=False).print(f"[green]wrote[/] {args.frames} synthetic scenes (seed {args.seed}) "
                                       f"in the {recipe.dataset.format} layout to {args.out}")


def cmd_calibrate(args) -> None:
    from bevport.quantize.calibrate import calibrate

    recipe = _load_recipe(args)
    if args.intensity_scale is not None:
        recipe = recipe.updated({"input": {"intensity_scale": args.intensity_scale}})
    with _Progress(args.quiet) as progress:
        manifest = calibrate(recipe, args.onnx, args.data, args.out, num_samples=args.num_samples,
                             holdout=args.holdout, split=args.split, on_bad_frame=args.on_bad_frame,
                             seed=args.seed, progress=progress, warn=_warn)
    if manifest["warning"]:
        _loud(manifest["warning"])
    if not args.quiet:
        roles = [f["role"] for f in manifest["frames"]]
        Console(highlight=False).print(
            f"[green]calibration set[/] {args.out}: {roles.count('calibration')} calibration + "
            f"{roles.count('holdout')} held-out frames, {len(manifest['skipped'])} skipped")


def _loud(message: str) -> None:
    console.print(f"[bold white on red] {message.upper()} [/]")


def cmd_quantize(args) -> None:
    import json

    from bevport.quantize.ptq import quantize

    recipe = _load_recipe(args)
    with _Progress(args.quiet) as progress:
        summary = quantize(recipe, args.onnx, args.calib, args.out, target_device=args.target_device,
                           latency_runs=args.latency_runs, max_ap_drop=args.max_ap_drop, data=args.data,
                           ap_frames=args.ap_frames, ap_first_frame=args.ap_first_frame, progress=progress,
                           warn=_warn)
    report = json.loads((Path(args.out) / "report.json").read_text())
    for flag in report["flags"]:
        _warn(f"low INT8 SNR: {flag}")
    if summary["calibration"]["warning"]:
        _loud(summary["calibration"]["warning"])
    if not args.quiet:
        _print_quantize_summary(report, Path(args.out))


def _print_quantize_summary(report, out: Path) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("graph", "worst INT8 SNR", "FP32 ms (default)", "FP32 ms (f32)", "INT8 ms", "INT8 MB"):
        table.add_column(column, justify="left" if column == "graph" else "right")
    for graph, g in report["graphs"].items():
        snrs = [v["int8 (default)"]["snr_db"] for v in g["outputs"].values()]
        worst = min((s for s in snrs if s is not None), default=None)
        lat = g["latency"]
        table.add_row(graph, "identical" if worst is None else f"{worst:.1f} dB",
                      f"{lat['fp32 (default)']['median_ms']:.1f}", f"{lat['fp32 (f32)']['median_ms']:.1f}",
                      f"{lat['int8 (default)']['median_ms']:.1f}", f"{g['bytes']['int8'] / 1e6:.1f}")
    Console(highlight=False).print(table)
    Console(highlight=False).print(f"[green]quantized[/] {len(report['graphs'])} graphs to {out} "
                                   f"(report: {out / 'report.md'})")


def _runtime_options(args, recipe):
    from bevport.runtime.infer import DEFAULT_CACHE, RuntimeOptions, graph_precisions

    only = [g.strip() for g in (args.int8_graphs or "").split(",") if g.strip()]
    int8 = graph_precisions(recipe, args.int8, args.fp32, only)
    return RuntimeOptions(device=args.device, int8=int8, inference_precision=args.inference_precision,
                          cache_dir=None if args.no_cache else (args.cache_dir or DEFAULT_CACHE),
                          channel_order=args.channel_order, throughput=getattr(args, "throughput", False),
                          deploy_cap=args.deploy_cap)


def cmd_infer(args) -> None:
    from bevport.runtime.infer import run_infer

    recipe = _load_recipe(args)
    with _Progress(args.quiet) as progress:
        summary = run_infer(recipe, args.bundle, args.data, _runtime_options(args, recipe), num_samples=args.num_samples,
                            split=args.split, pred_dir=args.pred_dir, vis_dir=args.vis_dir, video=args.video,
                            on_bad_frame=args.on_bad_frame, first_frame=args.first_frame,
                            timing_in_pictures=not args.no_timing, progress=progress, warn=_warn)
    if not args.quiet:
        frame = summary["seconds"]["frame"]["median_ms"]
        stages = ", ".join(f"{k} {v['precision']}" for k, v in summary["stages"].items())
        Console(highlight=False).print(f"[green]ran[/] {len(summary['frames'])} frames on {summary['device']} "
                                       f"({stages}): median {frame:.0f} ms per frame")


def cmd_validate(args) -> None:
    from bevport.runtime.validate import run_validate

    recipe = _load_recipe(args)
    out = args.out or Path(args.bundle) / "validate.json"
    with _Progress(args.quiet) as progress:
        report = run_validate(recipe, args.bundle, args.data, _runtime_options(args, recipe), out,
                              num_samples=args.num_samples or 4, split=args.split, report_only=args.report_only,
                              first_frame=args.first_frame,
                              progress=progress, warn=_warn)
    if not args.quiet:
        boxes = report["boxes"]
        worst = min((m["snr_db"] for g in report["drift"].values() for m in g.values() if m["snr_db"] is not None),
                    default=None)
        verdict = "[green]valid[/]" if report["passed"] else "[yellow]reported[/]"
        Console(highlight=False).print(
            f"{verdict} on {report['device']}: {len(report['compile'])} graphs compile; worst INT8 output SNR "
            f"{'n/a' if worst is None else f'{worst:.1f} dB'}; INT8 finds {boxes['matched_fraction']:.0%} of "
            f"{boxes['reference_boxes']} FP32 boxes -> {out}")


def cmd_bench(args) -> None:
    import json

    from bevport.runtime.bench import run_bench

    recipe = _load_recipe(args)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    from bevport.runtime.bench import PRECISIONS

    if not precisions or any(p not in PRECISIONS for p in precisions):
        from bevport.errors import BevportError

        raise BevportError(f"--precision {args.precision}: expected a comma list of {', '.join(PRECISIONS)}")
    with _Progress(args.quiet) as progress:
        report = run_bench(recipe, args.bundle, args.data, _runtime_options(args, recipe), precisions,
                           frames=args.num_samples or 10, split=args.split, throughput_frames=args.throughput_frames,
                           first_frame=args.first_frame,
                           progress=progress, warn=_warn)
    out = args.out or Path(args.bundle) / "bench.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.quiet:
        _print_bench(report, out)


def _print_bench(report, out: Path) -> None:
    from rich.table import Table

    precisions = list(report["precisions"])
    table = Table(title=f"{report['recipe']} on {report['device']} ({report['device_name']})", box=None)
    table.add_column("stage (ms, median / p90)")
    for p in precisions:
        table.add_column(p, justify="right")
    stages = sorted({s for p in precisions for s in report["precisions"][p]["latency"]["stages"]},
                    key=lambda s: (s == "frame", s))
    for stage in stages:
        cells = []
        for p in precisions:
            m = report["precisions"][p]["latency"]["stages"].get(stage)
            cells.append(f"{m['median_ms']:.1f} / {m['p90_ms']:.1f}" if m else "-")
        table.add_row(stage, *cells)
    table.add_row("frames per second", *[f"{report['precisions'][p]['latency']['fps']:.2f}" for p in precisions])
    table.add_row("non-model share", *[f"{report['precisions'][p]['latency']['non_model_share']:.1%}"
                                       for p in precisions])
    for mode in ("stream", "throughput"):
        if all(mode in report["precisions"][p] for p in precisions):
            table.add_row(f"{mode} fps", *[f"{report['precisions'][p][mode]['fps']:.2f}" for p in precisions])
    Console(highlight=False).print(table)
    Console(highlight=False).print(f"peak RSS {report['peak_rss_mib']:.0f} MiB -> {out}")


def cmd_bundle(args) -> None:
    import os

    from bevport.bundle import archive_path, build_bundle, load_environment
    from bevport.fsutil import sha256_file

    recipe = _load_recipe(args)
    environment = load_environment(args.environment) if args.environment else None
    with _Progress(args.quiet) as progress:
        bundle = build_bundle(recipe, args.onnx, args.ir, args.dist, validate=args.validate, bench=args.bench,
                              vis_dir=args.vis, environment=environment, ap=args.ap, calib_dir=args.calib,
                              parity_reference=args.parity_reference, mtime=args.source_date_epoch, progress=progress, warn=_warn)
    if not args.quiet:
        archive = archive_path(bundle)
        out = Console(highlight=False, soft_wrap=True)
        out.print(f"bundle  {os.fspath(bundle)}")
        out.print(f"archive {os.fspath(archive)}")
        out.print(f"sha256  {sha256_file(archive)}")


def cmd_verify(args) -> None:
    from bevport.bundle import verify_bundle

    report = verify_bundle(args.path)
    if not args.quiet:
        Console(highlight=False, soft_wrap=True).print(f"ok: {report['files']} files verified ({report['name']})")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True,
                   help="folder with the graphs (`bevport quantize` output, or a release bundle)")
    p.add_argument("--data", type=Path, help="dataset root in the recipe's format (V2X: KITTI layout or DAIR-V2X-I; camera-only: nuScenes with an info .pkl); default: synthetic scenes")
    p.add_argument("--split", help="frames to take: ImageSets/<split>.txt (KITTI layout), or the info file of a nuScenes split (val, train or a .pkl path)")
    p.add_argument("--num-samples", type=int, help="frames to run (default: all; 8 synthetic without --data)")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, GPU.1, AUTO ...")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--int8", action="store_true", help="every stage INT8 (the default, as the deploy binary)")
    precision.add_argument("--fp32", action="store_true", help="every deploy graph FP32")
    precision.add_argument("--int8-graphs", metavar="GRAPH[,GRAPH]",
                           help="exactly these deploy graphs INT8, the others FP32 (e.g. camera,fuser; the recipe names them)")
    p.add_argument("--inference-precision", choices=("f32", "default"), default="f32",
                   help="FP32 graphs at f32 (default) or at the device's default (bf16 on AMX CPUs, f16 on GPUs)")
    p.add_argument("--channel-order", choices=("training", "deploy-binary"), default="training",
                   help="image channel order: the checkpoint's (BGR quirk) or what Intel's split binary feeds (RGB)")
    p.add_argument("--deploy-cap", action="store_true",
                   help="see only what the deploy binary binds (V2X: the first static-V pillars of a frame) instead "
                        "of every input the checkpoint's test-time code uses; for comparisons with the binary")
    p.add_argument("--cache-dir", type=Path, help="OpenVINO model cache (default ~/.cache/bevport/ov)")
    p.add_argument("--no-cache", action="store_true", help="do not cache compiled models")
    p.add_argument("--on-bad-frame", choices=("skip", "fail"), default="skip")
    p.add_argument("--first-frame", type=int, default=0,
                   help="start at this frame index (e.g. past the frames used for calibration)")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help=f"recipe name (recipes/<name>.yaml) or path (default: a release bundle's own, "
                                    f"else {DEFAULT_RECIPE})")
    p.add_argument("--config", type=Path, help="upstream torchpack training config to overlay on the recipe")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bevport", description="Convert BEV-fusion checkpoints into ONNX and INT8 OpenVINO deploy artifacts.")
    parser.add_argument("--version", action="version", version=f"bevport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("export", help="checkpoint -> the deploy graphs as ONNX, with an OpenVINO parity check")
    _add_recipe_args(p)
    p.add_argument("--ckpt", type=Path, required=True, help="training checkpoint (.pth)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced only on success)")
    p.add_argument("--sparsity", action="store_true", help="apply NVIDIA's 2:4 sparsity masks (sparsity checkpoints)")
    p.add_argument("--backend", choices=("native", "reference"), default="native",
                   help="native: bevport's model (default); reference: the --source tree's own modules (edited "
                        "architectures), exported to the same contract")
    p.add_argument("--source", type=Path, help="the training repository (its mmdet3d/ and configs/), for --backend "
                                               "reference; a relative --config is looked up in it")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("parity", help="bevport's graphs against the training tree's own modules (parity-reference.json)")
    _add_recipe_args(p)
    p.add_argument("--ckpt", type=Path, required=True, help="training checkpoint (.pth)")
    p.add_argument("--source", type=Path, required=True,
                   help="the training repository the checkpoint came from (its mmdet3d/ and configs/); `pinned`: "
                        "the upstream tree an export image built with --reference-sources pinned carries")
    p.add_argument("--onnx", type=Path, help="compare these graphs (a `bevport export` folder) instead of exporting")
    p.add_argument("--out", type=Path, default=Path("parity-reference.json"), help="report (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the graph inputs (default 0)")
    p.add_argument("--data", type=Path, help="also compare on the first frames of this dataset (the recipe's format), "
                                             "each graph on the inputs bevport's pipeline gives it")
    p.add_argument("--frames", type=int, default=2, help="dataset frames with --data (default %(default)s)")
    p.add_argument("--split", help="dataset split with --data (as for calibrate)")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("synth-ckpt", help="write a deterministic synthetic checkpoint in the upstream layout")
    _add_recipe_args(p)
    p.add_argument("--seed", type=int, help="seed of the random weights (default 0)")
    p.add_argument("--trained", action="store_true",
                   help="the built-in demo weights: the recipe's trained tensors over its seeded checkpoint")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.set_defaults(func=cmd_synth_ckpt)

    p = sub.add_parser("synth-data", help="write deterministic synthetic scenes in the recipe's dataset layout")
    _add_recipe_args(p)
    p.add_argument("--frames", type=int, default=8, help="number of scenes (default 8)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    p.set_defaults(func=cmd_synth_data)

    p = sub.add_parser("calibrate", help="run the FP32 graphs over dataset frames and store each graph's inputs")
    _add_recipe_args(p)
    p.add_argument("--onnx", type=Path, required=True, help="a `bevport export` output folder")
    p.add_argument("--data", type=Path, help="dataset root in the recipe's format (V2X: KITTI layout or DAIR-V2X-I; camera-only: nuScenes with an info .pkl); default: synthetic scenes")
    p.add_argument("--split", help="frames to take: ImageSets/<split>.txt (KITTI layout), or the info file of a nuScenes split (val, train or a .pkl path)")
    p.add_argument("--num-samples", type=int, help="calibration frames (default: the recipe's, 300)")
    p.add_argument("--holdout", type=int, help="held-out frames for the report (default: the recipe's)")
    p.add_argument("--on-bad-frame", choices=("skip", "fail"), default="skip",
                   help="skip an unreadable frame with a warning (default) or stop")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes when --data is not given")
    p.add_argument("--intensity-scale", type=float,
                   help="multiply point intensity as read (255 for datasets converted to 0-1; default: the recipe's)")
    p.add_argument("--out", type=Path, required=True, help="calibration set folder (replaced only on success)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("quantize", help="NNCF INT8 quantization of every graph + FP32 IRs + a drift report")
    _add_recipe_args(p)
    p.add_argument("--onnx", type=Path, required=True, help="the `bevport export` folder the set was made from")
    p.add_argument("--calib", type=Path, required=True, help="a `bevport calibrate` output folder")
    p.add_argument("--target-device", choices=("ANY", "CPU", "GPU", "NPU", "CPU_SPR"),
                   help="NNCF target device (default: the recipe's)")
    p.add_argument("--latency-runs", type=int, help="timed inferences per graph and precision in the report")
    p.add_argument("--max-ap-drop", type=float, metavar="AP",
                   help="NNCF accuracy control: keep FP32 the quantizers that cost more than AP points of mean moderate "
                        "BEV AP (the whole pipeline, scored on labelled frames)")
    p.add_argument("--data", type=Path, help="labelled dataset for --max-ap-drop (default: the synthetic scenes)")
    p.add_argument("--ap-frames", type=int, default=50, help="labelled frames scored for --max-ap-drop (default 50)")
    p.add_argument("--ap-first-frame", type=int,
                   help="first frame index scored (default: the one after the calibration set's frames)")
    p.add_argument("--out", type=Path, required=True, help="IR folder (replaced only on success)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("infer", help="run frames through the graphs: boxes, prediction files, pictures, video")
    _add_recipe_args(p)
    _add_runtime_args(p)
    p.add_argument("--pred-dir", type=Path, help="write <id>.txt predictions (lidar/ and kitti/ formats) here")
    p.add_argument("--vis-dir", type=Path, help="write frame_<id>.png pictures here")
    p.add_argument("--video", action="store_true", help="also write <vis-dir>/bevfusion.mp4")
    p.add_argument("--no-timing", action="store_true", help="no latency in the pictures (reproducible pictures)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("validate", help="compile every IR on the device and compare FP32 with INT8 on held-out frames")
    _add_recipe_args(p)
    _add_runtime_args(p)
    p.add_argument("--out", type=Path, help="validate.json path (default: <bundle>/validate.json)")
    p.add_argument("--report-only", action="store_true",
                   help="warn instead of failing when a drift bound is crossed (e.g. for synthetic checkpoints)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("bench", help="per-stage latency and frames per second, FP32 and INT8")
    _add_recipe_args(p)
    _add_runtime_args(p)
    p.add_argument("--precision", default="int8,fp32,fp32-default",
                   help="comma list of int8, fp32 (FP32 graphs at --inference-precision, f32 by default) and "
                        "fp32-default (at the device's default: bf16 on AMX CPUs); default all three")
    p.add_argument("--throughput-frames", type=int, default=0,
                   help="also measure throughput over this many frames streamed from the dataset (read ahead on a "
                        "background thread, two frames in flight)")
    p.add_argument("--out", type=Path, help="bench.json path (default: <bundle>/bench.json)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("bundle", help="release bundle: deploy tree + reports + manifest, and a deterministic .tar.gz")
    _add_recipe_args(p)
    p.add_argument("--onnx", type=Path, required=True, help="the `bevport export` folder")
    p.add_argument("--ir", type=Path, required=True, help="the `bevport quantize` folder made from it")
    p.add_argument("--calib", type=Path,
                   help="the calibration folder quantize used (checks the ONNX -> INT8 link; default: the one "
                        "quantize.json names, when it still exists)")
    p.add_argument("--validate", type=Path, help="validate.json of `bevport validate`")
    p.add_argument("--bench", type=Path, help="bench.json of `bevport bench`")
    p.add_argument("--ap", type=Path, help="ap.json of `bevport infer --pred-dir` on a labelled dataset")
    p.add_argument("--vis", type=Path, help="pictures of `bevport infer --vis-dir ... --no-timing` to bundle")
    p.add_argument("--environment", type=Path,
                   help="JSON file stored as the manifest's `environment` (image IDs, base digests, package versions)")
    p.add_argument("--source-date-epoch", type=int,
                   help="mtime of every archive entry (default: $SOURCE_DATE_EPOCH, else 0)")
    p.add_argument("--dist", type=Path, required=True, help="folder receiving <recipe>-<checkpoint sha256[:12]>/")
    p.add_argument("--parity-reference", type=Path,
                   help="a `bevport parity --source` report of these graphs (parity-reference.json), bundled")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("verify", help="re-hash every file of a release bundle (folder or .tar.gz) against its manifest")
    p.add_argument("path", type=Path, help="dist/<name> or dist/<name>.tar.gz")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=cmd_verify)
    return parser


def run_reporting_errors(func, *args, **kwargs):
    """Call func; a BevportError becomes one message (and hint) and exit 1, a full disk exit 1, Ctrl-C exit 130, and
    anything else one line saying it is a bevport bug with the traceback in a log file (exit 2; set
    BEVPORT_TRACEBACK=1 to see it raised instead). Used by main and tasks."""
    try:
        return func(*args, **kwargs)
    except BevportError as exc:
        _fail(exc.message, exc.hint)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]; no output was written")
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _internal_error(exc)
        _fail(f"no space left on the device{f' writing {exc.filename}' if exc.filename else ''}; nothing was "
              "half-written (earlier results are intact)", "free space, or pass a --work / --out on a larger disk")
    except Exception as exc:  # noqa: BLE001  (anything else is bevport's bug: say so, keep the traceback)
        return _internal_error(exc)


def _fail(message: str, hint: Optional[str] = None) -> None:
    console.print(f"[red]error:[/] {message}")
    if hint:
        console.print(f"  [dim]hint:[/] {hint}")
    sys.exit(1)


def _internal_error(exc: BaseException) -> None:
    if os.environ.get("BEVPORT_TRACEBACK"):
        raise exc
    import tempfile
    import traceback

    fd, log = tempfile.mkstemp(prefix="bevport-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"bevport {__version__}\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    console.print(f"[red]internal error[/] (a bevport bug, not your input): {type(exc).__name__}: {exc}")
    console.print(f"  [dim]hint:[/] the traceback is in {log}; please report it with that file")
    sys.exit(2)


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    run_reporting_errors(args.func, args)


if __name__ == "__main__":
    main()
