"""The four deploy graphs as torch modules wrapping the native model: camera, PFE, fuser (+decoder), head.

Each takes and returns exactly the tensors of the deploy contract, in its order.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bevport.contract import GraphSpec
from bevport.models.v2xfusion import V2XFusion


class CameraGraph(nn.Module):
    """img -> (camera_feature, camera_depth_weights).

    The feature is declared [1,C,fH,fW] but its memory holds [1,fH,fW,C] (NHWC): the deploy binary's BEV pool reads
    it channel-minor. The permute + reshape below produces exactly that buffer under the declared shape.
    """

    def __init__(self, model: V2XFusion):
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feat, depth = self.model.camera_features(img)
        nhwc = feat.permute(0, 2, 3, 1).reshape(feat.shape)
        return nhwc, depth


class PFEGraph(nn.Module):
    """(features [V,P,4], num_voxels [V], coors [V,4]) -> pillar_features [V,64], decoration inside the graph.

    The deploy binary hands over P = 100 point slots per voxel; training's voxelizer kept the first
    `max_points` (10) points of each voxel in file order. The graph therefore reads the first `max_points` slots
    and counts at most `max_points` points, which reproduces the training-time features of every voxel; slots
    beyond `max_points` are ignored. The PFN's BN -> Linear -> BN is folded into one affine in float64, as NVIDIA's
    export does.
    """

    def __init__(self, model: V2XFusion, max_points: int):
        super().__init__()
        self.pfn = model.pfn
        self.max_points = max_points
        weight, bias = model.pfn.pfn_layers[0].folded()
        self.register_buffer("weight_t", weight.t().contiguous())
        self.register_buffer("bias", bias)

    def forward(self, features: torch.Tensor, num_voxels: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        points = features[:, : self.max_points]
        counts = torch.clamp(num_voxels, max=self.max_points)
        x = self.pfn.decorate(points, counts, coors)
        x = F.relu(torch.matmul(x, self.weight_t) + self.bias)
        return x.max(dim=1)[0]


class FuserGraph(nn.Module):
    """(cam_bev, lidar_bev) -> middle: ConvFuser + decoder backbone + decoder neck."""

    def __init__(self, model: V2XFusion):
        super().__init__()
        self.model = model

    def forward(self, cam_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        return self.model.decode_bev(cam_bev, lidar_bev)


class HeadGraph(nn.Module):
    """middle -> the 12 raw head outputs (heatmap logits, log sizes), in the contract's order."""

    def __init__(self, model: V2XFusion, spec: GraphSpec):
        super().__init__()
        self.model = model
        self.roles: List[Tuple[int, str]] = [t.role for t in spec.outputs]  # type: ignore[misc]

    def forward(self, middle: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        tasks = self.model.head(middle)
        return tuple(tasks[t][attr] for t, attr in self.roles)


def build_graph(key: str, model: V2XFusion, spec: GraphSpec, max_points: int) -> nn.Module:
    if key == "camera":
        return CameraGraph(model)
    if key in ("lidar_pfe", "lidar_pfe_static"):
        return PFEGraph(model, max_points)
    if key == "fuser":
        return FuserGraph(model)
    if key == "head":
        return HeadGraph(model, spec)
    raise KeyError(key)
