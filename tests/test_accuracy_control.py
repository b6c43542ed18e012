"""`bevport quantize --max-ap-drop`: NNCF accuracy control scored by bevport's own AP on labelled frames."""
from __future__ import annotations

import json
import shutil

import pytest

from bevport.cli import main


def test_max_ap_drop_without_labels_fails_clearly(exported, calib, scenes, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(scenes, unlabelled)
    shutil.rmtree(unlabelled / "label_2")
    out = tmp_path / "ir"
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "--onnx", str(exported), "--calib", str(calib), "--out", str(out), "--max-ap-drop", "1",
              "--data", str(unlabelled), "--ap-first-frame", "0", "--ap-frames", "2", "-q"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "--max-ap-drop needs labelled frames" in err and str(unlabelled) in err
    assert not out.exists()


def test_max_ap_drop_rejects_a_negative_drop(exported, calib, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--onnx", str(exported), "--calib", str(calib), "--out", str(tmp_path / "ir"),
              "--max-ap-drop", "-1", "-q"])
    assert "--max-ap-drop (-1.0) must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_max_ap_drop_scores_every_quantized_graph(exported, calib, scenes, recipe, tmp_path):
    """A real accuracy-controlled run on labelled frames: every INT8 graph records the FP32 and INT8 AP it was
    held to, the kept-FP32 graph none."""
    out = tmp_path / "ir"
    main(["quantize", "--onnx", str(exported), "--calib", str(calib), "--out", str(out), "--max-ap-drop", "5",
          "--data", str(scenes), "--ap-first-frame", "0", "--ap-frames", "2", "--latency-runs", "1", "-q"])
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["settings"]["max_ap_drop"] == 5.0
    for graph, entry in summary["graphs"].items():
        if entry["precision"] == "fp32":
            assert "accuracy_control" not in entry
            continue
        control = entry["accuracy_control"]
        assert control["frames"] == 2 and control["metric"] == "mean moderate BEV AP"
        assert control["int8_ap"] >= control["fp32_ap"] - 5.0 - 1e-6 or entry["fake_quantize_ops"] == 0
