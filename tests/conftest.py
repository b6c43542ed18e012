from __future__ import annotations

import os
from pathlib import Path

import pytest

# An unexpected exception in the CLI is reported as one line with its traceback in a log file; in tests it is raised.
os.environ.setdefault("BEVPORT_TRACEBACK", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CONFIG_CHAIN = ROOT / "tests" / "data" / "configs" / "V2X-I" / "det" / "centerhead" / "lssfpn" / \
    "camera+pointpillar" / "resnet34" / "default.yaml"


def data_file(name: str) -> list[str]:
    """The non-blank lines of tests/data/<name>, without `#` comment lines (the header naming the source)."""
    lines = (DATA / name).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="session")
def recipe():
    from bevport.recipe import load_recipe

    return load_recipe("v2xfusion-pp-r34")


@pytest.fixture(scope="session")
def synthetic_ckpt(tmp_path_factory, recipe):
    from bevport.models.synthetic import write_synthetic_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "synthetic_seed0.pth"
    write_synthetic_checkpoint(recipe, 0, path)
    return path


@pytest.fixture(scope="session")
def model(recipe, synthetic_ckpt):
    from bevport.checkpoint import load_weights
    from bevport.models.v2xfusion import V2XFusion

    m = V2XFusion(recipe)
    load_weights(m, synthetic_ckpt)
    return m


@pytest.fixture(scope="session")
def exported(tmp_path_factory, recipe, synthetic_ckpt):
    """One real `bevport export` run on the synthetic checkpoint, shared by the export tests."""
    from bevport.cli import main

    out = tmp_path_factory.mktemp("export") / "onnx"
    main(["export", "--ckpt", str(synthetic_ckpt), "--out", str(out), "--quiet"])
    return out


@pytest.fixture(scope="session")
def contract(recipe):
    from bevport.contract import build_contract

    return build_contract(recipe)


def _main(argv):
    from bevport.cli import main

    main(argv)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "kitti"
    _main(["synth-data", "--frames", "4", "--seed", "7", "--out", str(out), "-q"])
    return out


@pytest.fixture(scope="session")
def calib(exported, scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib") / "calib"
    _main(["calibrate", "--onnx", str(exported), "--data", str(scenes), "--num-samples", "2", "--holdout", "1",
           "--out", str(out), "-q"])
    return out


@pytest.fixture(scope="session")
def quantized(exported, calib, tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "ir"
    _main(["quantize", "--onnx", str(exported), "--calib", str(calib), "--latency-runs", "1", "--out", str(out), "-q"])
    return out
