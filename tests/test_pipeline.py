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


def test_frame_beyond_the_static_v_loses_no_pillar(recipe, contract, exported, model, tmp_path):
    """A frame with more than 9,000 pillars: the static-V PFE run in blocks of V gives every pillar the features of
    one dynamic-V PFE run over all of them (and of the PyTorch module), and the LiDAR BEV the fuser receives holds
    them all; --deploy-cap reproduces the deploy binary's first-V cut."""
    import openvino as ov
    import torch

    from bevport.data.scenes import write_synthetic_dataset
    from bevport.geometry.voxelize import scatter
    from bevport.runtime.graphs import compile_graph, infer, read_graph

    data = write_synthetic_dataset(tmp_path / "dense", frames=1, seed=4, density=2.2)
    core = ov.Core()
    files = {key: exported / contract[key].file for key in ("camera", "lidar_pfe", "lidar_pfe_dynamic", "fuser", "head")}
    compiled = {k: compile_graph(core, read_graph(core, f, contract[k]), "CPU", "f32") for k, f in files.items()}
    pipeline = pipeline_class(recipe)(recipe, contract, compiled)
    inputs = pipeline.prepare(open_dataset(data).frame("000000"))
    v = recipe.export.static_voxels
    assert inputs.num_voxels > 9000 and inputs.num_dropped == 0 and inputs.notes() == []
    assert inputs.pfe_runs == 2 and inputs.stats()["pfe_runs"] == 2
    result = pipeline.run(inputs)

    rows = {t.name: a[: inputs.num_voxels] for t, a in zip(contract["lidar_pfe"].inputs, inputs.pfe.values())}
    dynamic = infer(compiled["lidar_pfe_dynamic"], contract["lidar_pfe_dynamic"], rows)["pillar_features"]
    chunked = np.concatenate([infer(compiled["lidar_pfe"], contract["lidar_pfe"], c)["pillar_features"]
                              for c in inputs.pfe_chunks()])[: inputs.num_voxels]
    # two separately compiled graphs (static and dynamic V) round differently in float32: the parity gate's scale
    scale = 1e-4 * np.abs(dynamic).max()
    np.testing.assert_allclose(chunked, dynamic, rtol=0, atol=scale)
    keep = recipe.model.lidar.voxelize.max_num_points
    with torch.no_grad():
        torch_features = model.pillar_features(torch.from_numpy(rows["features"][:, :keep]),
                                               torch.from_numpy(rows["num_voxels"]).clamp(max=keep),
                                               torch.from_numpy(rows["coors"])).numpy()
    np.testing.assert_allclose(chunked, torch_features, rtol=0, atol=scale)
    lidar_bev = result.feeds["fuser"]["lidar_bev"]
    np.testing.assert_array_equal(lidar_bev, scatter(chunked, rows["coors"], rows["num_voxels"], recipe.bev_shape))
    assert np.count_nonzero(np.abs(lidar_bev).sum(axis=1)) > 9000    # cells of pillars beyond the first V are filled
    assert result.feeds["lidar_pfe"]["features"].shape[0] == v        # the graph's record: its first run

    capped = pipeline_class(recipe)(recipe, contract, compiled, deploy_cap=True).prepare(
        open_dataset(data).frame("000000"))
    assert capped.pfe_runs == 1 and capped.num_dropped == inputs.num_voxels - v
    assert "dropped" in capped.notes()[0]
    for name, value in capped.pfe.items():
        np.testing.assert_array_equal(value, inputs.pfe[name][:v])


def test_prefetch_keeps_order_forwards_errors_and_stops_with_the_consumer():
    import threading

    import pytest

    from bevport.errors import DatasetError
    from bevport.runtime.pipeline import prefetched

    produced = []

    def frames(fail_at=None):
        for i in range(100):
            if i == fail_at:
                raise DatasetError(f"frame {i}: unreadable")
            produced.append(i)
            yield i

    assert list(prefetched(frames(), 2)) == list(range(100))
    assert list(prefetched(frames(), 0)) == list(range(100))
    with pytest.raises(DatasetError, match="frame 5"):
        for i in prefetched(frames(fail_at=5), 2):
            assert i < 5
    produced.clear()
    for i in prefetched(frames(), 2):
        if i == 3:
            break
    assert len(produced) <= 3 + 1 + 2 + 1      # the consumed ones, at most `depth` queued and one being made
    assert not [t for t in threading.enumerate() if t.name == "bevport-prefetch"]
