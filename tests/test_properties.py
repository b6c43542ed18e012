"""Property-based tests (Hypothesis): generated malformed inputs through the readers, the recipe loader and the frame
preparation. The invariant: a result, or one error of bevport's own type (which the CLI turns into one message and
exit 1) — never another exception, and never non-finite geometry passed on."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bevport.data.kitti import read_calib_file, read_label_file
from bevport.data.pcd import read_bin, read_pcd
from bevport.errors import BevportError, DatasetError, RecipeError
from bevport.recipe import RECIPE_DIR, Recipe
from helpers import write_pcd

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 6, 10 ** 6))


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@SETTINGS
@given(data=st.binary(max_size=600))
def test_any_bytes_as_a_point_cloud(tmp_path, data):
    for name, read in (("p.pcd", read_pcd), ("p.bin", read_bin)):
        try:
            points = read(_write(tmp_path, name, data))
        except DatasetError:
            continue
        assert points.dtype == np.float32 and points.ndim == 2


@SETTINGS
@given(points=st.lists(st.tuples(NUMBERS, NUMBERS, NUMBERS, NUMBERS), max_size=20),
       kind=st.sampled_from(["ascii", "binary", "binary_compressed"]), cut=st.integers(0, 400))
def test_truncated_or_odd_pcd_files(tmp_path, points, kind, cut):
    """Real PCD files of any values, cut anywhere: read in full, or refused as a DatasetError."""
    array = np.array(points, np.float32).reshape(-1, 4)
    path = tmp_path / "p.pcd"
    write_pcd(path, array, data=kind)
    whole = path.read_bytes()
    path.write_bytes(whole[:max(0, len(whole) - cut)])
    try:
        read = read_pcd(path)
    except DatasetError:
        return
    if cut == 0:
        np.testing.assert_array_equal(read[:, :4], array)


CALIB_KEYS = ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo")


@SETTINGS
@given(lines=st.lists(st.tuples(st.sampled_from(CALIB_KEYS + ("junk", "")),
                                st.lists(st.one_of(NUMBERS.map(str), st.text(max_size=4)), max_size=14)),
                      max_size=9))
def test_any_calibration_text(tmp_path, lines):
    """A calibration is read with finite, invertible matrices, or refused naming its file."""
    text = "\n".join(f"{key}: {' '.join(values)}" for key, values in lines)
    path = _write(tmp_path, "c.txt", text.encode())
    try:
        calib = read_calib_file(path)
    except DatasetError as exc:
        assert str(path) in exc.message
        return
    for m in (calib.P2, calib.R0_rect, calib.Tr_velo_to_cam, calib.lidar2cam):
        assert np.isfinite(m).all()


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_label_text(tmp_path, text):
    path = _write(tmp_path, "l.txt", text.encode("utf-8", "surrogatepass"))
    try:
        read_label_file(path)
    except DatasetError:
        pass


BASE = yaml.safe_load((RECIPE_DIR / "v2xfusion-pp-r34.yaml").read_text())


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list) and node and not isinstance(node[0], (dict, list)):
        yield path
        for i in range(len(node)):
            yield path + (i,)
    else:
        yield path


LEAVES = [p for p in _leaves(BASE) if p]
JUNK = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=5), st.lists(NUMBERS, max_size=4),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(LEAVES), JUNK), min_size=1, max_size=3))
@example(edits=[(("model", "camera", "backbone", "out_indices", 0), 1024.0)])    # 2 ** 1024.0 overflowed
@example(edits=[(("model", "camera", "backbone", "out_indices", 1), -3)])
@example(edits=[(("model", "lidar", "voxelize", "point_cloud_range", 0), 1.4381545078898528e+308)])  # span -> inf
def test_a_recipe_with_junk_anywhere_loads_or_names_the_problem(edits):
    data = copy.deepcopy(BASE)
    for path, value in edits:
        node = data
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) or isinstance(key, int) and key < len(node) else None
            if not isinstance(node, (dict, list)):
                break
        else:
            last = path[-1]
            if isinstance(node, dict) or (isinstance(last, int) and last < len(node)):
                node[last] = value
    try:
        Recipe(data, "generated.yaml")
    except RecipeError as exc:
        assert exc.message.startswith("generated.yaml") or "config" in exc.message


@pytest.fixture(scope="module")
def v2x_pipeline(recipe, contract):
    from bevport.runtime.pipeline import pipeline_class

    return pipeline_class(recipe)(recipe, contract, {})


@SETTINGS
@given(points=st.lists(st.tuples(NUMBERS, NUMBERS, NUMBERS, NUMBERS), min_size=1, max_size=40))
def test_any_point_values_give_finite_pfe_inputs(v2x_pipeline, scenes, tmp_path, points):
    """Whatever a point cloud holds (nan, inf, huge, outside the grid), the PFE gets finite inputs and the frame
    notes what was dropped."""
    import shutil

    from bevport.data.dataset import open_dataset

    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(scenes, data)
    np.array(points, np.float32).tofile(data / "velodyne" / "000000.bin")
    try:
        inputs = v2x_pipeline.prepare(open_dataset(data).frame("000000"))
    except BevportError:
        return
    assert all(np.isfinite(v).all() for v in inputs.pfe.values())
    bad = int((~np.isfinite(np.array(points, np.float32))).any(axis=1).sum())
    assert (f"{bad} points with nan/inf values dropped" in " ".join(inputs.notes())) == (bad > 0)
