"""A deterministic synthetic checkpoint in the exact upstream layout: the built-in default for demos and tests.

Weights are drawn from numpy's PCG64 generator (stable across numpy and torch versions) at He-initialisation
scale. BatchNorm statistics are not invented: every BN layer measures them in one train-mode pass over seeded,
image-like inputs (float64, so the result is the same on any CPU), the way a trained network's statistics
describe its own activations. Activations therefore stay well scaled through all 74 BN layers, as in a real model.
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
from bevport.models.v2xfusion import V2XFusion
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
    for task in model.heads["object"].task_heads:
        task.heatmap[-1].bias.data += -2.19  # CenterPoint's prior: initial scores ~0.1


def _smooth_noise(rng: np.random.Generator, shape, scale: int) -> torch.Tensor:
    """Low-frequency noise (bilinear-upsampled) so that convolutions see image-like statistics."""
    low = torch.from_numpy(rng.normal(size=(shape[0], shape[1], shape[2] // scale + 1, shape[3] // scale + 1)))
    return F.interpolate(low, size=shape[2:], mode="bilinear", align_corners=False)


def random_pillars(recipe: Recipe, rng: np.random.Generator, counts: np.ndarray, slots: int):
    """Points in len(counts) distinct random pillars, filled in slot order as a voxelizer does:
    feats [M,slots,dims] float32 (zero padded), counts [M] int32, coords [M,4] int32 (b, x, y, z)."""
    vox = recipe.model.lidar.voxelize
    nx, ny = recipe.bev_shape
    m = len(counts)
    cells = rng.choice(nx * ny, size=m, replace=False)
    ix, iy = cells // ny, cells % ny
    lo, size = np.array(vox.point_cloud_range[:3]), np.array(vox.voxel_size)
    xyz = lo + (np.stack([ix, iy, np.zeros_like(ix)], 1)[:, None, :] + rng.uniform(size=(m, slots, 3))) * size
    xyz[..., 2] = rng.normal(-1.0, 0.8, size=(m, slots))
    intensity = rng.uniform(0, 255, size=(m, slots, recipe.input.point_dims - 3))
    feats = np.concatenate([xyz, intensity], -1) * (np.arange(slots)[None, :, None] < counts[:, None, None])
    coords = np.stack([np.zeros_like(ix), ix, iy, np.zeros_like(ix)], 1)
    return feats.astype(np.float32), counts.astype(np.int32), coords.astype(np.int32)


@torch.no_grad()
def _measure_batchnorm(model: V2XFusion, recipe: Recipe, rng: np.random.Generator) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass gives exactly that batch's statistics
    model.train()
    h, w = recipe.input.image_size
    img = _smooth_noise(rng, (1, 3, h // 4, w // 4), 8) + 0.3 * torch.from_numpy(rng.normal(size=(1, 3, h // 4, w // 4)))
    model.camera_features(img)
    slots = recipe.model.lidar.voxelize.max_num_points
    feats, sizes, coords = random_pillars(recipe, rng, rng.integers(1, slots + 1, size=3000), slots)
    model.pillar_features(torch.from_numpy(feats).double(), torch.from_numpy(sizes), torch.from_numpy(coords))
    nx, ny = recipe.bev_shape
    vt, scatter = recipe.model.camera.vtransform, recipe.model.lidar.scatter
    cam_bev = _smooth_noise(rng, (1, vt.out_channels, nx, ny), 4).abs() * 2.0
    lidar_bev = F.relu(_smooth_noise(rng, (1, scatter.in_channels, nx, ny), 2)) \
        * torch.from_numpy(rng.uniform(size=(1, 1, nx, ny)) < 0.3)
    model.head(model.decode_bev(cam_bev, lidar_bev))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        bn.num_batches_tracked.fill_(int(rng.integers(10_000, 200_000)))
    model.eval()


def synthetic_state_dict(recipe: Recipe, seed: int) -> Dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    model = V2XFusion(recipe)
    grid = {k: v.clone() for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in ("dx", "bx", "nx")}
    model.double()
    _init_parameters(model, rng)
    _measure_batchnorm(model, recipe, rng)
    state = model.float().state_dict()
    state.update(grid)  # the grid parameters stay exactly as upstream computes them (float32, int64)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def write_synthetic_checkpoint(recipe: Recipe, seed: int, out: os.PathLike) -> None:
    """An mmcv-runner style checkpoint: {'meta': ..., 'state_dict': ...}, as training writes it."""
    meta: Dict[str, Any] = {
        "bevport_version": __version__,
        "synthetic": True,
        "recipe": recipe.name,
        "seed": int(seed),
        "CLASSES": tuple(recipe.class_names),
        "epoch": 0,
    }
    buffer = io.BytesIO()  # a file object gives the zip a fixed root name, so the bytes do not depend on `out`
    torch.save({"meta": meta, "state_dict": synthetic_state_dict(recipe, seed)}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
