"""CUDA-V2XFusion's own modules behind the interface bevport's graphs and parity use (`models.v2xfusion`).

Each method runs the training tree's code path for one deploy graph, as NVIDIA's export script
(scripts/export_v2xfusion.py) cuts the model: the camera backbone + neck + `get_cam_feats(export=True)`, the pillar
encoder (`PillarFeatureNet.forward`, BN -> Linear -> BN as trained, not folded), fuser + decoder backbone + neck, and
the CenterHead's shared conv + task heads (`forward_single`).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from bevport.contract import GraphSpec
from bevport.models import v2xfusion as native
from bevport.pipelines.v2xfusion import CAMERA, FUSER, HEAD, PFE, PFE_DYNAMIC

# What the recipe's checkpoints were trained with; named in every error about a tree that does not import.
EXPECTED_TREE = ("MIT BEVFusion at db75150717a9462cb60241e36ba28d65f6908607 with NVIDIA Lidar_AI_Solution's "
                 "CUDA-V2XFusion files copied over it")


class Reference(nn.Module):
    def __init__(self, model: nn.Module, recipe):
        super().__init__()
        self.model = model
        self.neck_output_level = recipe.model.camera.neck.output_level
        self.pillar_channels = int(recipe.model.lidar.pfn.feat_channels[-1])

    @property
    def pfn(self) -> nn.Module:
        return self.model.encoders["lidar"]["backbone"].pts_voxel_encoder

    def camera_features(self, img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cam = self.model.encoders["camera"]
        x = cam["neck"](cam["backbone"](img))
        if not isinstance(x, torch.Tensor):
            x = x[self.neck_output_level]
        feat, depth, _ = cam["vtransform"].get_cam_feats(x, export=True)
        return feat, depth

    def pillar_features(self, feats: torch.Tensor, sizes: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The trained PFN on voxels of at most `max_num_points` points. Upstream divides the point sum by the count,
        so padding rows (count 0) would be 0/0: they are given count 1, which leaves every real voxel unchanged."""
        # upstream ends in `.squeeze()`: [V, 64] for V > 1; the reshape keeps V = 1 and the graph's V dynamic
        return self.pfn(feats, sizes.clamp(min=1), coords).reshape(-1, self.pillar_channels)

    def decode_bev(self, cam_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        x = self.model.fuser([cam_bev, lidar_bev])
        x = self.model.decoder["backbone"](x)
        x = self.model.decoder["neck"](x)
        return x if isinstance(x, torch.Tensor) else x[0]

    def head(self, middle: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        return self.model.heads["object"].forward_single(middle)


class PFEGraph(nn.Module):
    """The contract's PFE ports around the trained PFN: the first `max_points` of the deploy binary's slots."""

    def __init__(self, reference: Reference, max_points: int):
        super().__init__()
        self.reference = reference
        self.max_points = max_points

    def forward(self, features: torch.Tensor, num_voxels: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        keep = self.max_points
        return self.reference.pillar_features(features[:, :keep], num_voxels.clamp(max=keep), coors)


def export_modules(reference: Reference, recipe, contract) -> Dict[str, nn.Module]:
    max_points = recipe.model.lidar.voxelize.max_num_points
    return {CAMERA: native.CameraGraph(reference), PFE_DYNAMIC: PFEGraph(reference, max_points),
            PFE: PFEGraph(reference, max_points), FUSER: native.FuserGraph(reference),
            HEAD: native.HeadGraph(reference, contract[HEAD])}


def sample_inputs(recipe, spec: GraphSpec, seed: int = 0) -> Dict[str, np.ndarray]:
    """The native parity inputs, except that every PFE row is a real voxel: the original code has no padding rows
    (bevport's graph gives them finite features by its own rule, which is not the original's to check)."""
    if spec.key not in (PFE, PFE_DYNAMIC):
        return native.sample_inputs(recipe, spec, seed)
    rng = np.random.default_rng(seed)
    v, slots, _ = spec.inputs[0].concrete_shape(native.DYNAMIC_V)
    counts = np.where(rng.uniform(size=v) < 0.3, rng.integers(11, slots + 1, v), rng.integers(1, 11, v))
    return dict(zip([t.name for t in spec.inputs], native.random_pillars(recipe, rng, counts, slots)))


def prepare_feed(recipe, spec: GraphSpec, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A dataset frame's inputs (as `bevport calibrate` records them) for the comparison: the PFE's padding rows
    (count 0, which the original code never sees) are replaced by the frame's real voxels, repeated."""
    if spec.key not in (PFE, PFE_DYNAMIC):
        return feed
    names = [t.name for t in spec.inputs]
    real = np.flatnonzero(feed[names[1]] > 0)
    if real.size == 0:
        return None
    rows = real[np.arange(len(feed[names[1]])) % real.size]
    return {name: feed[name][rows] for name in names}
