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
