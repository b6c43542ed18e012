"""The user's own training code as the reference (`bevport parity --source`, `bevport export --backend reference`).

`tree` imports the training tree's `mmdet3d` with `standins` for its compiled ops, loads the config chain and builds
the model with the tree's own builder; `bevport.reference.<architecture>` puts that model behind the interface the
native model offers bevport's graphs (same method names, the original code inside); `parity` compares bevport's
graphs with it. Nothing here is imported unless a command asks for the reference path: it needs mmcv and mmdet (the
export image has them).
"""
from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Optional

from torch import nn

from bevport.models import architecture
from bevport.reference.tree import SourceTree, SourceTreeError, build_model, centerhead_boxes, load_config


def reference_module(recipe):
    try:
        return importlib.import_module(f"bevport.reference.{recipe.architecture}")
    except ModuleNotFoundError:
        raise SourceTreeError(f"recipe `{recipe.name}` (architecture {recipe.architecture}) has no reference "
                              "backend", "the reference path covers the architectures in bevport/reference/") from None


@dataclass
class LoadedReference:
    """The training tree's model behind bevport's interface, and what the reports say about where it came from."""
    tree: SourceTree
    config: Path
    model: nn.Module
    arch: SimpleNamespace

    def describe(self) -> Dict:
        import mmcv

        return {"source": str(self.tree.root), "commit": self.tree.commit(), "expected": self.tree.expected,
                "config": str(self.config), "mmcv": mmcv.__version__, "mmcv_compiled_ops": _mmcv_ops(),
                "extensions": self.tree.finder.report()}


def _mmcv_ops() -> str:
    try:
        from mmcv.utils import ext_loader

        return ext_loader.load_ext("_ext", []).__file__
    except Exception as e:  # noqa: BLE001 - reported, not fatal: the inference path calls none of them
        return f"not loadable ({e})"


# Where an export image built with REFERENCE_SOURCES=pinned keeps the upstream trees, one folder per recipe.
PINNED_ROOT = Path("/opt/bevport-reference")


def resolve_source(source: Path, recipe) -> Path:
    """`--source pinned` -> the export image's pinned tree of the recipe; any other value as given."""
    if str(source) != "pinned":
        return Path(source)
    tree = PINNED_ROOT / recipe.name
    if not (tree / "mmdet3d").is_dir():
        raise SourceTreeError(f"--source pinned: no pinned training tree at {tree} (this export image was built "
                              "without the upstream sources)",
                              "rebuild it with `invoke images.build --kind export --reference-sources pinned`, or "
                              "pass --source /path/to/the/training/repository")
    return tree


def load_reference(recipe, source: Path, config: Optional[Path], ckpt: Path,
                   progress: Callable[[str], None] = lambda m: None) -> LoadedReference:
    module = reference_module(recipe)
    tree = SourceTree(resolve_source(source, recipe), module.EXPECTED_TREE)
    progress(f"importing mmdet3d from {tree.root}")
    tree.import_package()
    config = Path(config or recipe.upstream.config)
    cfg = load_config(tree, config)
    progress(f"building the model with the tree's builder and loading {ckpt}")
    model = module.Reference(build_model(tree, cfg, ckpt), recipe).eval()
    native = architecture(recipe)
    sample = module.sample_inputs
    if "model" in inspect.signature(sample).parameters:       # inputs that depend on the tree's model (its rig cells)
        sample = functools.partial(sample, model=model)
    arch = SimpleNamespace(export_modules=module.export_modules, sample_inputs=sample,
                           checks=getattr(module, "checks", lambda *a: {}),
                           prepare_feed=getattr(module, "prepare_feed", lambda recipe, spec, feed: feed),
                           reference_outputs=getattr(module, "reference_outputs", native.reference_outputs),
                           export_artifacts=getattr(module, "export_artifacts", lambda m: {}),
                           tree_boxes=lambda tasks: centerhead_boxes(model.model.heads["object"], tasks))
    return LoadedReference(tree, config, model, arch)


__all__ = ["LoadedReference", "SourceTreeError", "load_reference", "reference_module", "resolve_source"]
