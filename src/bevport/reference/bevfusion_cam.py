"""MIT BEVFusion camera-only (326653d) behind the interface of `models.bevfusion_cam`, the original code inside.

Image encoder: the Swin-T backbone and GeneralizedLSSFPN neck, `x[0]` of the neck's outputs as
`BEVFusion.extract_camera_features` takes it. Lift: the vtransform's `depthnet` and the softmax over its first D
channels, the lines of `LSSTransform.get_cam_feats` before it forms the depth x context product (the deploy split
hands that product to the pool part). Pool: the reference is the original `BaseTransform.get_geometry` +
`BaseTransform.bev_pool` (through the `bev_pool` op's stand-in) on the synthetic rig the pool tables were built
from: bevport's table-driven pooling against the tree's point-by-point pooling, not against bevport's own. The
geometry stays float32 in the float64 reference too (see `Reference.__init__`). Downsample, decoder and head: the original modules (`forward_single` of the CenterHead).
"""
from __future__ import annotations

import copy
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
        # The frustum geometry in float32, as training computes it, kept out of the module tree so that a float64
        # copy of this adapter keeps it: which BEV cell a frustum point falls in is a discrete float32 decision (the
        # pool tables hold the same decisions); a float64 geometry would move the points on cell borders.
        object.__setattr__(self, "geometry32", copy.deepcopy(self.vtransform).float())

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
        """The tree's pooling of one sample: its get_geometry and bev_pool, as its vtransform forward calls them
        (geometry and cell indices in float32, the depth x context sums in the inputs' precision)."""
        vt = self.geometry32
        n = context.shape[0]
        product = (depth.unsqueeze(1) * context.unsqueeze(2)).view(1, n, vt.C, vt.D, *context.shape[2:])
        product = product.permute(0, 1, 3, 4, 5, 2)
        rig = [m.float() for m in (camera2lidar, intrinsics, img_aug)]
        geom = vt.get_geometry(rig[0][None, :, :3, :3], rig[0][None, :, :3, 3], rig[1][None, :, :3, :3],
                               rig[2][None, :, :3, :3], rig[2][None, :, :3, 3])
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


def _rig(recipe, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(camera2lidar, intrinsics 4x4, img_aug) [N, 4, 4] float32 of the synthetic surround rig of dataset `seed`."""
    from bevport.data.imageaug import img_aug_matrix
    from bevport.data.surround import dataset_cameras

    cameras = dataset_cameras(seed)
    k4 = np.tile(np.eye(4, dtype=np.float32), (len(cameras), 1, 1))
    k4[:, :3, :3] = [cam.K for cam in cameras]
    return (np.stack([c.camera2lidar for c in cameras]).astype(np.float32), k4,
            np.tile(img_aug_matrix(recipe), (len(cameras), 1, 1)).astype(np.float32))


@torch.no_grad()
def tree_cells(model: Reference, rig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tree's frustum geometry [N, D, fH, fW, 3] for a rig, and each point's flat BEV cell (x * ny + y) and
    inside-the-grid mask by the tree's own arithmetic (`BaseTransform.bev_pool`), all float32."""
    vt = model.geometry32
    c2l, k4, ida = (torch.from_numpy(m) for m in rig)
    geom = vt.get_geometry(c2l[None, :, :3, :3], c2l[None, :, :3, 3], k4[None, :, :3, :3], ida[None, :, :3, :3],
                           ida[None, :, :3, 3])[0]
    index = ((geom - (vt.bx - vt.dx / 2.0)) / vt.dx).long()
    nx = vt.nx.long()
    inside = ((index >= 0) & (index < nx)).all(dim=-1)
    return geom.numpy(), (index[..., 0] * nx[1] + index[..., 1]).numpy(), inside.numpy()


def sample_inputs(recipe, spec: GraphSpec, seed: int = 0, model: Reference = None) -> Dict[str, np.ndarray]:
    """The native parity inputs; the pool part's tables are built from the tree's geometry of the synthetic rig
    (with the checkpoint's frustum), and its inputs carry that rig (ignored by the graph)."""
    from bevport.geometry import lss_depth

    inputs = native.sample_inputs(recipe, spec, seed)
    if spec.key == POOL and model is not None:
        rig = _rig(recipe, seed)
        _, flat, inside = tree_cells(model, rig)
        tables = lss_depth.pool_tables(flat, inside, recipe.bev_shape, recipe.export.pool_groups,
                                       recipe.export.pool_scatter_rows).inputs()
        inputs.update(zip([t.name for t in spec.inputs[2:]], tables))
        inputs.update(zip(RIG_KEYS, rig))
    return inputs


def checks(model: Reference, recipe, spec: GraphSpec, inputs: Dict[str, np.ndarray]) -> Dict[str, Dict]:
    """Host geometry (bevport's NumPy `get_geometry`, what the runtime builds a rig's pool tables from) against the
    tree's: positions within `export.parity.geometry_tolerance` metres, and every frustum point in the tree's BEV
    cell except points that close to a cell border (float32 rounding of two orders of operations)."""
    from bevport.geometry import lss_depth

    if spec.key != POOL:
        return {}
    rig = tuple(inputs[k] for k in RIG_KEYS)
    geom, flat, inside = tree_cells(model, rig)
    frustum = model.vtransform.frustum.detach().float().numpy()
    vt = recipe.model.camera.vtransform
    ours = np.stack([lss_depth.geometry(frustum, rig[0][i], rig[1][i], rig[2][i], np.eye(4, dtype=np.float32))
                     for i in range(len(rig[0]))])
    our_flat, our_inside = lss_depth.cells(ours, vt.xbound, vt.ybound, vt.zbound)
    moved = (our_inside != inside) | (inside & (our_flat != flat))
    dx, bx, _ = lss_depth.grid_params(vt.xbound, vt.ybound, vt.zbound)
    offset = (geom - (bx - dx / 2)) / dx
    border = (np.abs(offset - np.round(offset)) * dx).min(axis=-1)          # metres to the nearest cell border
    tol = float(recipe.export.parity.geometry_tolerance)
    error = float(np.abs(ours - geom).max())
    far = float(border[moved].max()) if moved.any() else 0.0
    return {"host_geometry": {"points": int(moved.size), "max_abs_error_m": error, "points_in_other_cells":
                              int(moved.sum()), "their_max_distance_to_a_border_m": far, "tolerance_m": tol,
                              "passed": bool(error <= tol and far <= tol)}}


@torch.no_grad()
def reference_outputs(model: Reference, recipe, spec: GraphSpec, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
    if spec.key != POOL:
        return native.reference_outputs(model, recipe, spec, inputs)
    dtype = next(model.parameters()).dtype
    context, depth = (torch.from_numpy(inputs[t.name]).to(dtype) for t in spec.inputs[:2])
    rig = [torch.from_numpy(inputs[k]).to(dtype) for k in RIG_KEYS]
    return [model.pool_points(context, depth, *rig).numpy()]



def prepare_feed(recipe, spec: GraphSpec, feed: Dict[str, np.ndarray]):
    """A dataset frame's inputs for the comparison; the pool part is compared on the seeded rig only (a recorded
    feed holds the rig's tables, not the rig the tree's geometry needs)."""
    return None if spec.key == POOL else feed
