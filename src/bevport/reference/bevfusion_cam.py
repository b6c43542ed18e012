"""MIT BEVFusion camera-only (326653d) behind the interface of `models.bevfusion_cam`, the original code inside.

Image encoder: the Swin-T backbone and GeneralizedLSSFPN neck, `x[0]` of the neck's outputs as
`BEVFusion.extract_camera_features` takes it. Lift: the vtransform's `depthnet` and the softmax over its first D
channels, the lines of `LSSTransform.get_cam_feats` before it forms the depth x context product (the deploy split
hands that product to the pool part). Pool: the reference is the original `BaseTransform.get_geometry` +
`BaseTransform.bev_pool` (through the `bev_pool` op's stand-in) on the synthetic rig the pool tables were built
from: bevport's table-driven pooling against the tree's point-by-point pooling, not against bevport's own.
Downsample, decoder and head: the original modules (`forward_single` of the CenterHead).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from bevport.contract import GraphSpec
from bevport.models import bevfusion_cam as native
from bevport.pipelines.bevfusion_cam import POOL

EXPECTED_TREE = "MIT BEVFusion at 326653dc06e0938edf1aae7d01efcd158ba83de5"

# Extra inputs of the pool part's comparison: the rig its tables were computed from (ignored by the graph).
RIG_KEYS = ("rig.camera2lidar", "rig.intrinsics", "rig.img_aug")


class Reference(nn.Module):
    def __init__(self, model: nn.Module, recipe):
        super().__init__()
        self.model = model

    @property
    def vtransform(self) -> nn.Module:
        return self.model.encoders["camera"]["vtransform"]

    def image_features(self, img: torch.Tensor) -> torch.Tensor:
        cam = self.model.encoders["camera"]
        x = cam["neck"](cam["backbone"](img))
        return x if isinstance(x, torch.Tensor) else x[0]

    def lift(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        vt = self.vtransform
        x = vt.depthnet(features)
        return x[:, vt.D: vt.D + vt.C], x[:, : vt.D].softmax(dim=1)

    def pool_points(self, context: torch.Tensor, depth: torch.Tensor, camera2lidar: torch.Tensor,
                    intrinsics: torch.Tensor, img_aug: torch.Tensor) -> torch.Tensor:
        """The tree's pooling of one sample: its get_geometry and bev_pool, as its vtransform forward calls them."""
        vt = self.vtransform
        n = context.shape[0]
        product = (depth.unsqueeze(1) * context.unsqueeze(2)).view(1, n, vt.C, vt.D, *context.shape[2:])
        product = product.permute(0, 1, 3, 4, 5, 2)
        geom = vt.get_geometry(camera2lidar[None, :, :3, :3], camera2lidar[None, :, :3, 3], intrinsics[None, :, :3, :3],
                               img_aug[None, :, :3, :3], img_aug[None, :, :3, 3])
        return vt.bev_pool(geom, product)

    def downsample(self, bev: torch.Tensor) -> torch.Tensor:
        return self.vtransform.downsample(bev)

    def decode(self, bev: torch.Tensor) -> torch.Tensor:
        x = self.model.decoder["neck"](self.model.decoder["backbone"](bev))
        return x if isinstance(x, torch.Tensor) else x[0]

    def head(self, middle: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        return self.model.heads["object"].forward_single(middle)


def export_modules(reference: Reference, recipe, contract) -> Dict[str, object]:
    return native.export_modules(reference, recipe, contract)


def export_artifacts(reference: Reference) -> Dict[str, np.ndarray]:
    return native.export_artifacts(reference)


def sample_inputs(recipe, spec: GraphSpec, seed: int = 0) -> Dict[str, np.ndarray]:
    """The native parity inputs; the pool part's also carry the rig its tables were computed from."""
    from bevport.data.imageaug import img_aug_matrix
    from bevport.data.surround import dataset_cameras

    inputs = native.sample_inputs(recipe, spec, seed)
    if spec.key == POOL:
        cameras = dataset_cameras(seed)
        k4 = np.tile(np.eye(4, dtype=np.float32), (len(cameras), 1, 1))
        k4[:, :3, :3] = [cam.K for cam in cameras]
        inputs.update(zip(RIG_KEYS, (np.stack([c.camera2lidar for c in cameras]).astype(np.float32), k4,
                                     np.tile(img_aug_matrix(recipe), (len(cameras), 1, 1)).astype(np.float32))))
    return inputs


@torch.no_grad()
def reference_outputs(model: Reference, recipe, spec: GraphSpec, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
    if spec.key != POOL:
        return native.reference_outputs(model, recipe, spec, inputs)
    dtype = next(model.parameters()).dtype
    context, depth = (torch.from_numpy(inputs[t.name]).to(dtype) for t in spec.inputs[:2])
    rig = [torch.from_numpy(inputs[k]).to(dtype) for k in RIG_KEYS]
    return [model.pool_points(context, depth, *rig).numpy()]

