"""Necks: GeneralizedLSSFPN (camera) and LSSFPN (BEV decoder), plus mmcv's ConvModule naming (conv, bn)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """conv (no bias) -> BatchNorm2d -> ReLU, with mmcv's attribute names `conv` and `bn`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class GeneralizedLSSFPN(nn.Module):
    """Top-down FPN that concatenates [finer level, upsampled coarser level] and fuses with 1x1 then 3x3 convs.

    Level i's lateral conv takes in_channels[i] plus the raw top level's channels (for the last level) or the fused
    output of level i+1. Every level is computed, as upstream does; BEVFusion reads one of them (`output_level`).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, start_level: int = 0,
                 align_corners: bool = False, mode: str = "bilinear"):
        super().__init__()
        self.in_channels = list(in_channels)
        self.start_level = start_level
        self.upsample_cfg = dict(mode=mode, align_corners=align_corners)
        end_level = len(in_channels) - 1
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, end_level):
            coarser = in_channels[i + 1] if i == end_level - 1 else out_channels
            self.lateral_convs.append(ConvModule(in_channels[i] + coarser, out_channels, 1))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        laterals = list(inputs[self.start_level:])
        levels = len(laterals) - 1
        for i in range(levels - 1, -1, -1):
            coarse = F.interpolate(laterals[i + 1], size=laterals[i].shape[2:], **self.upsample_cfg)
            laterals[i] = self.fpn_convs[i](self.lateral_convs[i](torch.cat([laterals[i], coarse], dim=1)))
        return tuple(laterals[:levels])


class LSSFPN(nn.Module):
    """BEV decoder neck: cat([upsampled coarse, fine]) -> 1x1 + 3x3 fuse -> x`scale_factor` upsample + 3x3."""

    def __init__(self, in_indices: Sequence[int], in_channels: Sequence[int], out_channels: int,
                 scale_factor: int = 1):
        super().__init__()
        self.in_indices = list(in_indices)
        self.scale_factor = scale_factor
        self.fuse = nn.Sequential(
            nn.Conv2d(in_channels[0] + in_channels[1], out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )
        if scale_factor > 1:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(True),
            )

    def forward(self, x: List[torch.Tensor]) -> torch.Tensor:
        coarse, fine = x[self.in_indices[0]], x[self.in_indices[1]]
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        out = self.fuse(torch.cat([coarse, fine], dim=1))
        return self.upsample(out) if self.scale_factor > 1 else out
