"""PointPillars encoder as NVIDIA trained it: feature decoration, PFN with an extra input BatchNorm1d(9), scatter.

Eval-mode numerics follow the training forward exactly: the 9 decorated features are zeroed on padded slots
*before* the input BN, padded slots still take part in the max (they contribute relu(const)), the PFN norm has
eps 1e-3, and the scatter writes pillar v's features at canvas[:, x_idx, y_idx] (coors = (batch, x, y, z)).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class PFNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, input_bn_eps: float = 1e-5, norm_eps: float = 1e-3):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_channels, eps=input_bn_eps)
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels, eps=norm_eps, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, P, 9] -> [M, out] (max over the P slots)."""
        x = self.bn(x.permute(0, 2, 1)).permute(0, 2, 1)
        x = self.linear(x)
        x = self.norm(x.permute(0, 2, 1)).permute(0, 2, 1)
        return F.relu(x).max(dim=1)[0]

    def folded(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(W [out, in], b [out]) with relu(x @ W.T + b) == eval forward before the max; folded in float64."""
        bn, norm = self.bn, self.norm
        s1 = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        s2 = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
        w = self.linear.weight.double()
        weight = s2.view(-1, 1) * w * s1.view(1, -1)
        bias = s2 * (w @ (bn.bias.double() - bn.running_mean.double() * s1) - norm.running_mean.double()) \
            + norm.bias.double()
        return weight.float(), bias.float()


class PillarFeatureNet(nn.Module):
    def __init__(self, in_channels: int, feat_channels: Sequence[int], voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], input_bn_eps: float = 1e-5, norm_eps: float = 1e-3):
        super().__init__()
        decorated = in_channels + 5  # + cluster offsets (3) + pillar-centre offsets (2)
        self.pfn_layers = nn.ModuleList([PFNLayer(decorated, feat_channels[0], input_bn_eps, norm_eps)])
        self.vx, self.vy = voxel_size[0], voxel_size[1]
        self.x_offset = self.vx / 2 + point_cloud_range[0]
        self.y_offset = self.vy / 2 + point_cloud_range[1]

    def decorate(self, features: torch.Tensor, num_points: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        """[M,P,4] raw points (zero padded), [M] point counts, [M,4] (b,x,y,z) -> [M,P,9] masked features.

        The divisor is clamped to 1 so that all-zero padding rows give zeros rather than NaN; every real voxel
        has at least one point, so this changes nothing the training forward computed.
        """
        count = num_points.to(features.dtype).clamp(min=1).view(-1, 1, 1)
        mean = features[:, :, :3].sum(dim=1, keepdim=True) / count
        f_cluster = features[:, :, :3] - mean
        cx = coors[:, 1].to(features.dtype).unsqueeze(1) * self.vx + self.x_offset
        cy = coors[:, 2].to(features.dtype).unsqueeze(1) * self.vy + self.y_offset
        f_center = torch.stack([features[:, :, 0] - cx, features[:, :, 1] - cy], dim=-1)
        decorated = torch.cat([features, f_cluster, f_center], dim=-1)
        slots = torch.arange(features.shape[1], device=features.device).view(1, -1)
        mask = (num_points.view(-1, 1).to(torch.int64) > slots).to(features.dtype).unsqueeze(-1)
        return decorated * mask

    def forward(self, features: torch.Tensor, num_points: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        return self.pfn_layers[0](self.decorate(features, num_points, coors))


class PointPillarsScatter(nn.Module):
    def __init__(self, in_channels: int, output_shape: Sequence[int]):
        super().__init__()
        self.in_channels = in_channels
        self.nx, self.ny = int(output_shape[0]), int(output_shape[1])

    def forward(self, voxel_features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        canvases = []
        for b in range(batch_size):
            canvas = voxel_features.new_zeros(self.in_channels, self.nx * self.ny)
            mine = coords[:, 0] == b
            index = (coords[mine, 1] * self.ny + coords[mine, 2]).long()
            canvas[:, index] = voxel_features[mine].t()
            canvases.append(canvas)
        return torch.stack(canvases).view(batch_size, self.in_channels, self.nx, self.ny)


class PointPillarsEncoder(nn.Module):
    def __init__(self, pts_voxel_encoder: PillarFeatureNet, pts_middle_encoder: PointPillarsScatter):
        super().__init__()
        self.pts_voxel_encoder = pts_voxel_encoder
        self.pts_middle_encoder = pts_middle_encoder

    def forward(self, feats, coords, batch_size, sizes):
        return self.pts_middle_encoder(self.pts_voxel_encoder(feats, sizes, coords), coords, batch_size)
