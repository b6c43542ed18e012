"""The user's training tree as a Python package: its `mmdet3d` imported with stand-ins for the compiled ops, its
config chain loaded as the training scripts load it, its model built by its own builder, the checkpoint loaded as
NVIDIA's scripts load it.

Nothing in the tree is edited or executed beyond what importing and running its model does. The stand-ins come in
through an import hook placed *after* Python's own finders, so a tree whose extensions were built (a GPU host) keeps
its compiled ops; the report says which module was which.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from bevport.errors import BevportError
from bevport.reference.standins import ABSENT, ABSENT_PACKAGES, STANDINS


class SourceTreeError(BevportError):
    """A training tree, config or checkpoint the reference path cannot use."""


def _absent_op(module: str, name: str) -> Callable:
    def call(*args, **kwargs):
        raise SourceTreeError(f"{module}.{name} is a compiled op of the training tree that was not built here, and "
                             "bevport has no stand-in for it: the recipe's inference path should not call it",
                             "build the tree's CUDA extensions on a GPU host, or report the model that needs it")
    return call


class StandinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `STANDINS` and `ABSENT` extension modules that Python's own finders did not find; counts calls."""

    def __init__(self):
        self.calls: Counter = Counter()

    def find_spec(self, fullname, path, target=None):
        if fullname in STANDINS or fullname in ABSENT:
            return importlib.util.spec_from_loader(fullname, self)
        if fullname.split(".")[0] in ABSENT_PACKAGES:
            return importlib.util.spec_from_loader(fullname, self, is_package="." not in fullname)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        name = module.__name__
        module.__bevport_standin__ = True
        for attr, fn in STANDINS.get(name, {}).items():
            setattr(module, attr, self._counted(f"{name}.{attr}", fn))

        def getattr_(attr: str):     # every other function of the module: importable, raises when called
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _absent_op(name, attr)
        module.__getattr__ = getattr_

    def _counted(self, qualified: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            self.calls[qualified] += 1
            return fn(*args, **kwargs)
        call.__name__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call

    def report(self) -> Dict[str, Dict]:
        """Per extension module the tree imported: where it came from, and the stand-in calls made."""
        out = {}
        served = [m for m in sys.modules if m.split(".")[0] in ABSENT_PACKAGES]
        for name in sorted(set(STANDINS) | set(ABSENT) | set(served)):
            module = sys.modules.get(name)
            if module is None:
                continue
            if getattr(module, "__bevport_standin__", False):
                kind = "stand-in" if name in STANDINS else "absent (not built, not called)"
            else:
                kind = f"compiled ({getattr(module, '__file__', '?')})"
            calls = {k.rsplit(".", 1)[1]: n for k, n in self.calls.items() if k.startswith(name + ".")}
            out[name] = {"source": kind, "calls": calls}
        return out


class SourceTree:
    """A training tree at `root` (its `mmdet3d/` package inside), imported once per process."""

    def __init__(self, root: Path, expected: str):
        self.root = Path(root).resolve()
        self.expected = expected
        self.finder = StandinFinder()
        self.mmdet3d = None

    def commit(self) -> Optional[str]:
        """The tree's git commit when it is a checkout (a copied tree has none)."""
        if not (self.root / ".git").exists():
            return None
        run = subprocess.run(["git", "-C", str(self.root), "rev-parse", "HEAD"], capture_output=True, text=True)
        return run.stdout.strip() or None

    def import_package(self):
        if self.mmdet3d is not None:
            return self.mmdet3d
        if not (self.root / "mmdet3d" / "__init__.py").is_file():
            raise SourceTreeError(f"--source {self.root}: no mmdet3d package there (mmdet3d/__init__.py)",
                                 f"point --source at the training repository's root: {self.expected}")
        loaded = sys.modules.get("mmdet3d")
        if loaded is not None and Path(loaded.__file__).resolve().parents[1] != self.root:
            raise SourceTreeError(f"another mmdet3d is already imported ({loaded.__file__}), not the one in "
                                 f"--source {self.root}", "run the reference path in a fresh process")
        sys.path.insert(0, str(self.root))
        # NVIDIA's scripts run as `python scripts/<name>.py`, which puts scripts/ on the path: CUDA-V2XFusion's
        # modules import its helpers (`import tensor`) from there.
        if (self.root / "scripts").is_dir():
            sys.path.insert(1, str(self.root / "scripts"))
        if self.finder not in sys.meta_path:
            sys.meta_path.append(self.finder)
        try:
            import mmdet3d.models  # noqa: F401
            import mmdet3d.models.builder  # noqa: F401
        except ImportError as e:
            raise self._import_error(e) from None
        self.mmdet3d = sys.modules["mmdet3d"]
        return self.mmdet3d

    def _import_error(self, e: ImportError) -> SourceTreeError:
        where = self._failing_file(e)
        if isinstance(e, ModuleNotFoundError) and e.name and not e.name.startswith("mmdet3d"):
            return SourceTreeError(f"the training tree at {self.root} imports `{e.name}`{where}, which is not "
                                  "installed here",
                                  f"the export image installs mmdet3d's import-time requirements; on another "
                                  f"host `pip install` it (bevport expects {self.expected})")
        return SourceTreeError(f"the training tree at {self.root} cannot be imported{where}: {e}",
                              f"bevport expects {self.expected}; a tree missing this module or symbol is another "
                              "version or an incomplete copy")

    def _failing_file(self, e: BaseException) -> str:
        tb, last = e.__traceback__, None
        while tb is not None:
            path = Path(tb.tb_frame.f_code.co_filename)
            if self.root in path.parents:
                last = f" ({path.relative_to(self.root)}:{tb.tb_lineno})"
            tb = tb.tb_next
        return last or ""


@contextlib.contextmanager
def cpu_only():
    """The upstream NMS wrappers move their results with `.cuda(boxes.device)`; on a host without CUDA that call
    becomes a no-op for the duration (the tensors already are where the caller wants them). Counts the calls."""
    calls = Counter()
    if torch.cuda.is_available():
        yield calls
        return
    original = torch.Tensor.cuda

    def cuda(self, device=None, non_blocking=False, **kwargs):
        calls["torch.Tensor.cuda"] += 1
        return self

    torch.Tensor.cuda = cuda
    try:
        yield calls
    finally:
        torch.Tensor.cuda = original


def load_config(tree: SourceTree, config: Path):
    """The config as the training scripts make it: torchpack's recursive chain + recursive_eval, wrapped in an mmcv
    Config. bevport's chain loader replaces both (same files, same merge), with its whitelisted evaluator instead of
    `eval`. A relative path is taken from the tree's root, where the scripts run."""
    from mmcv import Config

    from bevport.configchain import load_config_chain

    path = config if config.is_absolute() else tree.root / config
    if not path.is_file():
        raise SourceTreeError(f"--config {config}: no such file (looked at {path})",
                             "give the config path relative to the training tree, e.g. configs/.../default.yaml")
    return Config(load_config_chain(path), filename=str(path))


def _drop_pretrained(node) -> None:
    """BEVFusion's constructor runs init_weights, which downloads every `init_cfg: Pretrained` checkpoint (ImageNet
    backbones). The checkpoint loaded next sets every weight (strictly), so those entries go: no download."""
    if isinstance(node, dict):
        init = node.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            node["init_cfg"] = None
        for value in node.values():
            _drop_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_pretrained(value)


def build_model(tree: SourceTree, cfg, ckpt: Path) -> torch.nn.Module:
    """tools/test.py's model: `build_model(cfg.model, test_cfg=...)`, then `load_checkpoint(..., strict=True,
    map_location="cpu")` as NVIDIA's ptq_v2xfusion.py loads it; eval mode."""
    tree.import_package()
    from mmcv.runner import load_checkpoint
    from mmdet3d.models import build_model as upstream_build

    cfg.model.pretrained = None
    cfg.model.train_cfg = None
    _drop_pretrained(cfg.model)
    quiet = logging.getLogger("bevport.reference")          # mmcv logs every initialised tensor at INFO
    quiet.setLevel(logging.WARNING)
    from mmcv.utils import get_logger

    mmcv_logger = get_logger("mmcv")      # created here so that init_weights does not reset its level
    level = mmcv_logger.level
    mmcv_logger.setLevel(logging.WARNING)
    try:
        model = upstream_build(cfg.model, test_cfg=cfg.get("test_cfg"))
    except (KeyError, TypeError, ValueError) as e:
        raise SourceTreeError(f"the training tree's builder rejected the config: {e}",
                             f"check that the config belongs to this tree ({tree.expected})") from None
    finally:
        mmcv_logger.setLevel(level)
    try:
        load_checkpoint(model, str(ckpt), map_location="cpu", strict=True, logger=quiet)
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()
        raise SourceTreeError(f"{ckpt} does not load into the model the config builds (strict): "
                             f"{' '.join(first[:3])[:400]}",
                             "use the config the checkpoint was trained with") from None
    return model.eval()


def centerhead_boxes(head: torch.nn.Module, tasks) -> Dict[str, np.ndarray]:
    """The training tree's `CenterHead.get_bboxes` on one sample's raw head maps (a {attribute: tensor} dict per
    task), with its own bbox coder, test_cfg and NMS (through the iou3d stand-ins): boxes [N, 9] (z = bottom),
    scores [N], labels [N]."""
    from mmdet3d.core.bbox import LiDARInstance3DBoxes

    with torch.no_grad():       # on a CPU host inside `cpu_only()`: the tree's NMS wrappers call .cuda()
        boxes, scores, labels = head.get_bboxes([[t] for t in tasks], [{"box_type_3d": LiDARInstance3DBoxes}])[0]
    return {"boxes": boxes.tensor.numpy(), "scores": scores.numpy(), "labels": labels.numpy()}
