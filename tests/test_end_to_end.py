"""Slow end-to-end runs (`invoke test --slow` / `make test-slow`): full exports of recipe variants."""
from __future__ import annotations

import json

import onnx
import pytest
import yaml

from bevport.cli import main
from bevport.configchain import load_config_chain
from conftest import CONFIG_CHAIN


@pytest.mark.slow
def test_config_variant_exports_with_sparsity(tmp_path):
    """Another image size and 180 height bins from an upstream-style config: no code changes, parity holds."""
    variant = tmp_path / "configs" / "variant" / "default.yaml"
    variant.parent.mkdir(parents=True)
    # the merged test chain as the variant's parent config, then the variant's own overrides
    (tmp_path / "configs" / "default.yaml").write_text(yaml.safe_dump(load_config_chain(CONFIG_CHAIN)))
    variant.write_text("image_size: [640, 1152]\nmodel:\n  encoders:\n    camera:\n      vtransform:\n"
                       "        image_size: ${image_size}\n"
                       "        feature_size: ${[image_size[0] // 16, image_size[1] // 16]}\n"
                       "        dbound: [-1.5, 3.0, 180]\n")
    ckpt, out = tmp_path / "variant.pth", tmp_path / "onnx"
    main(["synth-ckpt", "--config", str(variant), "--seed", "3", "--out", str(ckpt), "-q"])
    main(["export", "--config", str(variant), "--ckpt", str(ckpt), "--out", str(out), "--sparsity", "-q"])
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"]
    camera = onnx.load(str(out / "camera.backbone.onnx"), load_external_data=False).graph
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(camera.input[0]) == [1, 3, 640, 1152]
    assert [dims(o) for o in camera.output] == [[1, 80, 40, 72], [1, 180, 40, 72]]
    summary = json.loads((out / "export.json").read_text())
    assert summary["sparsity"] is True and str(variant) in summary["recipe_origin"]


@pytest.mark.slow
def test_calibrate_and_quantize_32_synthetic_frames_twice(exported, tmp_path):
    """The issue's acceptance run: 32 synthetic frames -> four INT8 IRs with the deploy names and a held-out report,
    byte-identical when a second, separate process quantizes the same ONNX and calibration set."""
    import subprocess
    import sys

    scenes, calib = tmp_path / "scenes", tmp_path / "calib"
    main(["synth-data", "--frames", "36", "--out", str(scenes), "-q"])
    main(["calibrate", "--onnx", str(exported), "--data", str(scenes), "--num-samples", "32", "--holdout", "4",
          "--out", str(calib), "-q"])
    runs = []
    for name in ("ir1", "ir2"):
        subprocess.run([sys.executable, "-m", "bevport", "quantize", "--onnx", str(exported), "--calib", str(calib),
                        "--latency-runs", "2", "--out", str(tmp_path / name), "-q"], check=True)
        runs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir() if p.suffix in (".xml", ".bin")})
    stems = {"quantized_camera", "quantized_lidar_pfe", "quantized_fuser", "quantized_head"}
    assert {f"{s}.{e}" for s in stems for e in ("xml", "bin")} <= set(runs[0])
    assert runs[0] == runs[1]
    report = json.loads((tmp_path / "ir1" / "report.json").read_text())
    assert report["calibration_frames"] == 32 and len(report["heldout_frames"]) == 4
    assert all(len(g["outputs"]) for g in report["graphs"].values())


@pytest.mark.slow
def test_convert_locally_twice_gives_the_same_bundle(synthetic_ckpt, tmp_path):
    """invoke convert's steps in this environment, twice from scratch: the release archives are byte-identical and
    verify; a rerun with nothing changed skips every step."""
    from bevport.convert.plan import ConvertRequest
    from bevport.convert.run import run_convert
    from bevport.bundle import verify_bundle

    archives = []
    for run in ("a", "b"):
        req = ConvertRequest(synthetic_ckpt, tmp_path / run / "work", tmp_path / run / "dist", num_samples=2,
                             holdout=1, allow_drift=True)
        outcome = run_convert(req, "local")
        assert set(outcome.values()) == {"ran"}
        (archive,) = (tmp_path / run / "dist").glob("*.tar.gz")
        assert verify_bundle(archive)["files"] > 20
        archives.append(archive.read_bytes())
    assert archives[0] == archives[1]
    assert set(run_convert(req, "local").values()) == {"skipped"}
