"""The steps of one conversion, and the checks that run before any of them (so that no container starts in vain)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from bevport.convert.runner import Mounts, RunnerError, render_group
from bevport.convert.steps import Step
from bevport.formats import dataset_format
from bevport.recipe import DEFAULT_RECIPE, load_recipe


@dataclass
class ConvertRequest:
    ckpt: Path
    work: Path
    dist: Path
    recipe: str = DEFAULT_RECIPE
    config: Optional[Path] = None
    data: Optional[Path] = None
    device: str = "CPU"
    num_samples: Optional[int] = None     # calibration frames; None: the recipe's quantize.calibration_frames
    holdout: Optional[int] = None         # held-out frames; None: the recipe's quantize.holdout_frames
    sparsity: bool = False
    allow_drift: bool = False     # validate reports drift beyond the recipe's bounds instead of failing
    source: Optional[Path] = None   # the training tree: parity against it, or the reference backend's modules
    backend: str = "native"         # native (bevport's model) or reference (the --source tree's modules)

    def __post_init__(self):
        # A relative config names a file of the training tree when there is one (its scripts run from its root).
        if self.source is not None and str(self.source) != "pinned" and self.config is not None \
                and not Path(self.config).is_absolute() \
                and not Path(self.config).exists():
            self.config = Path(self.source) / self.config


def preflight(req: ConvertRequest) -> None:
    """Input paths readable, GPU present if asked for, the recipe (and config) loadable: checked on the host before
    any step starts."""
    for label, path, want_dir in (("checkpoint", req.ckpt, False), ("config", req.config, False),
                                  ("dataset", req.data, True)):
        if path is None:
            continue
        if not Path(path).exists():
            raise RunnerError(f"{label} not found: {path}")
        if want_dir != Path(path).is_dir():
            raise RunnerError(f"{label} {path} must be a {'folder' if want_dir else 'file'}")
        if not os.access(path, os.R_OK):
            raise RunnerError(f"{label} {path} is not readable by this user")
    if req.backend not in ("native", "reference"):
        raise RunnerError(f"backend must be native or reference, got {req.backend!r}")
    if req.backend == "reference" and req.source is None:
        raise RunnerError("--backend reference needs --source: the training tree whose modules are exported")
    if req.source is not None and str(req.source) != "pinned" and not (Path(req.source) / "mmdet3d").is_dir():
        raise RunnerError(f"--source {req.source}: no mmdet3d package there",
                          "point --source at the root of the training repository the checkpoint came from")
    if req.device.upper().startswith("GPU") and render_group() is None:
        raise RunnerError("--device GPU, but /dev/dri has no render node on this host",
                          "install the Intel GPU driver (and add yourself to the render group), or use --device CPU")
    recipe = load_recipe(req.recipe, req.config)
    if req.data is not None:   # its layout and frame list, read before a container spends minutes on the export
        dataset_format(recipe).open_dataset(recipe, req.data)


def mounts(req: ConvertRequest) -> Mounts:
    table = {"/in/ckpt": (req.ckpt.parent, "ro"), "/work": (req.work, "rw"), "/out": (req.dist, "rw")}
    if req.config is not None:
        table["/in/config"] = (_config_root(req.config), "ro")
    if req.data is not None:
        table["/data"] = (req.data, "ro")
    if req.source is not None and str(req.source) != "pinned":   # pinned: the tree inside the export image
        table["/src"] = (req.source, "ro")
    return Mounts(table)


def _config_root(config: Path) -> Path:
    """The outermost `configs` folder above a torchpack config (the whole chain must be visible)."""
    config = config.resolve()
    roots = [p for p in config.parents if p.name == "configs"]
    return roots[-1] if roots else config.parent


def frame_counts(req: ConvertRequest) -> Tuple[int, int]:
    """(calibration frames, held-out frames): the request's, or the recipe's `quantize` settings where not given."""
    if req.num_samples is not None and req.holdout is not None:
        return int(req.num_samples), int(req.holdout)
    quantize = load_recipe(req.recipe, req.config).quantize
    return (int(quantize.calibration_frames if req.num_samples is None else req.num_samples),
            int(quantize.holdout_frames if req.holdout is None else req.holdout))


def plan(req: ConvertRequest) -> List[Step]:
    w = req.work
    num_samples, holdout = frame_counts(req)
    common = ["--recipe", req.recipe] + (["--config", req.config] if req.config else [])
    data = ["--data", req.data] if req.data else []
    runtime = ["--device", req.device] + data
    onnx, calib, ir = w / "onnx", w / "calib", w / "ir"
    heldout = ["--first-frame", str(num_samples + holdout)] if req.data else []
    inputs = {"ckpt": req.ckpt}
    if req.config:
        inputs["config"] = req.config
    source = ["--source", req.source if str(req.source) != "pinned" else "pinned"] if req.source else []
    if req.source and str(req.source) != "pinned":
        inputs["source"] = req.source
    steps = [
        Step("export", "export", ["export"] + common + ["--ckpt", req.ckpt, "--out", onnx, "-q"]
             + (["--sparsity"] if req.sparsity else [])
             + (["--backend", "reference"] + source if req.backend == "reference" else []),
             inputs, [onnx / "export.json"], {"recipe": req.recipe, "sparsity": req.sparsity, "backend": req.backend}),
        Step("calibrate", "export", ["calibrate"] + common + ["--onnx", onnx, "--num-samples", str(num_samples),
                                                              "--holdout", str(holdout), "--out", calib, "-q"]
             + data, dict({"onnx": onnx / "export.json"}, **({"data": req.data} if req.data else {})),
             [calib / "manifest.json"]),
        Step("quantize", "export", ["quantize"] + common + ["--onnx", onnx, "--calib", calib, "--out", ir, "-q"],
             {"onnx": onnx / "export.json", "calib": calib / "manifest.json"}, [ir / "quantize.json"]),
        Step("validate", "runtime", ["validate"] + common + ["--bundle", ir, "--out", w / "validate.json", "-q"]
             + runtime + heldout + (["--report-only"] if req.allow_drift else []),
             {"ir": ir / "quantize.json"}, [w / "validate.json"], {"device": req.device}),
        Step("bench", "runtime", ["bench"] + common + ["--bundle", ir, "--num-samples", "4", "--out", w / "bench.json",
                                                       "-q"] + runtime + heldout,
             {"ir": ir / "quantize.json"}, [w / "bench.json"], {"device": req.device}),
        Step("pictures", "runtime", ["infer"] + common + ["--bundle", ir, "--num-samples", "4", "--vis-dir", w / "vis",
                                                          "--pred-dir", w / "preds", "--no-timing", "-q"]
             + runtime + heldout, {"ir": ir / "quantize.json"}, [w / "preds" / "infer.json"], {"device": req.device}),
    ]
    if req.source and req.backend == "native":   # one more gate: bevport's graphs against the user's own code
        steps.insert(1, Step("parity", "export", ["parity"] + common + ["--ckpt", req.ckpt] + source
                             + ["--onnx", onnx, "--out", w / "parity-reference.json", "-q"] + data,
                             dict(inputs, onnx=onnx / "export.json", **({"data": req.data} if req.data else {})),
                             [w / "parity-reference.json"]))
    return steps
