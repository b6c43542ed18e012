"""The `bevport` command: quiet on success, one precise message on failure (exit 1), progress only on a terminal."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from rich.console import Console

from bevport import __version__
from bevport.errors import BevportError

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
    from bevport.recipe import load_recipe

    return load_recipe(args.recipe, args.config)


def cmd_export(args) -> None:
    from bevport.export.onnx_export import export

    recipe = _load_recipe(args)
    with _Progress(args.quiet) as progress:
        summary = export(recipe, args.ckpt, args.out, sparsity=args.sparsity, progress=progress, warn=_warn)
    if not args.quiet:
        _print_export_summary(summary, Path(args.out))


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
    with _Progress(args.quiet) as progress:
        progress(f"drawing weights (seed {args.seed}) and measuring BatchNorm statistics")
        write_synthetic_checkpoint(recipe, args.seed, args.out)
    if not args.quiet:
        Console(highlight=False).print(f"[green]wrote[/] synthetic {recipe.name} checkpoint (seed {args.seed}) "
                                       f"to {args.out}")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="v2xfusion-pp-r34", help="recipe name (recipes/<name>.yaml) or path")
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
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("synth-ckpt", help="write a deterministic synthetic checkpoint in the upstream layout")
    _add_recipe_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.set_defaults(func=cmd_synth_ckpt)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BevportError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"  [dim]hint:[/] {exc.hint}")
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]; no output was written")
        sys.exit(130)


if __name__ == "__main__":
    main()
