"""LSS-V2X view transform: the depthnet that splits into height-bin weights and features, and its BEV grid state.

`dx`, `bx`, `nx` are Parameters in the upstream module, so they are checkpoint entries; they are computed exactly
as upstream does (float32 dx/bx, truncated int64 nx). The lifting to BEV (geometry + sum pooling over precomputed
indices) is calibration-dependent and lives in `bevport.geometry`; it is not part of any exported graph.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from bevport.geometry.lss import grid_params


class LSSV2XTransform(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_bins: int, xbound: Sequence[float],
                 ybound: Sequence[float], zbound: Sequence[float]):
        super().__init__()
        self.C = out_channels
        self.D = num_bins
        dx, bx, nx = (torch.from_numpy(a) for a in grid_params(xbound, ybound, zbound))
        self.dx = nn.Parameter(dx, requires_grad=False)
        self.bx = nn.Parameter(bx, requires_grad=False)
        self.nx = nn.Parameter(nx, requires_grad=False)
        self.depthnet = nn.Conv2d(in_channels, self.D + self.C, 1)

    def get_cam_feats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B,in,fH,fW] -> (features [B,C,fH,fW], height-bin weights [B,D,fH,fW] softmaxed over D)."""
        x = self.depthnet(x)
        depth = x[:, : self.D].softmax(dim=1)
        feat = x[:, self.D: self.D + self.C]
        return feat, depth


def create_frustum(image_size: Sequence[int], feature_size: Sequence[int], dbound: Sequence[float]) -> torch.Tensor:
    """[D, fH, fW, 3] (u, v, depth) as MIT BEVFusion's BaseTransform.create_frustum computes it in float32:
    depth = arange(*dbound), u / v = linspace over the network input's pixel range at the feature positions."""
    (ih, iw), (fh, fw) = image_size, feature_size
    ds = torch.arange(*dbound, dtype=torch.float).view(-1, 1, 1).expand(-1, fh, fw)
    d = ds.shape[0]
    xs = torch.linspace(0, iw - 1, fw, dtype=torch.float).view(1, 1, fw).expand(d, fh, fw)
    ys = torch.linspace(0, ih - 1, fh, dtype=torch.float).view(1, fh, 1).expand(d, fh, fw)
    return torch.stack((xs, ys, ds), -1)


class LSSTransform(nn.Module):
    """MIT BEVFusion's LSS view transform: depthnet (D depth bins + C context channels), the frozen frustum and grid
    Parameters, and the stride-`downsample` conv stack applied to the pooled BEV map."""

    def __init__(self, in_channels: int, out_channels: int, image_size: Sequence[int], feature_size: Sequence[int],
                 xbound: Sequence[float], ybound: Sequence[float], zbound: Sequence[float], dbound: Sequence[float],
                 downsample: int = 1):
        super().__init__()
        self.C = out_channels
        dx, bx, nx = (torch.from_numpy(a) for a in grid_params(xbound, ybound, zbound))
        self.dx = nn.Parameter(dx, requires_grad=False)
        self.bx = nn.Parameter(bx, requires_grad=False)
        self.nx = nn.Parameter(nx, requires_grad=False)
        self.frustum = nn.Parameter(create_frustum(image_size, feature_size, dbound), requires_grad=False)
        self.D = self.frustum.shape[0]
        self.depthnet = nn.Conv2d(in_channels, self.D + self.C, 1)
        if downsample > 1:
            c = out_channels
            self.downsample = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True),
                nn.Conv2d(c, c, 3, stride=downsample, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True))
        else:
            self.downsample = nn.Identity()

    def get_cam_feats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B,in,fH,fW] -> (context [B,C,fH,fW], depth distribution [B,D,fH,fW] softmaxed over D). Upstream forms
        their outer product [B,C,D,fH,fW] before pooling; the pooling here sums depth x context per cell instead."""
        x = self.depthnet(x)
        return x[:, self.D: self.D + self.C], x[:, : self.D].softmax(dim=1)
