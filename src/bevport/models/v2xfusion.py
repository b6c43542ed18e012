"""V2XFusion (BEVFusion with NVIDIA's V2X changes): camera ResNet34 + PointPillars LiDAR, ConvFuser, ResNet/LSSFPN
decoder, CenterHead. Module tree and parameter names are those of the upstream `BEVFusion`, so its state_dict loads
key for key.

The forward is split where the deploy graphs are split (camera / PFE / fuser+decoder / head); BEV pooling and
voxelization depend on calibration and point clouds and live in `bevport.geometry`. Below the model: the wrappers
that export each graph with exactly the contract's ports, the parity inputs and references, and the forward pass
that gives a synthetic checkpoint its BatchNorm statistics. The torch-free side is `bevport.pipelines.v2xfusion`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bevport.contract import Contract, GraphSpec
from bevport.geometry.lss import depth_bins
from bevport.models.head import CenterHead, head_tensors
from bevport.models.necks import GeneralizedLSSFPN, LSSFPN
from bevport.models.pillars import PillarFeatureNet, PointPillarsEncoder, PointPillarsScatter
from bevport.models.resnet import GeneralizedResNet, ResNet
from bevport.models.synthetic import smooth_noise
from bevport.models.vtransform import LSSV2XTransform
from bevport.pipelines.v2xfusion import CAMERA, FUSER, HEAD, PFE, PFE_DYNAMIC
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
            "vtransform": LSSV2XTransform(vt.in_channels, vt.out_channels, depth_bins(vt),
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


def build(recipe: Recipe) -> V2XFusion:
    return V2XFusion(recipe)


# ------------------------------------------------------------------------------------------- the exported graphs

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

    The arithmetic is `PillarFeatureNet.decorate` + the folded layer, laid out for a CPU plugin (measured in
    OpenVINO: 17 -> 10 ms at V = 7000 on 2 cores): slots lead ([P,V,.]) so the max over slots is a reduction over
    the outer axis (over the middle axis of [V,P,64] it cost 8 ms alone); the 9 decorated channels come from one
    MatMul with a 0/1 matrix minus per-pillar offsets (exact: every product is x*1 or x*0) instead of a Concat on a
    4-wide axis, which runs a reference kernel; bias and ReLU follow the max (both are monotone, so
    max(relu(y + b)) == relu(max(y) + b) exactly) and touch V*64 values instead of V*P*64.
    """

    def __init__(self, model: V2XFusion, max_points: int):
        super().__init__()
        self.pfn = model.pfn
        self.max_points = max_points
        weight, bias = model.pfn.pfn_layers[0].folded()
        self.register_buffer("weight_t", weight.t().contiguous())
        self.register_buffer("bias", bias)
        # point (x, y, z, i) -> decorated (x, y, z, i, x, y, z, x, y) before the offsets are subtracted
        copies = torch.zeros(4, 9)
        for src, dst in ((0, 0), (1, 1), (2, 2), (3, 3), (0, 4), (1, 5), (2, 6), (0, 7), (1, 8)):
            copies[src, dst] = 1.0
        self.register_buffer("copies", copies)

    def forward(self, features: torch.Tensor, num_voxels: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        pfn = self.pfn
        points = features[:, : self.max_points].transpose(0, 1)                   # [P, V, 4]
        counts = torch.clamp(num_voxels, max=self.max_points)
        mean = points.sum(dim=0)[:, :3] / counts.to(points.dtype).clamp(min=1).unsqueeze(1)
        cx = coors[:, 1].to(points.dtype) * pfn.vx + pfn.x_offset
        cy = coors[:, 2].to(points.dtype) * pfn.vy + pfn.y_offset
        offsets = torch.cat([torch.zeros_like(points[0]), mean, torch.stack([cx, cy], -1)], -1)  # [V, 9]
        decorated = torch.matmul(points, self.copies.to(points.dtype)) - offsets                 # [P, V, 9]
        slots = torch.arange(self.max_points, device=features.device).view(-1, 1)
        mask = (counts.view(1, -1).to(torch.int64) > slots).to(points.dtype).unsqueeze(-1)
        y = torch.matmul(decorated * mask, self.weight_t)                                       # [P, V, 64]
        return F.relu(y.max(dim=0)[0] + self.bias)


class FuserGraph(nn.Module):
    """(cam_bev, lidar_bev) -> middle: ConvFuser + decoder backbone + decoder neck."""

    def __init__(self, model: V2XFusion):
        super().__init__()
        self.model = model

    def forward(self, cam_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        return self.model.decode_bev(cam_bev, lidar_bev)


class HeadGraph(nn.Module):
    """middle -> the raw head outputs (heatmap logits, log sizes), one tensor per contract output."""

    def __init__(self, model: V2XFusion, spec: GraphSpec):
        super().__init__()
        self.model = model
        self.slices = [t.slices for t in spec.outputs]

    def forward(self, middle: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return head_tensors(self.model.head(middle), self.slices)


def export_modules(model: V2XFusion, recipe: Recipe, contract: Contract) -> Dict[str, nn.Module]:
    """The module each exported graph traces, by contract key, in export order."""
    max_points = recipe.model.lidar.voxelize.max_num_points
    return {CAMERA: CameraGraph(model), PFE_DYNAMIC: PFEGraph(model, max_points), PFE: PFEGraph(model, max_points),
            FUSER: FuserGraph(model), HEAD: HeadGraph(model, contract[HEAD])}


# ------------------------------------------------------------------------------------ parity inputs and references

DYNAMIC_V = 3000  # voxels fed to the dynamic-V PFE graph


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


def _pillar_inputs(recipe: Recipe, spec: GraphSpec, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Voxels as the deploy binary fills them: 100 slots (often > 10 points), trailing all-zero padding rows."""
    v, slots, _ = spec.inputs[0].concrete_shape(DYNAMIC_V)
    filled = int(v * 0.7)
    counts = np.where(rng.uniform(size=filled) < 0.3, rng.integers(11, slots + 1, filled), rng.integers(1, 11, filled))
    out = {}
    for t, part in zip(spec.inputs, random_pillars(recipe, rng, counts, slots)):
        out[t.name] = np.zeros((v,) + part.shape[1:], part.dtype)
        out[t.name][:filled] = part
    return out


def sample_inputs(recipe: Recipe, spec: GraphSpec, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded inputs with the statistics each graph sees in use, by input name."""
    rng = np.random.default_rng(seed)
    if spec.key in (PFE, PFE_DYNAMIC):
        return _pillar_inputs(recipe, spec, rng)
    out = {}
    for i, t in enumerate(spec.inputs):
        x = rng.normal(size=t.shape).astype(np.float32)
        # BEV maps and the decoder output come after ReLUs; the LiDAR BEV is mostly empty cells.
        if spec.key in (FUSER, HEAD):
            x = np.maximum(x, 0)
        if spec.key == FUSER and i == 1:
            x *= rng.uniform(size=(1, 1) + t.shape[2:]) < 0.3
        out[t.name] = x
    return out


@torch.no_grad()
def reference_outputs(model: V2XFusion, recipe: Recipe, spec: GraphSpec,
                      inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """What the native modules compute for a graph's inputs, in the contract's output order and layout. Float inputs
    take the model's dtype (a float64 copy of the model gives the float64 reference)."""
    dtype = next(model.parameters()).dtype
    x = [torch.from_numpy(inputs[t.name]) for t in spec.inputs]
    x = [t.to(dtype) if t.is_floating_point() else t for t in x]
    if spec.key == CAMERA:
        feat, depth = model.camera_features(x[0])
        return [feat.permute(0, 2, 3, 1).contiguous().numpy().reshape(feat.shape), depth.numpy()]
    if spec.key in (PFE, PFE_DYNAMIC):
        keep = recipe.model.lidar.voxelize.max_num_points
        features, counts, coors = x
        return [model.pillar_features(features[:, :keep], counts.clamp(max=keep), coors).numpy()]
    if spec.key == FUSER:
        return [model.decode_bev(*x).numpy()]
    if spec.key == HEAD:
        return [t.numpy() for t in head_tensors(model.head(x[0]), [t.slices for t in spec.outputs])]
    raise KeyError(spec.key)


# ----------------------------------------------------------------------------------------- synthetic checkpoint

@torch.no_grad()
def synthetic_forward(model: V2XFusion, recipe: Recipe, rng: np.random.Generator) -> None:
    """One train-mode pass over seeded, image-like inputs through every BatchNorm (float64 model): the statistics a
    synthetic checkpoint stores are those of its own activations."""
    h, w = recipe.input.image_size
    img = smooth_noise(rng, (1, 3, h // 4, w // 4), 8) + 0.3 * torch.from_numpy(rng.normal(size=(1, 3, h // 4, w // 4)))
    model.camera_features(img)
    slots = recipe.model.lidar.voxelize.max_num_points
    feats, sizes, coords = random_pillars(recipe, rng, rng.integers(1, slots + 1, size=3000), slots)
    model.pillar_features(torch.from_numpy(feats).double(), torch.from_numpy(sizes), torch.from_numpy(coords))
    nx, ny = recipe.bev_shape
    vt, scatter = recipe.model.camera.vtransform, recipe.model.lidar.scatter
    cam_bev = smooth_noise(rng, (1, vt.out_channels, nx, ny), 4).abs() * 2.0
    lidar_bev = F.relu(smooth_noise(rng, (1, scatter.in_channels, nx, ny), 2)) \
        * torch.from_numpy(rng.uniform(size=(1, 1, nx, ny)) < 0.3)
    model.head(model.decode_bev(cam_bev, lidar_bev))
