"""The reference path without the upstream sources: stand-ins against dense references, the import hook on small
fake trees written here, the parity gate and its report. (With the sources: tests/test_reference_source.py.)"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bevport.reference import standins
from test_voxelize import loop_voxelize


# ------------------------------------------------------------------------------------------- dense references

def test_hard_voxelize_matches_the_kernel_loop():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform([-2, -6, -6, 0], [12, 6, 4, 255], (3000, 4)),
                          np.repeat(rng.uniform([0, -5, -4, 0], [10, 5, 2, 255], (20, 4)), 15, axis=0)])
    rng.shuffle(pts)
    rng_ = [0.0, -5.0, -5.0, 10.0, 5.0, 3.0]
    for max_voxels in (100000, 60):
        voxels = torch.zeros(max_voxels, 10, 4)
        coors = torch.zeros(max_voxels, 3, dtype=torch.int32)
        num = torch.zeros(max_voxels, dtype=torch.int32)
        m = standins.hard_voxelize(torch.from_numpy(pts).float(), voxels, coors, num, [0.5, 0.5, 8.0], rng_, 10,
                                   max_voxels, 3, True)
        want_v, want_c, want_n, _, _ = loop_voxelize(pts, rng_, [0.5, 0.5, 8.0], 10, max_voxels)
        assert m == len(want_n) and (m == 60) == (max_voxels == 60)
        np.testing.assert_array_equal(voxels[:m].numpy(), want_v)
        np.testing.assert_array_equal(coors[:m].numpy(), want_c)
        np.testing.assert_array_equal(num[:m].numpy(), want_n)
        assert num[:m].max() == 10


def test_dynamic_voxelize_marks_outside_points():
    pts = torch.tensor([[0.1, -4.9, 0.0], [9.99, 4.99, 2.9], [10.0, 0.0, 0.0], [-0.01, 0.0, 0.0], [3.3, 1.2, -5.0]])
    coors = torch.zeros(5, 3, dtype=torch.int32)
    standins.dynamic_voxelize(pts, coors, [0.5, 0.5, 8.0], [0.0, -5.0, -5.0, 10.0, 5.0, 3.0], 3)
    assert coors.tolist() == [[0, 0, 0], [19, 19, 0], [-1, -1, -1], [-1, -1, -1], [6, 12, 0]]


def test_bev_pool_forward_equals_a_dense_scatter_add():
    """Inputs as mmdet3d.ops.bev_pool.bev_pool builds them (rank sort, intervals of equal ranks)."""
    rng = np.random.default_rng(1)
    b, d, h, w, c, n = 2, 3, 7, 9, 5, 4000
    geom = torch.from_numpy(np.stack([rng.integers(0, h, n), rng.integers(0, w, n), rng.integers(0, d, n),
                                      rng.integers(0, b, n)], 1)).long()
    x = torch.from_numpy(rng.normal(size=(n, c))).double()
    ranks = geom[:, 0] * (w * d * b) + geom[:, 1] * (d * b) + geom[:, 2] * b + geom[:, 3]
    order = ranks.argsort()
    x, geom, ranks = x[order], geom[order], ranks[order]
    kept = torch.ones(n, dtype=torch.bool)
    kept[1:] = ranks[1:] != ranks[:-1]
    starts = torch.where(kept)[0].int()
    lengths = torch.diff(torch.cat([starts, torch.tensor([n], dtype=torch.int32)])).int()
    out = standins.bev_pool_forward(x, geom.int(), lengths, starts, b, d, h, w)
    dense = torch.zeros(b, d, h, w, c, dtype=torch.float64)
    dense.index_put_((geom[:, 3], geom[:, 2], geom[:, 0], geom[:, 1]), x, accumulate=True)
    assert out.shape == (b, d, h, w, c)
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-12)


def _kernel_corners(box):
    """[x1, y1, x2, y2, yaw] -> 4 corners rotated about the centre by -yaw (the iou3d kernel's convention)."""
    x1, y1, x2, y2, a = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    out = []
    for px, py in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)):
        dx, dy = px - cx, py - cy
        out.append((dx * math.cos(a) + dy * math.sin(a) + cx, -dx * math.sin(a) + dy * math.cos(a) + cy))
    return out


def _clip(subject, clipper):
    """Sutherland-Hodgman: the part of convex polygon `subject` inside convex `clipper` (both counter-clockwise
    or both clockwise)."""
    def side(p, a, b):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    sign = 1 if _area(clipper) > 0 else -1
    out = subject
    for i in range(len(clipper)):
        a, b = clipper[i], clipper[(i + 1) % len(clipper)]
        inp, out = out, []
        for j in range(len(inp)):
            p, q = inp[j], inp[(j + 1) % len(inp)]
            sp, sq = sign * side(p, a, b), sign * side(q, a, b)
            if sp >= 0:
                out.append(p)
            if sp * sq < 0:
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not out:
            return []
    return out


def _area(poly):
    return 0.5 * sum(poly[i][0] * poly[(i + 1) % len(poly)][1] - poly[(i + 1) % len(poly)][0] * poly[i][1]
                     for i in range(len(poly))) if len(poly) >= 3 else 0.0


def dense_overlap(a, b):
    return abs(_area(_clip(_kernel_corners(a), _kernel_corners(b))))


def _boxes(rng, n):
    xywhr = np.concatenate([rng.uniform(-6, 6, (n, 2)), rng.uniform(0.5, 4, (n, 2)), rng.uniform(-3.2, 3.2, (n, 1))], 1)
    half = xywhr[:, 2:4] / 2
    return np.concatenate([xywhr[:, :2] - half, xywhr[:, :2] + half, xywhr[:, 4:]], 1).astype(np.float32)


def test_rotated_iou_and_overlap_match_polygon_clipping():
    rng = np.random.default_rng(2)
    a, b = _boxes(rng, 40), _boxes(rng, 30)
    overlap = np.array([[dense_overlap(p, q) for q in b] for p in a])
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    iou = overlap / np.maximum(area(a)[:, None] + area(b)[None] - overlap, 1e-8)
    got_iou = torch.zeros(40, 30)
    got_overlap = torch.zeros(40, 30)
    standins.boxes_iou_bev_gpu(torch.from_numpy(a), torch.from_numpy(b), got_iou)
    standins.boxes_overlap_bev_gpu(torch.from_numpy(a), torch.from_numpy(b), got_overlap)
    assert (overlap > 0.1).sum() > 20                       # the boxes do overlap, often
    np.testing.assert_allclose(got_overlap.numpy(), overlap, atol=2e-4)
    np.testing.assert_allclose(got_iou.numpy(), iou, atol=2e-5)


def _dense_greedy(iou, thresh):
    keep = []
    for i in range(len(iou)):
        if all(iou[k, i] <= thresh for k in keep):
            keep.append(i)
    return keep


def test_nms_gpu_and_nms_normal_gpu_keep_what_greedy_dense_nms_keeps():
    rng = np.random.default_rng(3)
    boxes = _boxes(rng, 60)
    dense_rot = np.array([[dense_overlap(p, q) for q in boxes] for p in boxes])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area[:, None] + area[None] - dense_rot
    ax = np.maximum(np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0]), 0)
    ay = np.maximum(np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1]), 0)
    aligned = ax * ay / (area[:, None] + area[None] - ax * ay)
    for fn, iou in ((standins.nms_gpu, dense_rot / union), (standins.nms_normal_gpu, aligned)):
        for thresh in (0.05, 0.2):
            assert np.abs(iou - thresh).min() > 1e-4         # no pair sits on the threshold
            keep = torch.zeros(60, dtype=torch.long)
            n = fn(torch.from_numpy(boxes), keep, thresh, None)
            want = _dense_greedy(iou, thresh)
            assert keep[:n].tolist() == want and 3 < n < 60


def test_the_registry_names_exactly_the_three_inference_modules():
    assert set(standins.STANDINS) == {"mmdet3d.ops.voxel.voxel_layer", "mmdet3d.ops.bev_pool.bev_pool_ext",
                                      "mmdet3d.ops.iou3d.iou3d_cuda"}
    assert not set(standins.STANDINS) & set(standins.ABSENT)


# --------------------------------------------------------------------------------------- the import hook

def _write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


FAKE_TREE = {
    "mmdet3d/__init__.py": "",
    "mmdet3d/ops/__init__.py": "from .bev_pool import pool\nfrom .spconv import conv\n",
    "mmdet3d/ops/bev_pool/__init__.py": """
        import torch
        from . import bev_pool_ext
        def pool(x, geom, lengths, starts):
            return bev_pool_ext.bev_pool_forward(x, geom, lengths, starts, 1, 1, 2, 2)
    """,
    "mmdet3d/ops/spconv/__init__.py": "from .sparse_conv_ext import indice_conv\ndef conv(*a):\n    return indice_conv(*a)\n",
    "mmdet3d/models/__init__.py": "from mmdet3d.ops import pool, conv\n",
    "mmdet3d/models/builder.py": "",
}

RUN = """
import json, sys, torch
from pathlib import Path
from bevport.reference.tree import SourceTree, SourceTreeError
tree = SourceTree(Path(sys.argv[1]), "the pinned test tree")
out = {}
try:
    tree.import_package()
except SourceTreeError as e:
    print(json.dumps({"import_error": str(e)})); sys.exit(0)
from mmdet3d.ops import pool, conv
x = torch.arange(6.0).view(3, 2)
pooled = pool(x, torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.int32),
              torch.tensor([2, 1], dtype=torch.int32), torch.tensor([0, 2], dtype=torch.int32))
out["pooled"] = pooled if isinstance(pooled, str) else pooled.tolist()
try:
    conv(1)
except SourceTreeError as e:
    out["absent"] = str(e)
out["report"] = tree.finder.report()
print(json.dumps(out))
"""


def _run_tree(root: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", RUN, str(root)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_hook_serves_standins_and_absent_ops_to_an_unbuilt_tree(tmp_path):
    out = _run_tree(_write(tmp_path / "tree", FAKE_TREE))
    assert out["pooled"] == [[[[[2.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [4.0, 5.0]]]]]
    assert "mmdet3d.ops.spconv.sparse_conv_ext.indice_conv is a compiled op" in out["absent"]
    report = out["report"]
    assert report["mmdet3d.ops.bev_pool.bev_pool_ext"] == {"source": "stand-in", "calls": {"bev_pool_forward": 1}}
    assert report["mmdet3d.ops.spconv.sparse_conv_ext"]["source"].startswith("absent")
    assert "mmdet3d.ops.iou3d.iou3d_cuda" not in report          # never imported by this tree


def test_a_built_extension_wins_over_the_standin(tmp_path):
    tree = dict(FAKE_TREE)
    tree["mmdet3d/ops/bev_pool/bev_pool_ext.py"] = "def bev_pool_forward(*a):\n    return 'compiled'\n"
    out = _run_tree(_write(tmp_path / "tree", tree))
    assert out["pooled"] == "compiled"
    assert out["report"]["mmdet3d.ops.bev_pool.bev_pool_ext"]["source"].startswith("compiled (")


@pytest.mark.parametrize("change, expected", [
    ({"mmdet3d/models/__init__.py": "import numba_is_not_here\n"},
     "imports `numba_is_not_here` (mmdet3d/models/__init__.py:1), which is not installed here"),
    ({"mmdet3d/models/__init__.py": "from mmdet3d.ops import GeneralizedLSSFPN\n"},
     "cannot be imported (mmdet3d/models/__init__.py:1): cannot import name 'GeneralizedLSSFPN'"),
])
def test_a_tree_that_does_not_import_gets_one_message(tmp_path, change, expected):
    out = _run_tree(_write(tmp_path / "tree", {**FAKE_TREE, **change}))
    assert expected in out["import_error"]
    assert "the pinned test tree" in out["import_error"]


def test_a_folder_without_mmdet3d_is_named(tmp_path):
    out = _run_tree(tmp_path)
    assert out["import_error"].startswith(f"--source {tmp_path.resolve()}: no mmdet3d package there")


def test_cpu_only_makes_cuda_moves_no_ops_and_restores_them():
    from bevport.reference.tree import cpu_only

    if torch.cuda.is_available():
        pytest.skip("a CUDA host keeps .cuda()")
    original = torch.Tensor.cuda
    t = torch.ones(2)
    with cpu_only() as calls:
        assert t.cuda(t.device) is t
    assert calls["torch.Tensor.cuda"] == 1 and torch.Tensor.cuda is original


# ------------------------------------------------------------------------------------ the gate and the report

def _report(errors):
    outputs = {name: {"max_rel_error": e, "bound": 1e-4, "torch_f32_rel_error": 3e-6, "native_f64_rel_error": n}
               for name, (e, n) in errors.items()}
    return {"head": {"file": "head.onnx", "outputs": outputs}}


def test_first_failure_names_the_first_output_over_its_bound():
    from bevport.reference.parity import first_failure

    assert first_failure(_report({"score": (5e-5, 1e-15), "reg": (9e-5, 0.0)})) is None
    msg = first_failure(_report({"score": (5e-5, 1e-15), "reg": (2e-4, 0.0), "dim": (3e-4, 0.0)}))
    assert msg.startswith("head.onnx:reg (OpenVINO rel. error 2.00e-04 > bound 1.00e-04")
    msg = first_failure(_report({"score": (5e-5, 1e-3)}))
    assert msg.startswith("head.onnx:score (bevport's native model (float64) rel. error 1.00e-03")
    assert first_failure(_report({"score": (float("nan"), 0.0)})).startswith("head.onnx:score")


class _FakeReference:
    """A LoadedReference whose 'training tree' model is bevport's own (or a perturbed copy)."""

    def __init__(self, model, arch):
        from types import SimpleNamespace

        self.model = model
        self.arch = SimpleNamespace(sample_inputs=arch.sample_inputs, reference_outputs=arch.reference_outputs)


def test_compare_graph_passes_the_same_model_and_names_a_perturbed_one(recipe, model, exported, contract):
    """Real graphs in OpenVINO against a 'reference': bevport's own model passes; a copy whose head conv is off by
    0.1% fails on exactly the outputs that conv feeds."""
    import copy

    from bevport.models import architecture
    from bevport.export.parity import float64_copy
    from bevport.reference.parity import compare_graph, first_failure

    arch = architecture(recipe)
    spec = contract["head"]
    same = compare_graph(recipe, spec, exported / spec.file, _FakeReference(model, arch), float64_copy(model),
                         float64_copy(model), seed=0)
    assert same["passed"] and all(o["native_f64_rel_error"] == 0 for o in same["outputs"].values())
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.heads["object"].task_heads[1].reg[1].weight.mul_(1.001)
    diff = compare_graph(recipe, spec, exported / spec.file, _FakeReference(edited, arch), float64_copy(edited),
                         float64_copy(model), seed=0)
    assert not diff["passed"]
    assert first_failure({"head": diff}).startswith("head.onnx:reg2 (")
    assert [n for n, o in diff["outputs"].items() if o["max_rel_error"] > o["bound"]] == ["reg2"]


# ------------------------------------------------------------------------------ export and data-frame helpers

def test_an_axisless_squeeze_gets_axes_and_keeps_the_dynamic_dimension(tmp_path):
    """Training code ends the PFN in `.squeeze()`: exported as is, OpenVINO's CPU plugin refuses the dynamic rank."""
    import onnx
    import openvino as ov

    from bevport.export.onnx_export import explicit_squeeze_axes

    class Squeezing(torch.nn.Module):
        def forward(self, x):
            return (x.max(dim=1, keepdim=True)[0] * 2).squeeze()

    path = tmp_path / "squeeze.onnx"
    torch.onnx.export(Squeezing(), (torch.rand(5, 10, 64),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "V"}}, opset_version=13,
                      **({"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}))
    model = explicit_squeeze_axes(onnx.load(str(path)))
    squeeze = next(n for n in model.graph.node if n.op_type == "Squeeze")
    axes = next(i for i in model.graph.initializer if i.name == squeeze.input[1])
    assert list(onnx.numpy_helper.to_array(axes)) == [1]
    onnx.save(model, str(path))
    compiled = ov.Core().compile_model(str(path), "CPU")
    x = np.random.default_rng(0).random((7, 10, 64), dtype=np.float32)
    np.testing.assert_allclose(compiled(x)[0], x.max(axis=1) * 2, rtol=1e-6)


def test_decoded_boxes_match_exactly_or_only_where_scores_tie():
    from bevport.reference.parity import _match, _tied_scores

    rng = np.random.default_rng(4)
    boxes = rng.normal(size=(6, 9)).astype(np.float32)
    ours = {"boxes": boxes, "scores": np.float32([0.9, 0.8, 1.0, 0.95, 0.7, 0.6]), "labels": np.int32([0, 0, 1, 1, 2, 2])}
    theirs = {k: v[::-1].copy() for k, v in ours.items()}                  # the same boxes in another order
    assert _match(ours, theirs, 1e-4)["passed"]
    theirs["boxes"][0, 0] += 1e-3
    assert not _match(ours, theirs, 1e-4)["passed"]
    tied = dict(ours, scores=np.float32([0.9, 0.8, 1.0, 1.0, 0.7, 0.6]))
    assert _tied_scores(tied["scores"]).tolist() == [1.0]
    swapped = {k: v[[0, 1, 3, 2, 4, 5]] for k, v in tied.items()}            # tied boxes: order undefined
    assert not _match(tied, swapped, 1e-4)["passed"]


def test_pfe_feeds_from_frames_replace_padding_rows_with_real_voxels(recipe, contract):
    from bevport.reference.v2xfusion import prepare_feed

    spec = contract["lidar_pfe"]
    names = [t.name for t in spec.inputs]
    feed = {names[0]: np.arange(5 * 100 * 4, dtype=np.float32).reshape(5, 100, 4),
            names[1]: np.int32([3, 12, 0, 0, 0]), names[2]: np.int32([[0, 1, 2, 0]] * 5)}
    out = prepare_feed(recipe, spec, feed)
    assert out[names[1]].tolist() == [3, 12, 3, 12, 3]
    np.testing.assert_array_equal(out[names[0]][2], feed[names[0]][0])
    assert prepare_feed(recipe, contract["fuser"], feed) is feed


def test_source_pinned_outside_a_pinned_export_image_names_the_fix(recipe):
    from bevport.reference import SourceTreeError, resolve_source

    assert resolve_source(Path("/some/tree"), recipe) == Path("/some/tree")
    with pytest.raises(SourceTreeError, match="--source pinned: no pinned training tree") as e:
        resolve_source(Path("pinned"), recipe)
    assert "--reference-sources pinned" in str(e.value)
