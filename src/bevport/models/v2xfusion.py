"""V2XFusion (BEVFusion with NVIDIA's V2X changes): camera ResNet34 + PointPillars LiDAR, ConvFuser, ResNet/LSSFPN
decoder, CenterHead. Module tree and parameter names are those of the upstream `BEVFusion`, so its state_dict loads
key for key.

The forward is split where the deploy graphs are split (camera / PFE / fuser+decoder / head); BEV pooling and
voxelization depend on calibration and point clouds and live in `bevport.geometry`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from bevport.models.head import CenterHead
from bevport.models.necks import GeneralizedLSSFPN, LSSFPN
from bevport.models.pillars import PillarFeatureNet, PointPillarsEncoder, PointPillarsScatter
from bevport.models.resnet import GeneralizedResNet, ResNet
from bevport.models.vtransform import LSSV2XTransform
from bevport.recipe import Recipe


class ConvFuser(nn.Sequential):
    """cat([camera BEV, LiDAR BEV]) -> conv3x3 (no bias) -> BN -> ReLU."""

    def __init__(self, in_channels: List[int], out_channels: int):
        super().__init__(nn.Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(True))

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        return super().forward(torch.cat(inputs, dim=1))


class V2XFusion(nn.Module):
    def __init__(self, recipe: Recipe):
        super().__init__()
        m = recipe.model
        cam, lidar, vt = m.camera, m.lidar, m.camera.vtransform
        self.neck_output_level = cam.neck.output_level
        camera = nn.ModuleDict({
            "backbone": ResNet(cam.backbone.depth, cam.backbone.out_indices),
            "neck": GeneralizedLSSFPN(cam.neck.in_channels, cam.neck.out_channels, cam.neck.start_level,
                                      cam.neck.upsample.align_corners, cam.neck.upsample.mode),
            "vtransform": LSSV2XTransform(vt.in_channels, vt.out_channels, recipe.num_height_bins,
                                          vt.xbound, vt.ybound, vt.zbound),
        })
        pfn = PillarFeatureNet(recipe.input.point_dims, lidar.pfn.feat_channels, lidar.voxelize.voxel_size,
                               lidar.voxelize.point_cloud_range, lidar.pfn.input_bn_eps, lidar.pfn.norm_eps)
        scatter = PointPillarsScatter(lidar.scatter.in_channels, lidar.scatter.output_shape)
        self.encoders = nn.ModuleDict({
            "camera": camera,
            "lidar": nn.ModuleDict({"backbone": PointPillarsEncoder(pfn, scatter)}),
        })
        self.fuser = ConvFuser(m.fuser.in_channels, m.fuser.out_channels)
        self.decoder = nn.ModuleDict({
            "backbone": GeneralizedResNet(m.decoder.backbone.in_channels, m.decoder.backbone.blocks),
            "neck": LSSFPN(m.decoder.neck.in_indices, m.decoder.neck.in_channels, m.decoder.neck.out_channels,
                           m.decoder.neck.scale_factor),
        })
        h = m.head
        self.heads = nn.ModuleDict({"object": CenterHead(
            h.in_channels, h.tasks, h.common_heads, h.share_conv_channel, h.head_conv, h.final_kernel,
            h.num_heatmap_convs, h.init_bias)})

    # Sub-networks, in the order the deploy binary runs them.
    @property
    def pfn(self) -> PillarFeatureNet:
        return self.encoders["lidar"]["backbone"].pts_voxel_encoder

    @property
    def scatter(self) -> PointPillarsScatter:
        return self.encoders["lidar"]["backbone"].pts_middle_encoder

    def camera_features(self, img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised image [B,3,H,W] -> (features [B,C,fH,fW], height-bin weights [B,D,fH,fW])."""
        cam = self.encoders["camera"]
        x = cam["neck"](cam["backbone"](img))[self.neck_output_level]
        return cam["vtransform"].get_cam_feats(x)

    def pillar_features(self, feats: torch.Tensor, sizes: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.pfn(feats, sizes, coords)

    def decode_bev(self, cam_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        """Fuser + decoder backbone + decoder neck: the deploy binary's `fuser` graph."""
        x = self.fuser([cam_bev, lidar_bev])
        return self.decoder["neck"](self.decoder["backbone"](x))

    def head(self, middle: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        return self.heads["object"](middle)
