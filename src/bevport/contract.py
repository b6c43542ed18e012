"""The deploy contract of a recipe: for every graph its file name and the name, shape and dtype of each port.

Export, quantization, runtime and tests all read this one object; no tensor name or shape is written anywhere else.
Shapes use a string for a dynamic axis ("V").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

from bevport.recipe import Recipe

Dim = Union[int, str]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[Dim, ...]
    dtype: str = "float32"
    # For head outputs: (task index, SeparateHead attribute), so decoding never matches on names.
    role: Optional[Tuple[int, str]] = None
    # Declared shape vs. memory layout: the camera feature is declared NCHW but laid out NHWC (contract §1.2).
    layout: Optional[str] = None

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def concrete_shape(self, dynamic: int) -> Tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dynamic for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    key: str
    file: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


@dataclass(frozen=True)
class Contract:
    recipe_name: str
    graphs: Dict[str, GraphSpec] = field(default_factory=dict)

    def __getitem__(self, key: str) -> GraphSpec:
        return self.graphs[key]

    def __iter__(self):
        return iter(self.graphs.values())


def build_contract(recipe: Recipe) -> Contract:
    g = recipe.export.graphs
    m = recipe.model
    h, w = recipe.input.image_size
    fh, fw = m.camera.vtransform.feature_size
    nx, ny = recipe.bev_shape
    cam_c = m.camera.vtransform.out_channels
    lidar_c = m.lidar.scatter.in_channels
    points = (recipe.export.deploy_max_points, recipe.input.point_dims)

    def pfe(key: str, v: Dim) -> GraphSpec:
        feats, nvox, coors = g[key].inputs
        return GraphSpec(key, g[key].file.format(static_voxels=recipe.export.static_voxels),
                         (TensorSpec(feats, (v,) + points), TensorSpec(nvox, (v,), "int32"),
                          TensorSpec(coors, (v, 4), "int32")),
                         (TensorSpec(g[key].outputs[0], (v, lidar_c)),))

    feature, depth = g.camera.outputs
    cam_bev, lidar_bev = g.fuser.inputs
    head_outputs = []
    for t, (task, mapping) in enumerate(zip(m.head.tasks, g.head.outputs)):
        for attr, name in mapping.items():
            channels = len(task) if attr == "heatmap" else m.head.common_heads[attr][0]
            head_outputs.append(TensorSpec(name, (1, channels, nx, ny), role=(t, attr)))
    graphs = [
        GraphSpec("camera", g.camera.file, (TensorSpec(g.camera.inputs[0], (1, 3, h, w)),),
                  (TensorSpec(feature, (1, cam_c, fh, fw), layout="NHWC"),
                   TensorSpec(depth, (1, recipe.num_height_bins, fh, fw)))),
        pfe("lidar_pfe", "V"),
        pfe("lidar_pfe_static", recipe.export.static_voxels),
        GraphSpec("fuser", g.fuser.file,
                  (TensorSpec(cam_bev, (1, cam_c, nx, ny)), TensorSpec(lidar_bev, (1, lidar_c, nx, ny))),
                  (TensorSpec(g.fuser.outputs[0], (1, m.decoder.neck.out_channels, nx, ny)),)),
        GraphSpec("head", g.head.file, (TensorSpec(g.head.inputs[0], (1, m.head.in_channels, nx, ny)),),
                  tuple(head_outputs)),
    ]
    return Contract(recipe.name, {spec.key: spec for spec in graphs})
