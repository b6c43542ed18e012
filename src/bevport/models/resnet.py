"""ResNets of V2XFusion: the mmdet ResNet34 camera backbone and the mmcv-style GeneralizedResNet BEV decoder.

Both use the same BasicBlock (conv3x3-BN-ReLU-conv3x3-BN, + 1x1 downsample, add, ReLU; no conv biases, BN eps 1e-5),
with the attribute names of the checkpoint: `conv1 bn1 conv2 bn2 downsample.{0,1}`.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_res_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(inplanes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """mmdet ResNet (style 'pytorch', BasicBlock depths): returns the stages named by `out_indices`."""

    def __init__(self, depth: int = 34, out_indices: Sequence[int] = (1, 2, 3)):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = 64 * 2 ** i
            setattr(self, f"layer{i + 1}", make_res_layer(inplanes, planes, blocks, 1 if i == 0 else 2))
            inplanes = planes
        self.num_stages = len(STAGE_BLOCKS[depth])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


class GeneralizedResNet(nn.ModuleList):
    """BEV decoder backbone: one res layer per `[num_blocks, out_channels, stride]`; returns every stage's output."""

    def __init__(self, in_channels: int, blocks: Sequence[Sequence[int]]):
        super().__init__()
        for num_blocks, out_channels, stride in blocks:
            self.append(make_res_layer(in_channels, out_channels, num_blocks, stride))
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for stage in self:
            x = stage(x)
            outs.append(x)
        return outs
