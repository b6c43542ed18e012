"""The V2X pipeline's frame preparation on real synthetic frames, without compiled graphs."""
from __future__ import annotations

import shutil

import numpy as np

from bevport.data.dataset import open_dataset
from bevport.runtime.pipeline import pipeline_class


def test_points_with_nan_or_inf_are_dropped_and_counted(recipe, contract, scenes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    path = data / "velodyne" / "000000.bin"
    points = np.fromfile(path, np.float32).reshape(-1, 4)
    bad = np.array([[np.nan, 1, 0, 10], [20, np.inf, 0, 10], [30, 2, 0, np.nan], [40, 3, -np.inf, 5]], np.float32)
    np.concatenate([points[:100], bad, points[100:]]).tofile(path)
    pipeline = pipeline_class(recipe)(recipe, contract, {})
    clean = pipeline.prepare(open_dataset(scenes).frame("000000"))
    dirty = pipeline.prepare(open_dataset(data).frame("000000"))
    assert clean.notes() == [] and dirty.notes() == ["frame 000000: 4 points with nan/inf values dropped"]
    for name, value in clean.pfe.items():
        np.testing.assert_array_equal(dirty.pfe[name], value)
    assert np.isfinite(dirty.pfe["features"]).all()
