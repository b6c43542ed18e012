"""A deterministic synthetic checkpoint in the exact upstream layout: the built-in default for demos and tests.

Weights are drawn from numpy's PCG64 generator (stable across numpy and torch versions) at He-initialisation
scale. BatchNorm statistics are not invented: every BN layer measures them in one train-mode pass over seeded,
image-like inputs (float64, so the result is the same on any CPU), the way a trained network's statistics
describe its own activations. Activations therefore stay well scaled through every BN layer, as in a real model.
The architecture's module (`bevport.models.<architecture>`) builds the model and runs that pass.
"""
from __future__ import annotations

import io
import math
import os
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bevport import __version__
from bevport.fsutil import atomic_write_bytes
from bevport.models import architecture
from bevport.models.head import SeparateHead
from bevport.recipe import Recipe


def _init_parameters(model: nn.Module, rng: np.random.Generator) -> None:
    normal = lambda shape, std: torch.from_numpy(rng.normal(0.0, std, size=shape))  # noqa: E731
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            # He scale before a BN + ReLU; layers with a bias (depthnet, head outputs) feed no BN: unit gain.
            gain = 1.0 if module.bias is not None else 2.0
            module.weight.data = normal(tuple(module.weight.shape), math.sqrt(gain / fan_in))
            if module.bias is not None:
                module.bias.data = normal(tuple(module.bias.shape), 0.1)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.weight.data = torch.from_numpy(rng.uniform(0.4, 1.2, size=n))
            module.bias.data = normal((n,), 0.1)
        elif isinstance(module, nn.LayerNorm):
            n = module.normalized_shape[0]
            module.weight.data = torch.from_numpy(rng.uniform(0.8, 1.2, size=n))
            module.bias.data = normal((n,), 0.05)
        if hasattr(module, "relative_position_bias_table"):     # Swin's init: truncated normal, std 0.02
            table = module.relative_position_bias_table
            table.data = torch.from_numpy(np.clip(rng.normal(0.0, 0.02, size=tuple(table.shape)), -0.04, 0.04))
    for module in model.modules():
        if isinstance(module, SeparateHead):
            module.heatmap[-1].bias.data += -2.19  # CenterPoint's prior: initial scores ~0.1


def smooth_noise(rng: np.random.Generator, shape, scale: int) -> torch.Tensor:
    """Low-frequency noise (bilinear-upsampled) so that convolutions see image-like statistics."""
    low = torch.from_numpy(rng.normal(size=(shape[0], shape[1], shape[2] // scale + 1, shape[3] // scale + 1)))
    return F.interpolate(low, size=shape[2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def _measure_batchnorm(model: nn.Module, recipe: Recipe, rng: np.random.Generator) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass gives exactly that batch's statistics
    model.train()
    architecture(recipe).synthetic_forward(model, recipe, rng)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        bn.num_batches_tracked.fill_(int(rng.integers(10_000, 200_000)))
    model.eval()


def synthetic_state_dict(recipe: Recipe, seed: int) -> Dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    model = architecture(recipe).build(recipe)
    grid = {k: v.clone() for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in ("dx", "bx", "nx")}
    model.double()
    _init_parameters(model, rng)
    _measure_batchnorm(model, recipe, rng)
    state = model.float().state_dict()
    state.update(grid)  # the grid parameters stay exactly as upstream computes them (float32, int64)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def write_synthetic_checkpoint(recipe: Recipe, seed: int, out: os.PathLike, trained: bool = False) -> None:
    """An mmcv-runner style checkpoint: {'meta': ..., 'state_dict': ...}, as training writes it. `trained`: the
    recipe's trained demo tensors over seed train.base_seed (`bevport.models.trained`)."""
    meta: Dict[str, Any] = {
        "bevport_version": __version__,
        "synthetic": True,
        "recipe": recipe.name,
        "seed": int(seed),
        "CLASSES": tuple(recipe.class_names),
        "epoch": 0,
    }
    if trained:
        from bevport.models.trained import trained_state_dict

        state = trained_state_dict(recipe)
        meta["trained_weights"] = str(recipe.train.weights.sha256)
    else:
        state = synthetic_state_dict(recipe, seed)
    buffer = io.BytesIO()  # a file object gives the zip a fixed root name, so the bytes do not depend on `out`
    torch.save({"meta": meta, "state_dict": state}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
