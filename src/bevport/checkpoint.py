"""Checkpoint loading that is safe for untrusted files, strict about keys and shapes, and clear when it fails.

A `.pth` file is a pickle. Unpickling runs whatever callables the file names, so bevport never unpickles with the
stock unpickler: a restricted one resolves only the few torch functions that rebuild tensors (the same set as
torch>=2.6 `weights_only`), and every other class or function the file names (mmcv's config objects in `meta`,
numpy scalars, a whole pickled model) becomes an inert placeholder that records its name and is never imported
or called. This works the same on torch 1.11, which has no `weights_only`.
"""
from __future__ import annotations

import collections
import inspect
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from bevport.errors import CheckpointError

# (module, name) pairs a tensor checkpoint legitimately needs.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class Opaque:
    """Stands in for any class or function a checkpoint names that bevport does not trust; holds its arguments."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<untrusted {self.qualname}>"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and name in _TORCH_DTYPES):
            return super().find_class(module, name)
        return type(name, (Opaque,), {"qualname": f"{module}.{name}", "__module__": "bevport.checkpoint.untrusted"})


def _restricted_pickle_module() -> types.ModuleType:
    module = types.ModuleType("bevport_restricted_pickle")
    module.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    return module


def _torch_load(path: Path) -> Any:
    kwargs: Dict[str, Any] = {"map_location": "cpu", "pickle_module": _restricted_pickle_module()}
    if "weights_only" in inspect.signature(torch.load).parameters:
        # Our own restricted unpickler does the job; torch refuses weights_only together with pickle_module.
        kwargs["weights_only"] = False
    return torch.load(str(path), **kwargs)


def _diagnose_unreadable(path: Path, exc: BaseException) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            zipfile.ZipFile(path).close()
            reason = f"its zip archive is damaged ({exc})"
        except zipfile.BadZipFile:
            reason = "the zip archive is incomplete: the file is truncated"
        return CheckpointError(f"{path}: cannot read the checkpoint: {reason}",
                               "download or copy it again and compare its size and sha256 with the source")
    if head[:1] == b"\x80":
        return CheckpointError(f"{path}: cannot read the checkpoint (legacy torch format): {exc}",
                               "the file may be truncated; download or copy it again")
    return CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head!r})",
                           "pass the .pth file written by training, e.g. dense_epoch_100_.pth")


def read_checkpoint(path: os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict, meta) from an mmcv runner checkpoint or a bare state_dict; `module.` prefixes stripped."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}", "check the path given to --ckpt")
    if not path.is_file():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file", "pass the .pth file itself")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty", "download or copy the checkpoint again")
    try:
        obj = _torch_load(path)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for unreadable files
        raise _diagnose_unreadable(path, exc) from None
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and "state_dict" in obj:
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        obj = obj["state_dict"]
    if isinstance(obj, Opaque):
        raise CheckpointError(f"{path}: holds a pickled `{obj.qualname}` object, not a state_dict",
                              "NVIDIA's ptq.pth pickles the whole model; pass the training checkpoint "
                              "(e.g. dense_epoch_100_.pth) instead")
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors",
                              "pass an mmcv checkpoint ({'state_dict': ..., 'meta': ...}) or a saved state_dict")
    state: Dict[str, torch.Tensor] = collections.OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor",
                                  "pass a checkpoint whose state_dict maps parameter names to tensors")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state, meta


def _first(names: List[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" ... ({len(names)} in all)" if len(names) > n else "")


def model_kind(keys) -> Tuple[bool, Optional[str]]:
    """(has a LiDAR branch, camera backbone "Swin-T" / "ResNet" / None) of a state_dict, by the modules it names."""
    keys = list(keys)
    lidar = any(k.startswith(("encoders.lidar.", "fuser.")) for k in keys)
    if any(k.startswith("encoders.camera.backbone.stages.") for k in keys):
        return lidar, "Swin-T"
    return lidar, "ResNet" if any(k.startswith("encoders.camera.backbone.layer1.") for k in keys) else None


def describe_kind(kind: Tuple[bool, Optional[str]]) -> str:
    lidar, camera = kind
    if lidar:
        return f"a camera+LiDAR BEVFusion / V2XFusion checkpoint ({camera} camera backbone, LiDAR encoder, fuser)"
    return f"a camera-only BEVFusion checkpoint ({camera} camera backbone, no LiDAR encoder)"


def check_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """`state` completed and converted for a strict load into `model`, or a CheckpointError naming what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        found, wanted = model_kind(state), model_kind(expected)
        if found[1] is not None and found != wanted:
            raise CheckpointError(f"{source}: this is {describe_kind(found)}; the recipe's model is "
                                  f"{describe_kind(wanted)}", "pick the recipe of that model with --recipe")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {_first(unexpected)})")
        raise CheckpointError(f"{source}: does not match the model of this recipe: " + "; ".join(parts),
                              "is this a checkpoint of another model? pick the matching --recipe, or pass the "
                              "training config with --config if the architecture was changed")
    out: Dict[str, torch.Tensor] = collections.OrderedDict()
    for key, ref in expected.items():
        value = state.get(key)
        if value is None:  # num_batches_tracked only: eval numerics never read it
            out[key] = torch.zeros_like(ref)
            continue
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: `{key}` has shape {list(value.shape)}, the model expects {list(ref.shape)}",
                                  "the checkpoint was trained with other sizes; pass its training config with --config")
        out[key] = value.to(ref.dtype)
    return out


def check_grid(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """The vtransform's dx/bx/nx in the checkpoint must equal the recipe's BEV grid (else the bounds differ)."""
    for name, ref in model.state_dict().items():
        if name.rsplit(".", 1)[-1] in ("dx", "bx", "nx") and "vtransform" in name:
            if not torch.allclose(state[name].double(), ref.double(), atol=1e-5):
                raise CheckpointError(
                    f"{source}: `{name}` is {state[name].tolist()} but the recipe's bounds give {ref.tolist()}",
                    "the checkpoint was trained with other xbound/ybound/zbound; pass its training config with --config")


# ---------------------------------------------------------------------------------------------------------------
# 2:4 sparsity (NVIDIA tinyq): masks are not stored; they are recomputed from the weights at PTQ time.

def sparsity_eligible(weight_shape: Tuple[int, ...]) -> bool:
    """NVIDIA's best-practice rule: in_ch % 4 == 0, kh*kw <= 32, and C*kh*kw >= 512 (k > 1) or >= 4096 (1x1)."""
    if len(weight_shape) not in (2, 4):
        return False
    shape = list(weight_shape) + ([1, 1] if len(weight_shape) == 2 else [])
    rs = shape[2] * shape[3]
    crs = shape[1] * rs
    if shape[1] % 4 != 0 or rs > 32:
        return False
    return crs >= (512 if rs > 1 else 4096)


def sparsity_mask(weight: torch.Tensor) -> torch.Tensor:
    """Per output position (o, kh, kw), zero the 2 smallest |w| in each group of 4 consecutive input channels."""
    if weight.dim() == 2:
        out_ch, in_ch = weight.shape
        groups = weight.reshape(-1, 4)
    else:
        out_ch, in_ch, kh, kw = weight.shape
        groups = weight.permute(0, 2, 3, 1).reshape(-1, 4)
    # A stable sort, so that ties (exact zeros) resolve to the lower channel on every torch version.
    order = torch.sort(groups.abs(), dim=1, stable=True)[1][:, :2]
    mask = torch.ones_like(groups).scatter_(1, order, 0.0)
    if weight.dim() == 2:
        return mask.reshape(out_ch, in_ch)
    return mask.reshape(out_ch, kh, kw, in_ch).permute(0, 3, 1, 2).contiguous()


def sparse_layers(model: nn.Module) -> List[str]:
    """state_dict names of the conv/linear weights the sparsity rule applies to, in model order."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and sparsity_eligible(
                tuple(module.weight.shape)):
            names.append(f"{name}.weight")
    return names


def looks_sparse_trained(state: Dict[str, torch.Tensor], names: List[str]) -> bool:
    """True when the eligible weights show the 2:4 training signature.

    Sparse training decays the two masked weights of every group towards zero, so in each group the two smallest
    magnitudes end up far below the two largest; in dense weights they are typically a third of them.
    """
    ratios = []
    for name in names:
        w = state[name].float()
        groups = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(-1, 4).abs()
        ordered = groups.sort(dim=1)[0]
        ratios.append((ordered[:, :2].mean() / ordered[:, 2:].mean().clamp(min=1e-12)).item())
    return bool(ratios) and sorted(ratios)[len(ratios) // 2] < 0.05


def apply_sparsity(state: Dict[str, torch.Tensor], names: List[str]) -> None:
    for name in names:
        state[name] = state[name] * sparsity_mask(state[name])


def load_weights(model: nn.Module, path: os.PathLike, sparsity: bool = False,
                 warn=None) -> Dict[str, Any]:
    """Load `path` into `model` strictly (eval mode); returns the checkpoint's meta with untrusted objects inert."""
    state, meta = read_checkpoint(path)
    state = check_state_dict(model, state, str(path))
    check_grid(model, state, str(path))
    names = sparse_layers(model)
    if sparsity:
        apply_sparsity(state, names)
    elif warn is not None and looks_sparse_trained(state, names):
        warn(f"{path}: the weights look 2:4 sparse-trained (NVIDIA tinyq) but --sparsity was not given; "
             "the sparsity model's published numbers use the masked weights")
    model.load_state_dict(state, strict=True)
    model.eval()
    return meta
