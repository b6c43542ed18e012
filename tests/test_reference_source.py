"""The reference path on the real training trees (BEVPORT_REFERENCE_SRC, see DEVELOPERS.md): parity of every graph
of both recipes against the trees' own modules, and graphs exported from those modules run by `bevport infer`.

The trees import mmcv-full and mmdet, which the export image has: the commands run in this interpreter when it can
import both, otherwise in the export image (tree mounted read-only at /src), otherwise the tests are skipped.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bevport import __version__
from bevport.contract import build_contract
from bevport.recipe import load_recipe

SRC = os.environ.get("BEVPORT_REFERENCE_SRC")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SRC, reason="BEVPORT_REFERENCE_SRC is unset: the upstream training trees are not on this "
                                       "host (DEVELOPERS.md says how to get them)"),
]
IMAGE = f"bevport-export:{__version__}"


def _has_training_stack() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mmcv", "mmdet"))


def _image_available() -> bool:
    try:
        return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
    except OSError:
        return False


def bevport(args, tree: Path, work: Path) -> subprocess.CompletedProcess:
    """`bevport <args>` with the tree at `tree` and the work folder `work` (paths in args are given as '{src}/...' and
    '{work}/...')."""
    if _has_training_stack():
        argv = [sys.executable, "-m", "bevport"] + [a.format(src=tree, work=work) for a in args]
    elif _image_available():
        argv = ["docker", "run", "--rm", "-u", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/work",
                "-v", f"{tree}:/src:ro", "-v", f"{work}:/work", IMAGE, "bevport"] + \
               [a.format(src="/src", work="/work") for a in args]
    else:
        pytest.skip(f"neither this interpreter (mmcv, mmdet) nor {IMAGE} can import the training tree")
    return subprocess.run(argv, capture_output=True, text=True, timeout=3600)


def _tree(recipe: str) -> Path:
    tree = Path(SRC) / recipe
    if not (tree / "mmdet3d").is_dir():
        pytest.skip(f"{tree} holds no training tree (DEVELOPERS.md)")
    return tree


@pytest.fixture(scope="module", params=["v2xfusion-pp-r34", "bevfusion-cam-swint"])
def parity_run(request, tmp_path_factory):
    name = request.param
    tree, work = _tree(name), tmp_path_factory.mktemp(name)
    os.chmod(work, 0o777)
    made = bevport(["synth-ckpt", "--recipe", name, "--seed", "0", "--out", "{work}/seed0.pth"], tree, work)
    assert made.returncode == 0, made.stderr
    run = bevport(["parity", "--recipe", name, "--ckpt", "{work}/seed0.pth", "--source", "{src}",
                   "--out", "{work}/parity-reference.json"], tree, work)
    return name, run, work


def test_every_graph_matches_the_training_tree(parity_run):
    name, run, work = parity_run
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((work / "parity-reference.json").read_text())
    contract = build_contract(load_recipe(name))
    assert report["passed"] and set(report["graphs"]) == {spec.key for spec in contract}
    for key, graph in report["graphs"].items():
        assert set(graph["outputs"]) == {t.name for t in contract[key].outputs}
        for out in graph["outputs"].values():
            assert out["max_rel_error"] <= out["bound"]
            assert out["native_f64_rel_error"] < 1e-9         # bevport's model is the tree's model
    decoded = [g["decoded"] for g in report["graphs"].values() if "decoded" in g]
    assert len(decoded) == 1 and decoded[0]["passed"] and decoded[0]["boxes"][0] > 0


def test_the_report_names_the_standins_that_ran(parity_run):
    name, run, work = parity_run
    assert run.returncode == 0, run.stderr[-3000:]
    extensions = json.loads((work / "parity-reference.json").read_text())["reference"]["extensions"]
    assert extensions["mmdet3d.ops.iou3d.iou3d_cuda"]["source"] == "stand-in"
    assert extensions["mmdet3d.ops.iou3d.iou3d_cuda"]["calls"].get("nms_gpu", 0) >= 1
    if name == "bevfusion-cam-swint":
        assert extensions["mmdet3d.ops.bev_pool.bev_pool_ext"]["calls"]["bev_pool_forward"] == 2   # f32 and f64
    assert all(e["source"] in ("stand-in", "absent (not built, not called)") for e in extensions.values())


@pytest.mark.parametrize("name", ["v2xfusion-pp-r34", "bevfusion-cam-swint"])
def test_reference_backend_exports_graphs_that_infer_runs(name, tmp_path):
    tree, work = _tree(name), tmp_path
    os.chmod(work, 0o777)
    assert bevport(["synth-ckpt", "--recipe", name, "--seed", "1", "--out", "{work}/seed1.pth"], tree,
                   work).returncode == 0
    run = bevport(["export", "--recipe", name, "--ckpt", "{work}/seed1.pth", "--backend", "reference",
                   "--source", "{src}", "--out", "{work}/onnx", "-q"], tree, work)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((work / "onnx" / "export.json").read_text())
    assert summary["backend"]["name"] == "reference" and summary["backend"]["native_parity"].startswith("skipped")
    assert json.loads((work / "onnx" / "parity.json").read_text())["passed"]
    infer = bevport(["infer", "--recipe", name, "--bundle", "{work}/onnx", "--fp32", "--num-samples", "1",
                     "--pred-dir", "{work}/preds", "--no-timing", "-q"], tree, work)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert json.loads((work / "preds" / "infer.json").read_text())["frames"]
