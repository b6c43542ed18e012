"""The built-in demo weights: the tensors `bevport.training.demo` trained, over the seeded synthetic checkpoint.

A recipe's `train.weights` names a file in `bevport/weights/` and its sha256. The file is an .npz (a zip of .npy
arrays, loaded with allow_pickle=False: no code runs on load) written with fixed entry dates, so the same tensors
always give the same bytes. Composing takes `synth-ckpt --seed <train.base_seed>`'s state_dict and replaces the
trained entries; every stored key must exist there with the same shape and dtype, so the result loads strictly.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from bevport.errors import BevportError
from bevport.fsutil import atomic_write_bytes
from bevport.recipe import Recipe

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def weights_path(recipe: Recipe) -> Path:
    weights = recipe.get("train", {}).get("weights")
    if not weights or not weights.get("file"):
        raise BevportError(f"recipe {recipe.name} has no trained demo weights (train.weights)",
                           "use `bevport synth-ckpt` without --trained (seeded random weights)")
    return WEIGHTS_DIR / str(weights["file"])


def npz_bytes(tensors: Dict[str, torch.Tensor]) -> bytes:
    """A deterministic .npz of the tensors, keys sorted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(tensors):
            entry = io.BytesIO()
            np.lib.format.write_array(entry, tensors[key].detach().cpu().numpy(), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entry.getvalue())
    return buffer.getvalue()


def write_trained(recipe: Recipe, tensors: Dict[str, torch.Tensor], out: os.PathLike) -> str:
    """Write the trained tensors; returns the file's sha256 (for the recipe's train.weights.sha256)."""
    data = npz_bytes(tensors)
    atomic_write_bytes(out, data)
    return hashlib.sha256(data).hexdigest()


def load_trained(recipe: Recipe) -> Dict[str, torch.Tensor]:
    path = weights_path(recipe)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BevportError(f"trained demo weights not found: {path}",
                           "reinstall bevport from a full clone (the file ships with the package)") from None
    digest, expected = hashlib.sha256(data).hexdigest(), str(recipe.train.weights.sha256)
    if digest != expected:
        raise BevportError(f"{path}: sha256 {digest} differs from the recipe's train.weights.sha256 {expected}",
                           "restore the file from git, or retrain with `python -m bevport.training.demo --out`")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: torch.from_numpy(z[k].copy()) for k in z.files}


def trained_state_dict(recipe: Recipe) -> Dict[str, torch.Tensor]:
    """The seeded checkpoint of train.base_seed with the trained tensors in place."""
    from bevport.models.synthetic import synthetic_state_dict

    state = synthetic_state_dict(recipe, int(recipe.train.base_seed))
    for key, value in load_trained(recipe).items():
        base = state.get(key)
        if base is None or base.shape != value.shape or base.dtype != value.dtype:
            found = "no such key" if base is None else f"{tuple(base.shape)} {base.dtype}"
            raise BevportError(f"{weights_path(recipe)}: {key} {tuple(value.shape)} {value.dtype} does not fit the "
                               f"{recipe.name} model ({found})", "the weights belong to another recipe version")
        state[key] = value.contiguous()
    return state
