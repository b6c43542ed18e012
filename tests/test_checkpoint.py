from __future__ import annotations

import collections
import os

import pytest
import torch

from bevport.checkpoint import (Opaque, load_weights, looks_sparse_trained, read_checkpoint, sparse_layers,
                                sparsity_eligible, sparsity_mask)
from bevport.errors import CheckpointError
from bevport.models.v2xfusion import V2XFusion
from conftest import data_file


@pytest.fixture(scope="module")
def state(synthetic_ckpt):
    return read_checkpoint(synthetic_ckpt)[0]


def fresh(recipe):
    return V2XFusion(recipe)


def assert_loaded(model, state):
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


class ShellCommand:
    """Unpickling this with the stock unpickler runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TrainingConfig:  # stands for mmcv's Config and friends inside `meta`
    def __init__(self):
        self.text = "model = dict(type='BEVFusion')"


def test_mmcv_checkpoint_loads_strictly(recipe, synthetic_ckpt, state):
    model = fresh(recipe)
    meta = load_weights(model, synthetic_ckpt)
    assert meta["synthetic"] is True and meta["recipe"] == "v2xfusion-pp-r34"
    assert not model.training
    assert_loaded(model, state)
    assert model.state_dict()["encoders.camera.vtransform.nx"].dtype == torch.int64


def test_bare_prefixed_and_incomplete_state_dicts(recipe, state, tmp_path):
    variants = {
        "bare.pth": collections.OrderedDict(state),
        "module.pth": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "no_nbt.pth": {"state_dict": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        model = fresh(recipe)
        load_weights(model, tmp_path / name)
        assert_loaded(model, state)


def test_untrusted_pickle_runs_nothing(recipe, state, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"meta": {"config": TrainingConfig(), "hook": ShellCommand(marker)}, "state_dict": state},
               tmp_path / "evil.pth")
    _, meta = read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    assert isinstance(meta["hook"], Opaque) and meta["hook"].qualname.endswith("system")
    assert isinstance(meta["config"], Opaque) and "TrainingConfig" in meta["config"].qualname
    model = fresh(recipe)
    load_weights(model, tmp_path / "evil.pth")
    assert not marker.exists()
    assert_loaded(model, state)


def test_whole_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(ShellCommand(marker), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        read_checkpoint(tmp_path / "model.pth")
    assert not marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "checkpoint not found"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("model weights\n"), "not a PyTorch checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), "not a state_dict"),
    (lambda p: torch.save({"state_dict": {"a": 1}}, p), "not a tensor"),
])
def test_unreadable_files(tmp_path, make, message):
    path = tmp_path / "ckpt.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_truncated_file(synthetic_ckpt, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(synthetic_ckpt.read_bytes()[: 50_000_000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)


def test_other_model_lists_missing_and_unexpected(recipe, state, tmp_path):
    other = {("img_backbone." + k[len("encoders.camera.backbone."):] if k.startswith("encoders.camera.backbone.")
              else k): v for k, v in state.items()}
    other["img_backbone.fc.weight"] = torch.zeros(1000, 512)
    torch.save({"state_dict": other}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as info:
        load_weights(fresh(recipe), tmp_path / "other.pth")
    text = str(info.value)
    assert "missing keys (first: encoders.camera.backbone.conv1.weight" in text
    assert "unexpected keys (first: img_backbone.conv1.weight" in text and "another model" in text


def test_wrong_shape_names_key_and_shapes(recipe, state, tmp_path):
    bad = dict(state)
    bad["fuser.0.weight"] = torch.zeros(80, 160, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"`fuser\.0\.weight` has shape \[80, 160, 3, 3\], "
                                              r"the model expects \[80, 144, 3, 3\]"):
        load_weights(fresh(recipe), tmp_path / "bad.pth")


def test_other_bev_grid_is_caught(recipe, state, tmp_path):
    bad = dict(state)
    bad["encoders.camera.vtransform.bx"] = torch.tensor([-50.8, -50.8, -1.0])
    torch.save(bad, tmp_path / "grid.pth")
    with pytest.raises(CheckpointError, match=r"(?s)vtransform\.bx`.*--config"):
        load_weights(fresh(recipe), tmp_path / "grid.pth")


def test_sparsity_rule_matches_reference(recipe):
    expected = data_file("sparsity_eligible.txt")
    assert sparse_layers(fresh(recipe)) == expected
    assert not sparsity_eligible((64, 3, 7, 7)) and not sparsity_eligible((256, 768, 1, 1))
    assert sparsity_eligible((512, 4096, 1, 1)) and not sparsity_eligible((512, 1024, 1, 1))
    assert sparsity_eligible((64, 64, 3, 3))


def test_sparsity_mask_zeroes_two_smallest_of_each_group():
    w = torch.tensor([[1.0, -4.0, 0.5, 3.0, 0.1, 0.2, -0.3, 0.4]]).reshape(1, 8, 1, 1)
    mask = sparsity_mask(w).flatten().tolist()
    assert mask == [0, 1, 0, 1, 0, 0, 1, 1]
    w = torch.randn(16, 32, 3, 3)
    m = sparsity_mask(w)
    assert torch.all(m.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2)
    kept = (w * m).abs().permute(0, 2, 3, 1).reshape(-1, 4)
    dropped = (w * (1 - m)).abs().permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.all(kept.max(1)[0] >= dropped.max(1)[0])


def test_sparse_trained_weights_warn_and_mask(recipe, state, tmp_path):
    names = sparse_layers(fresh(recipe))
    sparse = dict(state)
    for n in names:  # what sparse training leaves: masked weights decayed to ~1% of their size
        m = sparsity_mask(sparse[n])
        sparse[n] = sparse[n] * (m + 0.01 * (1 - m))
    assert looks_sparse_trained(sparse, names) and not looks_sparse_trained(state, names)
    torch.save({"state_dict": sparse}, tmp_path / "sparse.pth")
    warnings = []
    load_weights(fresh(recipe), tmp_path / "sparse.pth", warn=warnings.append)
    assert len(warnings) == 1 and "--sparsity" in warnings[0]
    model = fresh(recipe)
    load_weights(model, tmp_path / "sparse.pth", sparsity=True, warn=warnings.append)
    w = model.state_dict()[names[0]]
    assert torch.all(w.permute(0, 2, 3, 1).reshape(-1, 4).eq(0).sum(1) == 2)
    untouched = "encoders.camera.backbone.conv1.weight"
    assert torch.equal(model.state_dict()[untouched], sparse[untouched])
