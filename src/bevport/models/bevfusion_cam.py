"""MIT BEVFusion, camera-only detection (`configs/nuscenes/det/centerhead/lssfpn/camera/256x704/swint`): Swin-T +
GeneralizedLSSFPN per camera, LSS view transform (depth distribution x context, summed per BEV cell, stride-2
downsample), GeneralizedResNet + LSSFPN BEV decoder, CenterHead with the six nuScenes tasks. Module tree and
parameter names are those of the upstream `BEVFusion` (no LiDAR encoder, no fuser), so `camera-only-det.pth` loads
key for key.

The forward is split where the deploy parts are split (image encoder / lift / pool / downsample / decoder + head).
`pool_reference` is upstream's `get_geometry` + `bev_pool` in PyTorch, point by point: the reference the exported
pooling (over per-rig index tables) is checked against.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from bevport.contract import Contract, GraphSpec
from bevport.models.head import CenterHead, head_tensors
from bevport.models.necks import LSSFPN, GeneralizedLSSFPN
from bevport.models.resnet import GeneralizedResNet
from bevport.models.swin import SwinTransformer
from bevport.models.synthetic import smooth_noise
from bevport.models.vtransform import LSSTransform
from bevport.pipelines.bevfusion_cam import DECODER, DOWNSAMPLE, ENCODER, LIFT, POOL


class BEVFusionCamera(nn.Module):
    """`model` is the recipe's model section, `image_size` the network input [H, W]."""

    def __init__(self, model, image_size: Sequence[int]):
        super().__init__()
        cam, vt, dec, h = model.camera, model.camera.vtransform, model.decoder, model.head
        sw = cam.backbone
        self.neck_output_level = cam.neck.output_level
        self.encoders = nn.ModuleDict({"camera": nn.ModuleDict({
            "backbone": SwinTransformer(sw.embed_dims, sw.depths, sw.num_heads, sw.window_size, sw.mlp_ratio,
                                        sw.out_indices, sw.patch_size, sw.qkv_bias),
            "neck": GeneralizedLSSFPN(cam.neck.in_channels, cam.neck.out_channels, cam.neck.start_level,
                                      cam.neck.upsample.align_corners, cam.neck.upsample.mode),
            "vtransform": LSSTransform(vt.in_channels, vt.out_channels, image_size, vt.feature_size, vt.xbound,
                                       vt.ybound, vt.zbound, vt.dbound, vt.downsample),
        })})
        self.decoder = nn.ModuleDict({
            "backbone": GeneralizedResNet(dec.backbone.in_channels, dec.backbone.blocks),
            "neck": LSSFPN(dec.neck.in_indices, dec.neck.in_channels, dec.neck.out_channels, dec.neck.scale_factor),
        })
        self.heads = nn.ModuleDict({"object": CenterHead(
            h.in_channels, h.tasks, h.common_heads, h.share_conv_channel, h.head_conv, h.final_kernel,
            h.num_heatmap_convs, h.init_bias)})

    @property
    def vtransform(self) -> LSSTransform:
        return self.encoders["camera"]["vtransform"]

    # The deploy parts, in the order a frame passes them.
    def image_features(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised images [N,3,H,W] (one per camera) -> features [N,C,fH,fW] (the neck's `output_level`)."""
        cam = self.encoders["camera"]
        return cam["neck"](cam["backbone"](img))[self.neck_output_level]

    def lift(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[N,C,fH,fW] -> (context [N,C',fH,fW], depth distribution [N,D,fH,fW])."""
        return self.vtransform.get_cam_feats(features)

    def downsample(self, bev: torch.Tensor) -> torch.Tensor:
        return self.vtransform.downsample(bev)

    def decode(self, bev: torch.Tensor) -> torch.Tensor:
        return self.decoder["neck"](self.decoder["backbone"](bev))

    def head(self, middle: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        return self.heads["object"](middle)

    # Upstream's pooling, point by point.
    def geometry(self, camera2lidar: torch.Tensor, intrinsics: torch.Tensor, img_aug: torch.Tensor,
                 lidar_aug: torch.Tensor) -> torch.Tensor:
        """LiDAR-frame position [N,D,fH,fW,3] of every frustum point: upstream's `BaseTransform.get_geometry` for
        one sample (camera2lidar, intrinsics, img_aug [N,4,4], lidar_aug [4,4]), same operations and order."""
        n = camera2lidar.shape[0]
        post_rots, post_trans = img_aug[:, :3, :3], img_aug[:, :3, 3]
        points = self.vtransform.frustum.to(camera2lidar.dtype) - post_trans.view(n, 1, 1, 1, 3)
        points = torch.inverse(post_rots).view(n, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1))
        points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:3, :]), -2)
        combine = camera2lidar[:, :3, :3].matmul(torch.inverse(intrinsics[:, :3, :3]))
        points = combine.view(n, 1, 1, 1, 3, 3).matmul(points).squeeze(-1)
        points = points + camera2lidar[:, :3, 3].view(n, 1, 1, 1, 3)
        points = lidar_aug[:3, :3].view(1, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1)).squeeze(-1)
        return points + lidar_aug[:3, 3].view(1, 1, 1, 1, 3)

    def pool_reference(self, geom: torch.Tensor, context: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """BEV [1, C*nz, nx, ny]: sum of depth x context over the frustum points of each cell, with upstream's
        float32 index arithmetic (`((p - (bx - dx/2)) / dx).long()`, truncation toward zero) and its x/y/z filter."""
        vt = self.vtransform
        c = context.shape[1]
        feats = (depth.unsqueeze(1) * context.unsqueeze(2)).permute(0, 2, 3, 4, 1).reshape(-1, c)
        index = ((geom - (vt.bx - vt.dx / 2.0)) / vt.dx).long().view(-1, 3)
        nx = vt.nx
        kept = ((index >= 0) & (index < nx)).all(dim=1)
        index, feats = index[kept], feats[kept]
        flat = (index[:, 2] * nx[0] + index[:, 0]) * nx[1] + index[:, 1]
        bev = feats.new_zeros(int(nx[2] * nx[0] * nx[1]), c).index_add_(0, flat, feats)
        bev = bev.view(int(nx[2]), int(nx[0]), int(nx[1]), c).permute(0, 3, 1, 2)
        return bev.reshape(1, -1, int(nx[0]), int(nx[1]))      # z slices concatenated on channels, as upstream

    def pool_tables(self, context: torch.Tensor, depth: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor,
                    first: torch.Tensor, order: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The `pool` part's computation over a rig's tables (`bevport.geometry.lss_depth.pool_tables`): gather
        depth rows, batched MatMul with the context columns, each cell's first group sum gathered and the further
        ones added into their cells (padding into a spare row)."""
        n, d, fh, fw = depth.shape
        c = context.shape[1]
        nx, ny = (int(v) for v in self.vtransform.nx[:2])
        weights = depth.permute(0, 1, 3, 2).reshape(n * d * fw, fh)[rows.long()] * mask
        columns = context.permute(0, 3, 2, 1).reshape(n * fw, fh, c)
        sums = torch.matmul(weights, columns).reshape(-1, c)
        bev = sums[first.long()].index_add_(0, cells.long(), sums[order.long()])
        return bev[:-1].reshape(nx, ny, c).permute(2, 0, 1).unsqueeze(0)

    def forward(self, img: torch.Tensor, camera2lidar: torch.Tensor, intrinsics: torch.Tensor, img_aug: torch.Tensor,
                lidar_aug: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """The whole model on one sample of N camera images: raw head outputs per task."""
        context, depth = self.lift(self.image_features(img))
        bev = self.pool_reference(self.geometry(camera2lidar, intrinsics, img_aug, lidar_aug), context, depth)
        return self.head(self.decode(self.downsample(bev)))


def build(recipe) -> BEVFusionCamera:
    return BEVFusionCamera(recipe.model, recipe.input.image_size).eval()


def synthetic_forward(model: BEVFusionCamera, recipe, rng: np.random.Generator) -> None:
    """One train-mode pass over seeded, image-like inputs through every BatchNorm (float64 model): the statistics a
    synthetic checkpoint stores are those of its own activations. The BEV map fed to the downsample is smooth
    non-negative noise (pooled features are sums of non-negative depth weights times context)."""
    h, w = recipe.input.image_size
    cameras = int(recipe.input.cameras)
    img = smooth_noise(rng, (cameras, 3, h, w), 16) + 0.3 * torch.from_numpy(rng.normal(size=(cameras, 3, h, w)))
    model.lift(model.image_features(img))
    nx, ny = recipe.bev_shape
    bev = smooth_noise(rng, (1, recipe.model.camera.vtransform.out_channels, nx, ny), 4).abs()
    model.head(model.decode(model.downsample(bev)))


# --------------------------------------------------------------------------------------------- exported parts

class ImageEncoderGraph(nn.Module):
    """img [N,3,H,W] -> camera_feature [N,C,fH,fW]: Swin-T + GeneralizedLSSFPN (Qualcomm's Encoder1)."""

    def __init__(self, model: BEVFusionCamera):
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(img)


class LiftGraph(nn.Module):
    """camera_feature -> (context, depth distribution): the depthnet and the softmax over depth bins."""

    def __init__(self, model: BEVFusionCamera):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.lift(features)


class DownsampleGraph(nn.Module):
    def __init__(self, model: BEVFusionCamera):
        super().__init__()
        self.downsample_stack = model.vtransform.downsample

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        return self.downsample_stack(bev)


class DecoderGraph(nn.Module):
    """bev_down -> the CenterHead maps of every task, packed along channels as the contract lays them out."""

    def __init__(self, model: BEVFusionCamera, spec: GraphSpec):
        super().__init__()
        self.model = model
        self.slices = [t.slices for t in spec.outputs]

    def forward(self, bev: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return head_tensors(self.model.head(self.model.decode(bev)), self.slices)


def export_modules(model: BEVFusionCamera, recipe, contract: Contract) -> Dict[str, object]:
    """What each part is exported from, by contract key in export order: a module to trace, or (the pool, which
    has no weights) its ONNX model."""
    from bevport.export.pool_onnx import pool_model

    spec = contract[POOL]
    vt = model.vtransform
    n, d, fh, fw = spec.inputs[1].shape
    pool = pool_model([t.name for t in spec.inputs], spec.outputs[0].name, n, d, (fh, fw), vt.C,
                      recipe.export.pool_groups, recipe.export.pool_scatter_rows, [int(v) for v in vt.nx[:2]])
    return {ENCODER: ImageEncoderGraph(model), LIFT: LiftGraph(model), POOL: pool,
            DOWNSAMPLE: DownsampleGraph(model), DECODER: DecoderGraph(model, contract[DECODER])}


def export_artifacts(model: BEVFusionCamera) -> Dict[str, np.ndarray]:
    """Arrays the runtime needs beside the graphs: the checkpoint's frustum, from which the host computes the pool
    tables of a camera rig (torch.linspace's float32 values depend on the CPU, so it is not recomputed)."""
    return {"frustum": model.vtransform.frustum.detach().cpu().numpy().astype(np.float32)}


# ------------------------------------------------------------------------------------ parity inputs and references

def sample_rig_tables(recipe, frustum: np.ndarray, seed: int = 0):
    """The pool tables (rows, mask, first, order, cells) of the synthetic surround rig of dataset `seed`, at the
    recipe's static sizes."""
    from bevport.data.imageaug import img_aug_matrix
    from bevport.data.surround import dataset_cameras
    from bevport.geometry import lss_depth

    vt = recipe.model.camera.vtransform
    cameras = dataset_cameras(seed)
    ida = img_aug_matrix(recipe)
    k4 = [np.eye(4, dtype=np.float32) for _ in cameras]
    for k, cam in zip(k4, cameras):
        k[:3, :3] = cam.K
    geom = np.stack([lss_depth.geometry(frustum, cam.camera2lidar.astype(np.float32), k, ida,
                                        np.eye(4, dtype=np.float32)) for cam, k in zip(cameras, k4)])
    cells, inside = lss_depth.cells(geom, vt.xbound, vt.ybound, vt.zbound)
    t = lss_depth.pool_tables(cells, inside, recipe.bev_shape, recipe.export.pool_groups,
                              recipe.export.pool_scatter_rows)
    return t.inputs()


def sample_inputs(recipe, spec: GraphSpec, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded inputs with the statistics each part sees in use, by input name."""
    from bevport.models.vtransform import create_frustum

    rng = np.random.default_rng(seed)
    shapes = [t.shape for t in spec.inputs]
    if spec.key == ENCODER:
        n, _, h, w = shapes[0]
        x = smooth_noise(rng, (n, 3, h, w), 16).numpy() + 0.3 * rng.normal(size=(n, 3, h, w))
        return {spec.inputs[0].name: x.astype(np.float32)}
    if spec.key == POOL:
        vt = recipe.model.camera.vtransform
        frustum = create_frustum(recipe.input.image_size, vt.feature_size, vt.dbound).numpy()
        context = rng.normal(size=shapes[0]).astype(np.float32)
        logits = rng.normal(size=shapes[1]) * 2.0
        depth = np.exp(logits - logits.max(axis=1, keepdims=True))
        depth = (depth / depth.sum(axis=1, keepdims=True)).astype(np.float32)
        tables = sample_rig_tables(recipe, frustum, seed)
        return dict(zip([t.name for t in spec.inputs], (context, depth) + tables))
    # lift, downsample, decoder: inputs that follow a ReLU (neck output, pooled BEV, downsampled BEV)
    return {t.name: np.maximum(smooth_noise(rng, t.shape, 4).numpy(), 0).astype(np.float32) for t in spec.inputs}


@torch.no_grad()
def reference_outputs(model: BEVFusionCamera, recipe, spec: GraphSpec,
                      inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """What the native modules compute for a part's inputs, in the contract's output order. Float inputs take the
    model's dtype (a float64 copy of the model gives the float64 reference)."""
    dtype = next(model.parameters()).dtype
    x = [torch.from_numpy(inputs[t.name]) for t in spec.inputs]
    x = [t.to(dtype) if t.is_floating_point() else t for t in x]
    if spec.key == ENCODER:
        return [model.image_features(x[0]).numpy()]
    if spec.key == LIFT:
        return [t.numpy() for t in model.lift(x[0])]
    if spec.key == POOL:
        return [model.pool_tables(*x).numpy()]
    if spec.key == DOWNSAMPLE:
        return [model.downsample(x[0]).numpy()]
    if spec.key == DECODER:
        return [t.numpy() for t in head_tensors(model.head(model.decode(x[0])), [t.slices for t in spec.outputs])]
    raise KeyError(spec.key)
