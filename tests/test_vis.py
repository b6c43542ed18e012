"""Visualisation: box corners, projection, the BEV canvas, the camera overlay, the side-by-side frame and the MP4."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from PIL import Image

from bevport.data import scenes
from bevport.data.scenes import make_scene
from bevport.errors import BevportError
from bevport.runtime import vis

CLASS_NAMES = ["car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone"]                        # the V2XFusion recipe's classes
RANGES = {"x_range": (0.0, 102.4), "y_range": (-51.2, 51.2)}       # and its decoding range (bbox_coder.pc_range)
SCENE_CLASS = {"Car": "car", "Van": "car", "Truck": "truck", "Bus": "bus", "Pedestrian": "pedestrian",
               "Cyclist": "bicycle"}
CAR, TRUCK = CLASS_NAMES.index("car"), CLASS_NAMES.index("truck")


@pytest.fixture(scope="module")
def scene():
    return make_scene(0, 0)


def scene_detections(s):
    """The scene's GT as model-convention predictions: (boxes, labels, scores)."""
    labels = [CLASS_NAMES.index(SCENE_CLASS[n]) for n in s.names]
    return vis.model_boxes_from_physical(s.boxes), labels, np.linspace(0.95, 0.3, len(labels))


def colour_mask(image: Image.Image, color) -> np.ndarray:
    return np.all(np.asarray(image.convert("RGB")) == np.array(color, np.uint8), axis=-1)


def bbox(mask: np.ndarray):
    rows, cols = np.nonzero(mask)
    return cols.min(), rows.min(), cols.max(), rows.max()


# ------------------------------------------------------------------------------------------------------ geometry

def test_box_corners_match_the_scene_cuboids_and_front_face():
    rng = np.random.default_rng(0)
    phys = np.column_stack([rng.uniform(0, 60, 5), rng.uniform(-20, 20, 5), rng.uniform(-2, 0, 5),
                            rng.uniform(1, 10, 5), rng.uniform(0.5, 3, 5), rng.uniform(1, 4, 5),
                            rng.uniform(-math.pi, math.pi, 5)])
    corners = vis.box_corners(vis.model_boxes_from_physical(phys))
    assert corners.shape == (5, 8, 3)
    for k, box in enumerate(phys):
        ref = scenes.box_corners(box)                         # local +x (the heading) is its front face (1,3,7,5)
        mine = corners[k]
        assert np.allclose(np.sort(mine.round(6), axis=0), np.sort(ref.round(6), axis=0))
        front = {tuple(p) for p in ref[[1, 3, 7, 5]].round(6)}
        assert {tuple(p) for p in mine[list(vis.FRONT_FACE)].round(6)} == front
        assert np.allclose(mine[:4, 2], box[2] - box[5] / 2) and np.allclose(mine[4:, 2], box[2] + box[5] / 2)
        assert np.allclose(vis.front_midpoints(vis.model_boxes_from_physical(box[None]))[0],
                           ref[[1, 3], :2].mean(axis=0))


def test_project_matches_the_scene_camera(scene):
    pts = scene.points[:500, :3]
    uv, depth = vis.project(pts, scene.calib)
    ref_uv, ref_depth = scene.rig.project(pts)
    assert np.allclose(uv, ref_uv, atol=1e-6) and np.allclose(depth, ref_depth, atol=1e-9)
    uv3, depth3 = vis.project(pts.reshape(50, 10, 3), scene.calib)
    assert uv3.shape == (50, 10, 2) and np.allclose(depth3.reshape(-1), depth)


# ------------------------------------------------------------------------------------------------------------ BEV

def test_bev_image_of_a_scene(scene):
    boxes, labels, scores = scene_detections(scene)
    image = vis.bev_image(scene.points, boxes, labels, scores, boxes, labels, class_names=CLASS_NAMES, **RANGES)
    assert image.size == (800, 800) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    empty = np.asarray(vis.bev_image(None, None, [], [], class_names=CLASS_NAMES, **RANGES, legend=False))
    with_points = np.asarray(vis.bev_image(scene.points, None, [], [], class_names=CLASS_NAMES, **RANGES,
                                           legend=False))
    assert (np.any(with_points != empty, axis=-1)).sum() > 5000          # the LiDAR points are painted
    assert colour_mask(image, vis.class_color(CAR, CLASS_NAMES)).sum() > 500   # the cars are drawn in the car colour


def test_planted_boxes_land_where_x_points_up_and_y_left():
    # a car at x=50, y=0 heading +x; a truck at x=50, y=20 heading +y (left)
    phys = np.array([[50.0, 0.0, -1.0, 4.5, 1.9, 1.5, 0.0], [50.0, 20.0, -1.0, 8.0, 2.5, 3.0, math.pi / 2]])
    boxes = vis.model_boxes_from_physical(phys)
    image = vis.bev_image(None, boxes, [CAR, TRUCK], [0.9, 0.8], class_names=CLASS_NAMES, **RANGES, legend=False)
    m = 800 / 102.4                                                    # pixels per metre
    col = lambda y: (51.2 - y) * m                                     # noqa: E731
    row = lambda x: (102.4 - x) * m                                    # noqa: E731
    car = colour_mask(image, vis.class_color(CAR, CLASS_NAMES))
    c0, r0, c1, r1 = bbox(car)
    assert abs(c0 - col(0.95)) <= 2 and abs(c1 - col(-0.95)) <= 2     # width 1.9 m across the image
    assert abs(r0 - row(52.25)) <= 2 and abs(r1 - row(47.75)) <= 2    # length 4.5 m up the image
    tick = colour_mask(image, vis._lighter(vis.class_color(CAR, CLASS_NAMES)))   # heading tick: centre -> front (up)
    tc0, tr0, tc1, tr1 = bbox(tick)
    assert tr1 <= row(50.0) + 2 and tr0 <= row(51.5) and abs((tc0 + tc1) / 2 - col(0.0)) <= 2

    truck = colour_mask(image, vis.class_color(TRUCK, CLASS_NAMES))
    c0, r0, c1, r1 = bbox(truck)
    assert abs((c0 + c1) / 2 - col(20.0)) <= 2 and (c0 + c1) / 2 < 400   # y = +20 is left of the centre line
    assert abs(c0 - col(24.0)) <= 2 and abs(c1 - col(16.0)) <= 2     # its length lies along y (heading left)
    assert abs(r0 - row(51.25)) <= 2 and abs(r1 - row(48.75)) <= 2
    tick = colour_mask(image, vis._lighter(vis.class_color(TRUCK, CLASS_NAMES)))
    tc0, _, tc1, _ = bbox(tick)
    assert tc1 <= col(20.0) + 2 and tc0 <= col(23.0)                  # heading +y points left


def test_ground_truth_is_drawn_in_grey_and_legend_and_scale_bar_are_drawn():
    phys = np.array([[50.0, 0.0, -1.0, 4.5, 1.9, 1.5, 0.0]])
    boxes = vis.model_boxes_from_physical(phys)
    plain = np.asarray(vis.bev_image(None, None, [], [], class_names=CLASS_NAMES, **RANGES, legend=False)).astype(int)
    gt = vis.bev_image(None, None, [], [], gt_boxes=boxes, class_names=CLASS_NAMES, **RANGES, legend=False)
    c0, r0, c1, r1 = bbox(colour_mask(gt, vis.GT_COLOR))
    assert abs(r0 - 391.8) <= 2 and abs(r1 - 427.0) <= 2 and abs(c0 - 392.6) <= 2 and abs(c1 - 407.4) <= 2

    legend = np.asarray(vis.bev_image(None, boxes, [CAR], [0.9], gt_boxes=boxes, class_names=CLASS_NAMES, **RANGES))
    nolegend = np.asarray(vis.bev_image(None, boxes, [CAR], [0.9], gt_boxes=boxes, class_names=CLASS_NAMES, **RANGES,
                                        legend=False))
    corner = np.any(legend[:100, :120] != nolegend[:100, :120], axis=-1)
    assert corner.sum() > 1000                                          # the legend panel and its text
    assert (legend[:100, :120].max(axis=-1) > 200).sum() > 100          # bright text on it
    assert colour_mask(Image.fromarray(legend[:200, :200]), vis.class_color(CAR, CLASS_NAMES)).sum() > 20  # car swatch

    # the scale bar: a 10 m (78 px) bright bar in the bottom-right corner
    bar = np.all(plain[-60:, -160:] == vis.TEXT_COLOR, axis=-1)
    runs = [np.flatnonzero(r) for r in bar if r.any()]
    assert any(abs((r.max() - r.min() + 1) - 10 * 800 / 102.4) <= 3 for r in runs)
    # the sensor marker at the bottom centre
    assert (plain[-20:, 390:410] == 255).all(axis=-1).sum() > 20


def test_bev_intensity_colouring_and_score_threshold(scene):
    boxes, labels, scores = scene_detections(scene)
    a = np.asarray(vis.bev_image(scene.points, boxes, labels, scores, class_names=CLASS_NAMES, **RANGES,
                                 color_by="height"))
    b = np.asarray(vis.bev_image(scene.points, boxes, labels, scores, class_names=CLASS_NAMES, **RANGES,
                                 color_by="intensity"))
    assert np.any(a != b)
    none = vis.bev_image(None, boxes, labels, scores, class_names=CLASS_NAMES, **RANGES, score_threshold=1.0,
                         legend=False)
    assert not colour_mask(none, vis.class_color(CAR, CLASS_NAMES)).any()
    with pytest.raises(ValueError):
        vis.bev_image(scene.points, boxes, labels, scores, class_names=CLASS_NAMES, **RANGES, color_by="colour")


# --------------------------------------------------------------------------------------------------------- camera

@pytest.mark.parametrize("index", [0, 3])
def test_projected_box_covers_the_object_make_scene_drew(index):
    s = make_scene(3, index, min_objects=1, max_objects=1)
    assert len(s.boxes) == 1 and (s.instance_map == 1).sum() > 500
    boxes, labels, scores = scene_detections(s)
    black = Image.new("RGB", s.image.size, (0, 0, 0))
    drawn = vis.camera_image(black, s.calib, boxes, labels, scores, class_names=CLASS_NAMES, show_scores=False)
    edges = colour_mask(drawn, vis.class_color(labels[0], CLASS_NAMES))
    obj = s.instance_map == 1
    # the silhouette of the cuboid and the outline of its 12 projected edges have the same extent
    assert np.abs(np.array(bbox(edges)) - np.array(bbox(obj))).max() <= 3
    assert edges[obj].sum() > 0.8 * edges.sum() - 4 * edges.shape[0]    # the edges lie on the object
    # on the scene image itself: the front face is shaded and the score tag is there
    shown = vis.camera_image(s.image, s.calib, boxes, labels, scores, gt_boxes=boxes, class_names=CLASS_NAMES)
    assert np.any(np.asarray(shown) != np.asarray(s.image))
    assert colour_mask(shown, vis.GT_COLOR).sum() > 20


def test_camera_image_of_a_scene_and_boxes_behind_the_camera(scene):
    boxes, labels, scores = scene_detections(scene)
    shown = vis.camera_image(scene.image, scene.calib, boxes, labels, scores, class_names=CLASS_NAMES)
    assert shown.size == scene.image.size and np.any(np.asarray(shown) != np.asarray(scene.image))
    behind = vis.model_boxes_from_physical(np.array([
        [-10.0, 0.0, -1.0, 4.5, 1.9, 1.5, 0.0],                         # wholly behind
        [scene.rig.position[0], scene.rig.position[1], scene.rig.position[2], 6.0, 3.0, 3.0, 0.3],   # around it
        [50.0, 200.0, -1.0, 4.5, 1.9, 1.5, 0.0],                        # far off to the side: outside the image
    ]))
    out = vis.camera_image(scene.image, scene.calib, behind, [CAR, CAR, CAR], [0.9, 0.9, 0.9], gt_boxes=behind,
                           class_names=CLASS_NAMES)
    assert np.array_equal(np.asarray(out), np.asarray(scene.image.convert("RGB")))
    empty = vis.camera_image(np.asarray(scene.image), scene.calib, np.zeros((0, 9)), [], [], class_names=CLASS_NAMES)
    assert np.array_equal(np.asarray(empty), np.asarray(scene.image))


# ---------------------------------------------------------------------------------------------- frame and video

def test_frame_picture_layout(scene):
    bev = vis.bev_image(scene.points, None, [], [], class_names=CLASS_NAMES, **RANGES)
    picture = vis.frame_picture(scene.image, bev, frame_id="000000", detections=3, latency_ms=12.5)
    cam_w = round(1920 * 800 / 1080)
    assert picture.height > 800 and picture.width > cam_w + 800
    hud = picture.height - 800
    pixels = np.asarray(picture)
    assert np.array_equal(pixels[hud:, -800:], np.asarray(bev))
    assert (pixels[:hud, :400].max(axis=-1) > 200).sum() > 100        # the HUD text
    bare = np.asarray(vis.frame_picture(scene.image, bev))
    assert not (bare[:hud, :400].max(axis=-1) > 200).any()


def test_video_writer_writes_an_mp4_imageio_reads_back(tmp_path):
    imageio = pytest.importorskip("imageio")
    pytest.importorskip("imageio_ffmpeg")
    rng = np.random.default_rng(0)
    frames = []
    for k in range(3):
        a = np.zeros((830, 2226, 3), np.uint8)
        a[:, :, k] = 200
        a[100:300, 100:600] = rng.integers(0, 255, 3)
        frames.append(Image.fromarray(a))
    path = tmp_path / "vis" / "bevfusion.mp4"
    with vis.VideoWriter(path, fps=25, max_size=(1280, 720)) as video:
        for f in frames:
            video.write(f)
        video.write(np.asarray(frames[0])[:400, :400])                   # another size: fitted into the first
        assert not path.exists()                                         # appears only when finished
    assert path.stat().st_size > 1000
    assert video.size == (1280, 476) and video.frames == 4
    assert [p.name for p in path.parent.iterdir()] == ["bevfusion.mp4"]
    reader = imageio.get_reader(str(path), "ffmpeg")
    try:
        meta = reader.get_meta_data()
        read = [np.asarray(f) for f in reader]
    finally:
        reader.close()
    assert len(read) == 4 and read[0].shape == (476, 1280, 3)
    assert abs(meta["fps"] - 25) < 0.01
    for k in range(3):                                                   # the colours survive the round trip
        assert abs(float(read[k][300:, :, k].mean()) - 200) < 6
        assert float(read[k][300:, :, (k + 1) % 3].mean()) < 8

    again = tmp_path / "again.mp4"
    with vis.VideoWriter(again) as video:
        for f in frames:
            video.write(f)
        video.write(np.asarray(frames[0])[:400, :400])
    assert again.read_bytes() == path.read_bytes()                      # deterministic encoder settings


def test_video_writer_leaves_nothing_on_error_and_names_the_package(tmp_path, monkeypatch):
    pytest.importorskip("imageio_ffmpeg")
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError):
        with vis.VideoWriter(path) as video:
            video.write(Image.new("RGB", (64, 48)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(BevportError, match="imageio-ffmpeg"):
        vis.VideoWriter(tmp_path / "x.mp4")


def test_fit_size_is_even_and_never_upscales():
    assert vis.fit_size((2226, 830), (1280, 720)) == (1280, 476)
    assert vis.fit_size((1920, 1080), (1280, 720)) == (1280, 720)
    assert vis.fit_size((641, 481), (1280, 720)) == (640, 480)
    assert vis.fit_size((800, 1600), (1280, 720)) == (360, 720)
