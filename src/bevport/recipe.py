"""Recipes: one YAML file per model holds every number (sizes, bounds, channels, classes, names).

A recipe is a nested mapping with attribute access (`recipe.model.camera.vtransform.dbound`); reading a field that
is not there raises a RecipeError naming the dotted path. `load_recipe` validates the whole file up front (required
fields and the cross-field consistency the model relies on), so a bad recipe fails before anything is written.
`recipe_from_config` overlays an upstream torchpack training config on a recipe.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from bevport.configchain import deep_merge, load_config_chain
from bevport.errors import RecipeError

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class Node(dict):
    """A read-only view of a recipe mapping with attribute access and dotted paths in its error messages."""

    def __init__(self, data: Dict[str, Any], path: str = "", origin: str = "recipe"):
        super().__init__(data)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_origin", origin)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self[key]

    def __getitem__(self, key: str) -> Any:
        try:
            value = super().__getitem__(key)
        except KeyError:
            raise RecipeError(f"{self._origin}: missing field `{self._dotted(key)}`",
                              "add it to the recipe (see recipes/v2xfusion-pp-r34.yaml for the full layout)") from None
        if isinstance(value, dict):
            return Node(value, self._dotted(key), self._origin)
        return value

    def __setattr__(self, key: str, value: Any) -> None:
        raise TypeError("recipes are read-only; build a new one with Recipe.updated()")

    def _dotted(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(dict(self))


class Recipe(Node):
    """A validated recipe. `origin` names the file (and config) it came from, for messages."""

    def __init__(self, data: Dict[str, Any], origin: str):
        super().__init__(data, "", origin)
        validate(self)

    def updated(self, overlay: Dict[str, Any], origin: Optional[str] = None) -> "Recipe":
        return Recipe(deep_merge(self.to_dict(), overlay), origin or self._origin)

    # Derived quantities: computed here once so no caller re-derives them.
    @property
    def bev_shape(self) -> List[int]:
        """[nx, ny] of the BEV grid (dim 2 = x forward, dim 3 = y left)."""
        vt = self.model.camera.vtransform
        return [_cells(vt.xbound), _cells(vt.ybound)]

    @property
    def num_height_bins(self) -> int:
        return int(self.model.camera.vtransform.dbound[2])

    @property
    def camera_stride(self) -> int:
        neck = self.model.camera.neck
        stage = self.model.camera.backbone.out_indices[neck.start_level + neck.output_level]
        return 4 * 2 ** stage

    @property
    def head_names(self) -> List[List[str]]:
        """SeparateHead attribute names per task, in module-registration order (common heads, then heatmap)."""
        return [list(self.model.head.common_heads) + ["heatmap"] for _ in self.model.head.tasks]

    @property
    def class_names(self) -> List[str]:
        return [name for task in self.model.head.tasks for name in task]


def _cells(bound: Sequence[float]) -> int:
    return int(round((bound[1] - bound[0]) / bound[2]))


def _check(condition: bool, recipe: Node, field: str, message: str) -> None:
    if not condition:
        raise RecipeError(f"{recipe._origin}: `{field}` {message}")


def validate(r: Recipe) -> None:
    """Every field the code reads is present and the numbers agree with each other."""
    inp, cam, lidar, m = r.input, r.model.camera, r.model.lidar, r.model
    vt, neck, vox = cam.vtransform, cam.neck, lidar.voxelize
    _check(cam.backbone.depth in (18, 34), r, "model.camera.backbone.depth",
           f"is {cam.backbone.depth}; bevport's camera backbone implements the BasicBlock ResNets 18 and 34")
    _check(len(inp.image_size) == 2 and len(inp.raw_image_size) == 2, r, "input.image_size", "must be [H, W]")
    _check(len(inp.mean) == 3 and len(inp.std) == 3, r, "input.mean/std", "must hold three values")
    _check(inp.point_dims >= 4 and inp.intensity_scale > 0, r, "input",
           "needs point_dims >= 4 (x, y, z, intensity) and intensity_scale > 0")
    backbone_channels = [64 * 2 ** i for i in cam.backbone.out_indices]
    _check(list(neck.in_channels) == backbone_channels, r, "model.camera.neck.in_channels",
           f"is {list(neck.in_channels)} but the ResNet stages {list(cam.backbone.out_indices)} give {backbone_channels}")
    _check(0 <= neck.output_level < len(neck.in_channels) - 1, r, "model.camera.neck.output_level",
           f"must index one of the {len(neck.in_channels) - 1} fused levels")
    _check(vt.in_channels == neck.out_channels, r, "model.camera.vtransform.in_channels",
           f"is {vt.in_channels} but the neck gives {neck.out_channels}")
    feature = [s // r.camera_stride for s in inp.image_size]
    _check(list(vt.feature_size) == feature, r, "model.camera.vtransform.feature_size",
           f"is {list(vt.feature_size)} but image_size {list(inp.image_size)} at stride {r.camera_stride} gives {feature}")
    _check(vt.downsample == 1, r, "model.camera.vtransform.downsample", "must be 1 (the V2X transform has no downsample)")
    _check(float(vt.dbound[2]).is_integer() and vt.dbound[2] >= 1 and vt.dbound[0] < vt.dbound[1], r,
           "model.camera.vtransform.dbound", f"is {list(vt.dbound)}; expected [height_min, height_max, num_bins]")
    _check(_cells(vt.zbound) == 1, r, "model.camera.vtransform.zbound", "must span a single bin (BEV has one z cell)")
    grid = [_cells([vox.point_cloud_range[i], vox.point_cloud_range[i + 3], vox.voxel_size[i]]) for i in range(3)]
    _check(grid[2] == 1, r, "model.lidar.voxelize.voxel_size", f"must give one z cell (pillars), gives grid {grid}")
    _check(grid[:2] == r.bev_shape, r, "model.lidar.voxelize", f"gives a {grid[:2]} pillar grid but the camera BEV "
           f"(xbound/ybound) is {r.bev_shape}")
    _check(list(lidar.scatter.output_shape) == r.bev_shape, r, "model.lidar.scatter.output_shape",
           f"is {list(lidar.scatter.output_shape)} but the BEV grid is {r.bev_shape}")
    _check(lidar.pfn.feat_channels[-1] == lidar.scatter.in_channels and len(lidar.pfn.feat_channels) == 1, r,
           "model.lidar.pfn.feat_channels", f"must be one layer of {lidar.scatter.in_channels} channels")
    _check(not lidar.pfn.with_distance, r, "model.lidar.pfn.with_distance", "is not supported (V2XFusion trains without)")
    _check(list(m.fuser.in_channels) == [vt.out_channels, lidar.scatter.in_channels], r, "model.fuser.in_channels",
           f"is {list(m.fuser.in_channels)}; camera BEV has {vt.out_channels} and LiDAR BEV "
           f"{lidar.scatter.in_channels} channels")
    dec = m.decoder
    _check(dec.backbone.in_channels == m.fuser.out_channels, r, "model.decoder.backbone.in_channels",
           f"is {dec.backbone.in_channels} but the fuser gives {m.fuser.out_channels}")
    stage_channels = [b[1] for b in dec.backbone.blocks]
    picked = [stage_channels[i] for i in dec.neck.in_indices]
    _check(list(dec.neck.in_channels) == picked, r, "model.decoder.neck.in_channels",
           f"is {list(dec.neck.in_channels)} but stages {list(dec.neck.in_indices)} give {picked}")
    head = m.head
    _check(head.in_channels == dec.neck.out_channels, r, "model.head.in_channels",
           f"is {head.in_channels} but the decoder gives {dec.neck.out_channels}")
    strides = [b[2] for b in dec.backbone.blocks]
    fine = dec.neck.in_indices[1] % len(strides)
    stride = 1
    for s in strides[: fine + 1]:
        stride *= s
    head_size = [n // stride * dec.neck.scale_factor for n in r.bev_shape]
    _check(head_size == r.bev_shape, r, "model.decoder", f"outputs a {head_size} map but the BEV grid is {r.bev_shape}")
    coder = head.bbox_coder
    cell = coder.out_size_factor * coder.voxel_size[0]
    _check(abs(cell - vt.xbound[2]) < 1e-6, r, "model.head.bbox_coder",
           f"decodes {cell:g} m per cell (out_size_factor x voxel_size) but the BEV cell is {vt.xbound[2]:g} m")
    ntasks = len(head.tasks)
    for key in ("nms_type", "min_radius", "nms_scale"):
        _check(len(head.test_cfg[key]) >= ntasks, r, f"model.head.test_cfg.{key}", f"needs one entry per task ({ntasks})")
    graphs = r.export.graphs
    for key in ("camera", "lidar_pfe", "lidar_pfe_static", "fuser", "head"):
        for part in ("file", "inputs", "outputs"):
            graphs[key][part]
    _check(len(graphs.camera.outputs) == 2, r, "export.graphs.camera.outputs", "must name feature then depth")
    _check(len(graphs.fuser.inputs) == 2, r, "export.graphs.fuser.inputs", "must name camera BEV then LiDAR BEV")
    _check(len(graphs.head.outputs) == ntasks, r, "export.graphs.head.outputs", f"needs one mapping per task ({ntasks})")
    for t, (mapping, names) in enumerate(zip(graphs.head.outputs, r.head_names)):
        _check(sorted(mapping) == sorted(names), r, f"export.graphs.head.outputs[{t}]",
               f"maps {sorted(mapping)} but task {t} has heads {sorted(names)}")
    for key, graph in graphs.items():
        outputs = graph["outputs"]
        if key == "head":
            outputs = [name for mapping in outputs for name in mapping.values()]
        names = list(graph["inputs"]) + list(outputs)
        _check(len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names), r,
               f"export.graphs.{key}", f"tensor names must be non-empty and unique, got {names}")
    _check(r.export.static_voxels > 0 and r.export.deploy_max_points >= vox.max_num_points, r, "export",
           f"static_voxels must be > 0 and deploy_max_points >= max_num_points ({vox.max_num_points})")
    _check(r.export.opset >= 13, r, "export.opset", "must be 13 or newer")
    _validate_quantize(r)


def _validate_quantize(r: Recipe) -> None:
    q = r.quantize
    _check(q.calibration_frames >= 1 and q.holdout_frames >= 1, r, "quantize",
           "needs calibration_frames >= 1 and holdout_frames >= 1")
    _check(q.subset_size is None or q.subset_size >= 1, r, "quantize.subset_size", "must be null or >= 1")
    _check(str(q.target_device).upper() in ("ANY", "CPU", "GPU", "NPU", "CPU_SPR"), r, "quantize.target_device",
           f"is {q.target_device}; NNCF knows ANY, CPU, GPU, NPU, CPU_SPR")
    _check(str(q.preset).lower() in ("performance", "mixed"), r, "quantize.preset", "must be performance or mixed")
    _check(sorted(q.graphs) == ["camera", "fuser", "head", "lidar_pfe"], r, "quantize.graphs",
           f"must name the four deploy graphs camera, lidar_pfe, fuser, head; has {sorted(q.graphs)}")
    for key in q.graphs:
        graph = q.graphs[key]
        _check(graph.source in ("camera", "lidar_pfe_static", "fuser", "head"), r, f"quantize.graphs.{key}.source",
               f"is {graph.source}; must be a static export graph")
        _check(isinstance(graph.ir, str) and graph.ir, r, f"quantize.graphs.{key}.ir", "must be a file stem")
    _check(q.report.min_snr_db > 0 and q.report.latency_runs >= 1, r, "quantize.report",
           "needs min_snr_db > 0 and latency_runs >= 1")


def _recipe_path(name_or_path: Union[str, os.PathLike]) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown recipe `{name_or_path}`", f"known recipes: {known}; or pass a path to a .yaml file")
    return candidate


def load_recipe(name_or_path: Union[str, os.PathLike], config: Optional[os.PathLike] = None) -> Recipe:
    """The recipe by name (recipes/<name>.yaml) or path, optionally overlaid with an upstream training config."""
    path = _recipe_path(name_or_path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    recipe = Recipe(data, str(path))
    if config is not None:
        recipe = recipe_from_config(config, recipe)
    return recipe


def _pick(source: Dict[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    return {k: source[k] for k in keys if k in source and source[k] is not None}


def config_overlay(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Translate a merged upstream config into the recipe's layout (only the fields the config sets)."""
    try:
        model = cfg["model"]
        camera = model["encoders"]["camera"]
        lidar = model["encoders"]["lidar"]
        head = model["heads"]["object"]
    except (KeyError, TypeError) as exc:
        raise RecipeError(f"config has no `model.{exc.args[0]}` section; is this a camera+LiDAR BEVFusion config?") \
            from None
    for section, expected in ((camera["backbone"], "ResNet"), (camera["neck"], "GeneralizedLSSFPN"),
                              (model["decoder"]["backbone"], "GeneralizedResNet"), (model["decoder"]["neck"], "LSSFPN"),
                              (model["fuser"], "ConvFuser"), (head, "CenterHead")):
        if section.get("type", expected) != expected:
            raise RecipeError(f"config uses {section['type']} where this recipe's model has {expected}")
    vt = dict(camera["vtransform"])
    image_size = vt.pop("image_size", None) or cfg.get("image_size")
    voxel_encoder = lidar["backbone"]["pts_voxel_encoder"]
    neck = _pick(camera["neck"], ["in_channels", "out_channels", "start_level", "num_outs"])
    if "upsample_cfg" in camera["neck"]:
        neck["upsample"] = dict(camera["neck"]["upsample_cfg"])
    separate = head.get("separate_head") or {}
    overlay: Dict[str, Any] = {
        "input": {},
        "model": {
            "camera": {
                "backbone": _pick(camera["backbone"], ["depth", "out_indices"]),
                "neck": neck,
                "vtransform": _pick(vt, ["in_channels", "out_channels", "feature_size", "xbound", "ybound",
                                         "zbound", "dbound", "downsample"]),
            },
            "lidar": {
                "voxelize": _pick(lidar["voxelize"], ["max_num_points", "point_cloud_range", "voxel_size",
                                                      "max_voxels"]),
                "pfn": _pick(voxel_encoder, ["feat_channels", "with_distance"]),
                "scatter": _pick(lidar["backbone"]["pts_middle_encoder"], ["in_channels", "output_shape"]),
            },
            "fuser": _pick(model["fuser"], ["in_channels", "out_channels"]),
            "decoder": {"backbone": _pick(model["decoder"]["backbone"], ["in_channels", "blocks"]),
                        "neck": _pick(model["decoder"]["neck"], ["in_indices", "in_channels", "out_channels",
                                                                 "scale_factor"])},
            "head": dict(_pick(head, ["in_channels", "share_conv_channel", "tasks", "common_heads"]),
                         **_pick(separate, ["final_kernel", "init_bias"]),
                         bbox_coder=_pick(head.get("bbox_coder") or {}, ["pc_range", "post_center_range", "max_num",
                                                                         "score_threshold", "out_size_factor",
                                                                         "voxel_size", "code_size"]),
                         test_cfg=_test_cfg(head.get("test_cfg") or {}, len(head.get("tasks") or []))),
        },
    }
    if image_size is not None:
        overlay["input"]["image_size"] = list(image_size)
    if "in_channels" in voxel_encoder:
        overlay["input"]["point_dims"] = voxel_encoder["in_channels"]
    test_set = ((cfg.get("data") or {}).get("test") or {}).get("dataset") or {}
    if "H" in test_set and "W" in test_set:
        overlay["input"]["raw_image_size"] = [test_set["H"], test_set["W"]]
    overlay["input"].update({k: test_set[s] for k, s in (("mean", "img_mean"), ("std", "img_std"),
                                                         ("to_rgb", "to_rgb")) if s in test_set})
    if head.get("in_channels") is None and "neck" in model["decoder"]:
        overlay["model"]["head"]["in_channels"] = model["decoder"]["neck"]["out_channels"]
    return overlay


def _test_cfg(test_cfg: Dict[str, Any], ntasks: int) -> Dict[str, Any]:
    out = _pick(test_cfg, ["post_center_limit_range", "score_threshold", "out_size_factor", "voxel_size",
                           "pre_max_size", "post_max_size", "nms_thr"])
    # Upstream lists hold one entry per task of a 6-task head; only the first `ntasks` are read (spec §1.2).
    for key in ("nms_type", "min_radius", "nms_scale"):
        if key in test_cfg:
            value = test_cfg[key]
            out[key] = list(value[:ntasks]) if isinstance(value, list) else [value] * ntasks
    return out


def recipe_from_config(config: os.PathLike, base: Recipe) -> Recipe:
    """`base` with every model number the upstream config chain at `config` sets."""
    overlay = config_overlay(load_config_chain(config))
    return base.updated(overlay, origin=f"{base._origin} + {config}")
