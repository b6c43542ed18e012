from __future__ import annotations

import re

import pytest
import yaml

from bevport.configchain import chain_files, load_config_chain
from bevport.contract import build_contract
from bevport.errors import RecipeError
from bevport.geometry.lss import depth_bins
from bevport.pipelines.v2xfusion import camera_stride
from bevport.recipe import RECIPE_DIR, load_recipe
from conftest import CONFIG_CHAIN


def write_recipe(tmp_path, edit):
    data = yaml.safe_load((RECIPE_DIR / "v2xfusion-pp-r34.yaml").read_text())
    edit(data)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_recipe_numbers(recipe):
    assert recipe.bev_shape == [128, 128]
    assert depth_bins(recipe.model.camera.vtransform) == 90
    assert camera_stride(recipe) == 16
    assert list(recipe.model.camera.vtransform.dbound) == [-2.0, 0.0, 90]
    assert recipe.class_names[:2] == ["car", "truck"] and len(recipe.class_names) == 10


def test_contract_matches_deploy_binary(recipe):
    c = build_contract(recipe)
    assert [s.file for s in c] == ["camera.backbone.onnx", "lidar_pfe.onnx", "lidar_pfe_v7000.onnx", "fuser.onnx",
                                   "head.onnx"]
    assert [(t.name, t.shape) for t in c["camera"].outputs] == [("camera_feature", (1, 80, 54, 96)),
                                                                 ("camera_depth_weights", (1, 90, 54, 96))]
    assert [(t.name, t.shape, t.dtype) for t in c["lidar_pfe"].inputs] == [
        ("features", (7000, 100, 4), "float32"), ("num_voxels", (7000,), "int32"), ("coors", (7000, 4), "int32")]
    assert c["lidar_pfe_dynamic"].inputs[0].shape == ("V", 100, 4)
    assert [t.name for t in c["fuser"].inputs] == ["cam_bev", "lidar_bev"]
    assert [t.name for t in c["head"].outputs] == ["score", "reg", "height", "dim", "rot", "vel",
                                                    "score2", "reg2", "height2", "dim2", "rot2", "vel2"]
    assert [t.shape[1] for t in c["head"].outputs[:6]] == [5, 2, 1, 3, 2, 2]


def test_missing_field_is_named(tmp_path):
    path = write_recipe(tmp_path, lambda d: d["model"]["camera"]["vtransform"].pop("dbound"))
    with pytest.raises(RecipeError, match=r"missing field `model\.camera\.vtransform\.dbound`"):
        load_recipe(path)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["model"]["camera"]["vtransform"].__setitem__("feature_size", [27, 48]), "feature_size"),
    (lambda d: d["model"]["lidar"]["scatter"].__setitem__("output_shape", [100, 100]), "output_shape"),
    (lambda d: d["model"]["fuser"].__setitem__("in_channels", [64, 80]), "model.fuser.in_channels"),
    (lambda d: d["model"]["head"]["bbox_coder"].__setitem__("out_size_factor", 8), "bbox_coder"),
    (lambda d: d["export"]["graphs"]["head"]["outputs"][0].pop("vel"), "export.graphs.head.outputs"),
])
def test_contradictory_field_is_named(tmp_path, edit, field):
    with pytest.raises(RecipeError, match=field):
        load_recipe(write_recipe(tmp_path, edit))


def test_unknown_recipe_lists_known():
    with pytest.raises(RecipeError, match="v2xfusion-pp-r34"):
        load_recipe("no-such-recipe")


def test_config_chain_order_and_merge():
    files = chain_files(CONFIG_CHAIN)
    assert files[0].parent.name == "configs" and files[-1] == CONFIG_CHAIN.resolve()
    cfg = load_config_chain(CONFIG_CHAIN)
    vt = cfg["model"]["encoders"]["camera"]["vtransform"]
    # deeper files replace lists and scalars, merge dicts
    assert vt["dbound"] == [-2.0, 0.0, 90] and vt["zbound"] == [-5, 3, 8] and vt["type"] == "LSSV2XTransform"
    assert vt["feature_size"] == [54, 96]  # ${[image_size[0] // 16, image_size[1] // 16]}
    assert cfg["model"]["heads"]["object"]["bbox_coder"]["voxel_size"] == [0.2, 0.2]  # ${voxel_size[:2]}
    assert cfg["data"]["test"]["dataset"]["ann_file"] == "data/dair-v2x/dair_12hz_infos_val.pkl"
    assert cfg["data"]["samples_per_gpu"] == 6


def test_config_chain_reproduces_recipe(recipe):
    imported = load_recipe("v2xfusion-pp-r34", CONFIG_CHAIN)
    assert imported.to_dict() == recipe.to_dict()


def _variant(tmp_path, text):
    root = tmp_path / "configs" / "variant"
    root.mkdir(parents=True)
    (tmp_path / "configs" / "default.yaml").write_text(yaml.safe_dump(load_config_chain(CONFIG_CHAIN)))
    (root / "default.yaml").write_text(text)
    return root / "default.yaml"


def test_config_variant_changes_model(tmp_path):
    path = _variant(tmp_path, """
image_size: [640, 1152]
model:
  encoders:
    camera:
      vtransform:
        image_size: ${image_size}
        feature_size: ${[image_size[0] // 16, image_size[1] // 16]}
        dbound: [-1.5, 3.0, 180]
""")
    r = load_recipe("v2xfusion-pp-r34", path)
    assert depth_bins(r.model.camera.vtransform) == 180 and list(r.input.image_size) == [640, 1152]
    c = build_contract(r)
    assert c["camera"].inputs[0].shape == (1, 3, 640, 1152)
    assert c["camera"].outputs[1].shape == (1, 180, 40, 72)

    import torch
    from bevport.models.v2xfusion import V2XFusion

    m = V2XFusion(r)
    assert m.state_dict()["encoders.camera.vtransform.depthnet.weight"].shape == (260, 256, 1, 1)
    with torch.no_grad():
        feat, depth = m.eval().camera_features(torch.zeros(1, 3, 640, 1152))
    assert feat.shape == (1, 80, 40, 72) and depth.shape == (1, 180, 40, 72)


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "image_size.__class__", "open('x')",
                                  "[x for x in image_size]", "(lambda: 1)()"])
def test_config_expressions_are_not_executed(tmp_path, expr):
    path = _variant(tmp_path, f"danger: ${{{expr}}}\n")
    with pytest.raises(RecipeError, match="expression"):
        load_config_chain(path)


def test_config_key_access_reads_mappings_only(tmp_path):
    """MIT BEVFusion's camera-only chain writes `${augment2d.resize[0]}` (torchpack configs allow attribute access)."""
    path = _variant(tmp_path, "augment2d: {resize: [[0.38, 0.55], [0.48, 0.48]]}\nlow: ${augment2d.resize[0]}\n")
    assert load_config_chain(path)["low"] == [0.38, 0.55]
    with pytest.raises(RecipeError, match="reads `.rotate`, which is not a key"):
        load_config_chain(_variant(tmp_path / "second", "augment2d: {resize: 1}\nx: ${augment2d.rotate}\n"))


def test_config_missing_name_is_reported(tmp_path):
    path = _variant(tmp_path, "x: ${no_such_setting * 2}\n")
    with pytest.raises(RecipeError, match="no_such_setting"):
        load_config_chain(path)


@pytest.mark.parametrize("section, key, value, field", [
    (("export", "parity"), "factor", "lots", "export.parity.factor"),
    (("export",), "static_voxels", "7000", "export.static_voxels"),
    (("quantize",), "calibration_frames", 1.5, "quantize.calibration_frames"),
    (("runtime", "validate"), "min_snr_db", None, "runtime.validate.min_snr_db"),
    (("runtime", "validate"), "min_snr_db", {"camera": 6.0}, "runtime.validate.min_snr_db"),
    (("runtime", "validate"), "min_snr_db", {"camera": 6.0, "lidar_pfe": 6.0, "fuser": "x", "head": 1.0},
     "runtime.validate.min_snr_db.fuser"),
    (("quantize", "graphs", "camera"), "preset", "fast", "quantize.graphs.camera.preset"),
    (("model", "head", "test_cfg"), "nms_thr", "0.2", "model.head.test_cfg.nms_thr"),
    (("input",), "mean", [123.675, "116.28", 103.53], "input.mean"),
    (("model", "camera", "vtransform"), "dbound", [-2.0, 0.0], "model.camera.vtransform.dbound"),
])
def test_a_value_of_the_wrong_kind_is_named_by_its_path(tmp_path, section, key, value, field):
    def edit(d):
        node = d
        for part in section:
            node = node[part]
        node[key] = value
    with pytest.raises(RecipeError, match=re.escape(f"`{field}` must be")):
        load_recipe(write_recipe(tmp_path, edit))


def test_a_value_no_check_expects_is_named_by_the_field_last_read(tmp_path):
    """The net under the explicit checks: a number where a head's [channels, convs] pair belongs is still one
    RecipeError naming the field, not a traceback."""
    def edit(d):
        d["model"]["head"]["common_heads"]["reg"] = 2
    with pytest.raises(RecipeError, match=r"`model\.head\.common_heads\.reg` \(or a value read with it\) is of the "
                                          r"wrong kind"):
        load_recipe(write_recipe(tmp_path, edit))
