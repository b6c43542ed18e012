"""The whole conversion in the two images, against a real Docker engine (`.ci/docker-setup` prepares it; run with
`pytest -m docker`, or `invoke test --docker`)."""
from __future__ import annotations

import json

import pytest

from bevport.bundle import verify_bundle
from bevport.convert.plan import ConvertRequest
from bevport.convert.run import run_convert
from bevport.convert.runner import docker_client, image_tag


def importable(client, kind: str, *modules: str) -> dict:
    """{module: whether `python3` in image `kind` can import it}, asked in a throwaway container of that image."""
    code = ("import importlib.util, json, sys; "
            "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))")
    out = client.containers.run(image_tag(kind), ["python3", "-c", code, *modules], remove=True,
                                network_disabled=True)
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """The demo's trained checkpoint, composed in the export image (torch 1.11)."""
    from bevport.convert.run import synthetic_checkpoint

    return synthetic_checkpoint(tmp_path_factory.mktemp("trained") / "trained.pth", "docker", trained=True)


@pytest.fixture(scope="module")
def docker_scenes(tmp_path_factory):
    """20 held-out synthetic scenes (not the training seed): 16 to calibrate, 2 held out, 2 to validate."""
    from bevport.cli import main

    out = tmp_path_factory.mktemp("docker-scenes") / "kitti"
    main(["synth-data", "--frames", "20", "--seed", "7", "--out", str(out), "-q"])
    return out


@pytest.mark.docker
def test_convert_in_docker_gives_a_verified_bundle(trained_ckpt, docker_scenes, tmp_path):
    # The trained checkpoint with the validation gates on: the image-built INT8 bundle must stay within the recipe's
    # drift bounds on frames calibration never saw. The dataset goes in through the read-only /data mount.
    req = ConvertRequest(trained_ckpt, tmp_path / "work", tmp_path / "dist", data=docker_scenes, num_samples=16,
                         holdout=2)
    assert set(run_convert(req, "docker").values()) == {"ran"}
    manifest = json.loads((tmp_path / "work" / "calib" / "manifest.json").read_text())
    assert manifest["dataset"]["root"] == "/data" and not manifest["dataset"]["synthetic"]
    assert [f["id"] for f in manifest["frames"]] == [f"{i:06d}" for i in range(18)]
    validated = json.loads((tmp_path / "work" / "validate.json").read_text())
    assert validated["device"] == "CPU" and validated["frames"] == ["000018", "000019"]
    assert validated["passed"], validated.get("failures")
    # the image's NNCF/OpenVINO (older than the host's) made graphs with the recipe's properties: the PFE is kept
    # FP32 and pinned to f32, the others are quantized; in the runtime image the INT8 PFE equals the FP32 one
    ir = tmp_path / "work" / "ir"
    graphs = json.loads((ir / "quantize.json").read_text())["graphs"]
    assert graphs["lidar_pfe"]["fake_quantize_ops"] == 0 and graphs["lidar_pfe"]["precision"] == "fp32"
    assert all(graphs[g]["fake_quantize_ops"] > 10 and graphs[g]["inference_precision"] == "default"
               for g in ("camera", "fuser", "head"))
    import openvino as ov

    from bevport.runtime.precision import pinned_hint

    assert pinned_hint(ov.Core().read_model(str(ir / "quantized_lidar_pfe.xml"))) == "f32"
    assert validated["drift"]["lidar_pfe"]["pillar_features"]["snr_db"] is None
    assert validated["stages"]["int8"]["lidar_pfe"]["inference_precision"] == "f32"
    assert all(m["snr_db"] is not None and m["cosine"] > 0.5
               for g in ("camera", "fuser", "head") for m in validated["drift"][g].values())
    states = {p.name: json.loads(p.read_text()) for p in (tmp_path / "work").glob("*.step.json")}
    assert {s["runner"] for s in states.values()} == {"docker"}
    assert states["export.step.json"]["image"] != states["validate.step.json"]["image"]   # two images
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    report = verify_bundle(archive)
    assert report["ok"] and report["files"] > 20
    environment = json.loads((tmp_path / "work" / "environment.json").read_text())
    labels = environment["images"]["export"]["labels"]
    assert labels["io.bevport.python"].startswith("3.") and "org.opencontainers.image.revision" in labels
    # torch asked of each image's own interpreter, not read from a label: absent from the runtime image, and present
    # in the export image (so the question can answer both ways); bevport present in both (the right interpreter)
    client = docker_client()
    assert importable(client, "runtime", "bevport", "torch") == {"bevport": True, "torch": False}
    assert importable(client, "export", "bevport", "torch") == {"bevport": True, "torch": True}
    # a rerun with nothing changed starts no container
    assert set(run_convert(req, "docker").values()) == {"skipped"}


@pytest.mark.docker
def test_saved_runtime_image_loads_back_and_a_damaged_copy_is_refused(tmp_path):
    from bevport.convert.images import load_images, save_images
    from bevport.convert.runner import RunnerError

    client = docker_client()
    saved = save_images(client, tmp_path / "images", kinds=("runtime",))
    (record,) = saved["images"]
    assert record["id"] == client.images.get(record["tag"]).id
    assert [r["id"] for r in load_images(client, tmp_path / "images")] == [record["id"]]
    tarball = tmp_path / "images" / record["file"]
    with open(tarball, "r+b") as f:                      # one byte changed in the middle of a layer
        f.seek(tarball.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(RunnerError, match="does not match SHA256SUMS"):
        load_images(client, tmp_path / "images")


@pytest.mark.docker
def test_trained_demo_checkpoint_composed_in_the_export_image(recipe, trained_ckpt):
    """The demo's checkpoint drawn in the export image (torch 1.11) carries exactly the committed trained tensors."""
    import torch

    from bevport.checkpoint import load_weights
    from bevport.models.trained import load_trained
    from bevport.models.v2xfusion import V2XFusion

    model = V2XFusion(recipe)
    load_weights(model, trained_ckpt)                     # strict: every key, shape and dtype of the upstream layout
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in load_trained(recipe).items())


@pytest.mark.docker
def test_camera_only_convert_in_docker(tmp_path):
    """The second recipe through both images on a checkpoint drawn in the export image (torch 1.11): the image's
    older NNCF quantizes every part (Swin-T, lift, pool, downsample, decoder), the runtime image runs them with the
    frustum from the bundle, and writes nuScenes results and six-camera pictures. Seeded random weights: drift is
    reported, not gated, but each INT8 part must stay close to its FP32 part."""
    from bevport.convert.run import synthetic_checkpoint

    recipe = "bevfusion-cam-swint"
    ckpt = synthetic_checkpoint(tmp_path / "cam.pth", "docker", recipe=recipe)
    req = ConvertRequest(ckpt, tmp_path / "work", tmp_path / "dist", recipe=recipe, num_samples=2, holdout=1,
                         allow_drift=True)
    assert set(run_convert(req, "docker").values()) == {"ran"}
    work = tmp_path / "work"
    graphs = json.loads((work / "ir" / "quantize.json").read_text())["graphs"]
    assert graphs["image_encoder"]["fake_quantize_ops"] > 100 and graphs["decoder"]["fake_quantize_ops"] > 10
    assert all(graphs[g]["fake_quantize_ops"] >= 1 and graphs[g]["precision"] == "int8"
               for g in ("lift", "pool", "downsample"))
    validated = json.loads((work / "validate.json").read_text())
    snr = {o: m["snr_db"] for g in validated["drift"].values() for o, m in g.items()}
    assert min(snr.values()) > 10.0, snr                  # 15-44 dB on the host and in the image
    results = json.loads((work / "preds" / "results_nusc.json").read_text())
    assert len(results["results"]) == len(json.loads((work / "preds" / "infer.json").read_text())["frames"]) > 0
    assert len(list((work / "vis").glob("frame_*.png"))) > 0
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    assert verify_bundle(archive)["ok"]
    (bundle,) = [p for p in (tmp_path / "dist").iterdir() if p.is_dir() and not p.name.endswith(".extras")]
    deploy = {p.name for p in (bundle / "data" / "bevfusion" / "camera-only").iterdir()}
    parts = ("image_encoder", "lift", "pool", "downsample", "decoder")
    assert deploy == {"frustum.npy"} | {f"{p}.onnx" for p in parts} | \
        {f"quantized_{p}.{ext}" for p in parts for ext in ("xml", "bin")}


@pytest.mark.docker
def test_the_export_image_runs_the_reference_hook_on_a_tree_mounted_read_only(tmp_path):
    """The reference path's machinery in the image's own Python, torch 1.11 and mmcv-full (no upstream sources
    needed): a small tree written here imports through the stand-in hook from a read-only /src, the stand-in BEV pool
    computes, an absent op names itself; the tree's import-time requirement (numba) is there, torchpack is gone."""
    from test_reference import FAKE_TREE, RUN, _write

    tree = _write(tmp_path / "tree", FAKE_TREE)
    client = docker_client()
    out = client.containers.run(image_tag("export"), ["python3", "-c", RUN, "/src"], remove=True,
                                network_disabled=True, volumes={str(tree): {"bind": "/src", "mode": "ro"}})
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["pooled"] == [[[[[2.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [4.0, 5.0]]]]]
    assert "sparse_conv_ext.indice_conv is a compiled op" in result["absent"]
    assert result["report"]["mmdet3d.ops.bev_pool.bev_pool_ext"]["calls"] == {"bev_pool_forward": 1}
    assert importable(client, "export", "numba", "mmcv", "mmdet", "torchpack") == \
        {"numba": True, "mmcv": True, "mmdet": True, "torchpack": False}
