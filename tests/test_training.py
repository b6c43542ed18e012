"""The demo-weight training (CenterPoint targets and loss, the cached frames, resuming) and the trained weights."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from bevport.errors import BevportError
from bevport.training import demo
from bevport.training.centerpoint import REGRESSION, TargetGrid, dense_targets, draw_gaussian, gaussian_radius

SPLITS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Six labelled scenes of the accuracy benchmark's seed (never trained on), and their training cache."""
    from bevport.cli import main

    data = tmp_path_factory.mktemp("heldout") / "kitti"
    main(["synth-data", "--frames", "6", "--seed", "2000", "--out", str(data), "-q"])
    return data


@pytest.fixture(scope="module")
def cached(recipe, held_out, tmp_path_factory):
    return demo.build_cache(recipe, held_out, tmp_path_factory.mktemp("cache"), progress=lambda m: None)


def _oracle_head(targets):
    """Head outputs that say exactly what the targets say: logit +10 on centre cells, the regression maps."""
    tasks = []
    for t in targets:
        out = {"heatmap": np.where(t["heatmap"] == 1, 10.0, -10.0)[None].astype(np.float32)}
        start = 0
        for name in REGRESSION:
            out[name] = t["reg"][start:start + SPLITS[name]][None]
            start += SPLITS[name]
        tasks.append(out)
    return tasks


def test_gaussian_peaks_at_the_centre_and_clips_at_borders():
    heat = np.zeros((8, 8), np.float32)
    draw_gaussian(heat, 0, 7, 3)
    assert heat[0, 7] == 1.0 and heat[1, 7] < 1.0 and heat[3, 4] > 0 and heat[4, 7] == 0
    assert gaussian_radius(5.0, 2.0, 0.1) > gaussian_radius(5.0, 2.0, 0.7) > 0


def test_targets_decode_to_the_labelled_boxes(recipe, held_out, tmp_path):
    """Targets -> runtime decode -> KITTI prediction files reproduce the label files: every labelled Car, Pedestrian
    and Cyclist is found at the 3D overlap threshold, so the targets follow the convention predictions are written
    in (result2kitti headings, dx = width, z at the box centre)."""
    from bevport.formats import dataset_format
    from bevport.runtime.decode import decode_tasks

    fmt, grid = dataset_format(recipe), TargetGrid(recipe)
    dataset = fmt.open_dataset(recipe, held_out)
    for frame_id in dataset.ids:
        frame = dataset.frame(frame_id)
        boxes, labels = demo.frame_boxes(recipe, frame)
        detections = decode_tasks(_oracle_head(dense_targets(grid, boxes, labels)), recipe)
        assert len(detections) == len(boxes)
        for box, label in zip(boxes, labels):
            match = np.argmin(np.linalg.norm(detections.boxes[:, :2] - box[:2], axis=1))
            assert detections.labels[match] == label
            np.testing.assert_allclose(detections.boxes[match, 2], box[2] - box[5] / 2, atol=1e-4)
            np.testing.assert_allclose(detections.boxes[match, 3:6], box[3:6], rtol=1e-5)
            assert abs(np.sin(detections.boxes[match, 6] - box[6])) < 1e-5
        fmt.write_predictions(tmp_path, frame, detections, recipe)
    import json
    ap = json.loads(fmt.evaluate(dataset, tmp_path, dataset.ids).read_text())
    for cls, entry in ap["classes"].items():
        assert entry["moderate"]["tp_3d"] == entry["moderate"]["num_gt"], cls


def test_trained_part_is_the_recipes_and_fits_in_git(recipe):
    from bevport.models.v2xfusion import build

    model = build(recipe)
    keys = demo.trained_keys(recipe, model)
    assert all(k in keys for k in model.state_dict() if k.startswith(("encoders.lidar.", "fuser.", "heads.")))
    assert not any(k.startswith("encoders.camera.") for k in keys)
    assert "decoder.backbone.2.0.bn1.running_var" in keys and "decoder.backbone.2.0.conv1.weight" not in keys
    state = model.state_dict()
    assert sum(state[k].numel() * state[k].element_size() for k in keys) < 16 * 2 ** 20


def test_a_few_steps_lower_the_loss(recipe, cached):
    frames = demo.Frames(recipe, cached)
    model = demo.seeded_model(recipe)
    params = demo.set_trainable(recipe, model)
    assert model.fuser[1].training and not model.encoders["camera"]["backbone"].conv1.training
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    crops = frames.batch(np.random.default_rng(0), 2)
    targets = demo.crop_targets(crops)
    losses = []
    for _ in range(6):
        loss = demo.loss_of(recipe, demo.forward_crops(model, crops), targets)
        total = loss["heatmap"] + loss["box"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_training_resumes_where_it_stopped(recipe, cached, tmp_path):
    """Two steps, stop, resume to three: the same tensors as three steps in one go."""
    whole = demo.train(recipe, cached, tmp_path / "whole", steps=3, batch_size=2, log=lambda m: None)
    demo.train(recipe, cached, tmp_path / "parts", steps=3, batch_size=2, until=2, log=lambda m: None)
    resumed = demo.train(recipe, cached, tmp_path / "parts", steps=3, batch_size=2, log=lambda m: None)
    a, b = demo.trained_tensors(recipe, whole["model"]), demo.trained_tensors(recipe, resumed["model"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h[0] for h in resumed["history"]] == [1, 2, 3]


@pytest.fixture(scope="module")
def trained_ckpt(recipe, tmp_path_factory):
    from bevport.models.synthetic import write_synthetic_checkpoint

    path = tmp_path_factory.mktemp("trained") / "trained.pth"
    write_synthetic_checkpoint(recipe, recipe.train.base_seed, path, trained=True)
    return path


def test_composed_checkpoint_is_deterministic_and_loads_strictly(recipe, trained_ckpt, tmp_path):
    from bevport.checkpoint import load_weights
    from bevport.models.synthetic import write_synthetic_checkpoint
    from bevport.models.trained import load_trained
    from bevport.models.v2xfusion import V2XFusion

    again = tmp_path / "again.pth"
    write_synthetic_checkpoint(recipe, recipe.train.base_seed, again, trained=True)
    assert again.read_bytes() == trained_ckpt.read_bytes()
    model = V2XFusion(recipe)
    load_weights(model, trained_ckpt)
    state, trained = model.state_dict(), load_trained(recipe)
    assert all(torch.equal(state[k], v) for k, v in trained.items())


def test_trained_weights_detect_and_random_ones_do_not(recipe, trained_ckpt, held_out, cached, tmp_path):
    """The trained model finds the held-out cars; the seeded random weights it is composed over find none."""
    from bevport.checkpoint import load_weights
    from bevport.models.v2xfusion import V2XFusion

    model = V2XFusion(recipe)
    load_weights(model, trained_ckpt)
    trained = demo.evaluate(recipe, model, held_out, cached, tmp_path / "trained")["classes"]
    seeded = demo.evaluate(recipe, demo.seeded_model(recipe), held_out, cached, tmp_path / "seeded")["classes"]
    assert trained["Car"]["moderate"]["AP_BEV"] >= 40.0, trained
    assert seeded["Car"]["moderate"]["AP_BEV"] < 5.0, seeded


def test_trained_weights_are_checked(recipe, monkeypatch, tmp_path):
    from bevport.models import trained

    bad = tmp_path / recipe.train.weights.file
    data = trained.weights_path(recipe).read_bytes()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))            # one flipped byte
    monkeypatch.setattr(trained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(BevportError, match="sha256"):
        trained.load_trained(recipe)
    assert hashlib.sha256(bad.read_bytes()).hexdigest() != recipe.train.weights.sha256


def test_synth_ckpt_trained_refuses_another_seed(tmp_path, capsys):
    from bevport.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synth-ckpt", "--trained", "--seed", "3", "--out", str(tmp_path / "x.pth")])
    assert exit_info.value.code != 0
    assert "--trained composes the demo weights over seed 0" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
