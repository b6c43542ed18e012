"""Training-identical camera preprocessing and camera metas."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevport.data import CameraView, Calibration
from bevport.data.preprocess import (camera_metas, ground_denorm, image_tensor, img_aug_matrix, linear_resize,
                                     normalize, resize_params)
from bevport.errors import DatasetError

MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def random_image(h=1080, w=1920, seed=0):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8))


@pytest.fixture(scope="module")
def dair_image():
    return random_image()


def pitched_camera(pitch_deg: float, height: float, forward: float = 0.0):
    """lidar2cam of a camera `height` m above the LiDAR origin (and `forward` m ahead), pitched down."""
    base = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])   # x right, y down, z forward
    a = np.radians(pitch_deg)
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    rotation = pitch @ base
    centre = np.array([forward, 0.0, height])
    return rotation, -rotation @ centre


# ------------------------------------------------------------------------------------------------ resize and crop

def test_dair_resize_has_no_crop(recipe):
    p = resize_params(recipe)
    assert p.scale == pytest.approx(0.8) and p.resize_dims == (1536, 864) and p.crop == (0, 0, 1536, 864)
    np.testing.assert_array_equal(img_aug_matrix(recipe), np.diag([0.8, 0.8, 1.0, 1.0]).astype(np.float32))
    assert img_aug_matrix(recipe).dtype == np.float32


def test_other_aspect_ratio_crops_the_top(recipe):
    kitti = recipe.updated({"input": {"image_size": [384, 1280]},
                            "model": {"camera": {"vtransform": {"feature_size": [24, 80]}}}})
    p = resize_params(kitti)
    assert p.resize_dims == (1280, 720) and p.crop == (0, 336, 1280, 720)
    ida = img_aug_matrix(kitti)
    assert ida[0, 0] == np.float32(1280 / 1920) and ida[1, 3] == -336 and ida[0, 3] == 0


# ---------------------------------------------------------------------------------------------------------- image

def test_image_tensor_shape_and_dtype(recipe, dair_image):
    x = image_tensor(recipe, dair_image)
    assert x.shape == (1, 3, 864, 1536) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]


def test_red_image_reaches_the_network_as_bgr(recipe):
    x = image_tensor(recipe, Image.new("RGB", (1920, 1080), (255, 0, 0)))
    np.testing.assert_allclose(x[0, 2], (255 - 103.53) / 57.375, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1], (0 - 116.28) / 57.12, rtol=1e-6)
    np.testing.assert_allclose(x[0, 0], (0 - 123.675) / 58.395, rtol=1e-6)


def test_to_rgb_false_keeps_channel_order(recipe):
    plain = recipe.updated({"input": {"to_rgb": False}})
    x = image_tensor(plain, Image.new("RGB", (1920, 1080), (255, 0, 0)))
    np.testing.assert_allclose(x[0, 0], (255 - 123.675) / 58.395, rtol=1e-6)


def test_resize_is_pil_bicubic(recipe, dair_image):
    x = image_tensor(recipe, dair_image)
    for resample, same in ((Image.BICUBIC, True), (Image.BILINEAR, False)):
        rgb = np.asarray(dair_image.resize((1536, 864), resample), np.float64)
        expected = ((rgb[..., ::-1] - MEAN) / STD).transpose(2, 0, 1)
        assert np.allclose(x[0], expected, atol=1e-5) == same


def whole_image_tensor(recipe, image):
    """The single-threaded reference: resize the whole image, crop, normalise."""
    from bevport.data.preprocess import BICUBIC, normalize

    q = resize_params(recipe)
    resized = np.asarray(image.resize(q.resize_dims, BICUBIC).crop(q.crop), np.uint8)
    return normalize(resized, recipe.input.mean, recipe.input.std, bool(recipe.input.to_rgb))[None]


@pytest.mark.parametrize("size", [None, (384, 1280), (256, 704), (400, 704)])
@pytest.mark.parametrize("to_rgb", [True, False])
def test_image_tensor_per_channel_is_the_whole_image_resize(recipe, dair_image, size, to_rgb):
    """Bit for bit, at the recipe's geometry and at cropping ones, in both channel orders."""
    changes = {"input": {"to_rgb": to_rgb}}
    if size is not None:
        changes = {"input": {"image_size": list(size), "to_rgb": to_rgb},
                   "model": {"camera": {"vtransform": {"feature_size": [n // 16 for n in size]}}}}
    recipe = recipe.updated(changes)
    np.testing.assert_array_equal(image_tensor(recipe, dair_image), whole_image_tensor(recipe, dair_image))


def test_normalize_matches_opencv_float_steps():
    """float32 subtraction of the float32 mean, then a float64 product with 1/std rounded to float32."""
    rgb = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, axis=2)
    out = normalize(rgb, MEAN, STD, to_rgb=True)
    centred = rgb[..., ::-1].astype(np.float32) - MEAN.astype(np.float32)
    expected = (centred.astype(np.float64) * (1 / STD)).astype(np.float32)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
    assert not np.array_equal(out, ((centred * (1 / STD).astype(np.float32))).transpose(2, 0, 1))


def test_wrong_image_size(recipe):
    with pytest.raises(DatasetError) as info:
        image_tensor(recipe, Image.new("RGB", (1280, 720)), source="image_2/000001.jpg")
    message = str(info.value)
    assert "image_2/000001.jpg" in message and "1280x720" in message and "1920x1080" in message


def test_grey_image_is_accepted(recipe):
    x = image_tensor(recipe, Image.new("L", (1920, 1080), 50))
    np.testing.assert_allclose(x[0, 0], (50 - 123.675) / 58.395, rtol=1e-6)


def test_deploy_binary_feeds_rgb(recipe):
    x = image_tensor(recipe, Image.new("RGB", (1920, 1080), (255, 0, 0)), channel_order="deploy-binary")
    assert x.shape == (1, 3, 864, 1536) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (255 - 123.675) / 58.395, rtol=1e-6)
    np.testing.assert_allclose(x[0, 2], (0 - 103.53) / 57.375, rtol=1e-6)


def test_deploy_binary_stretches_any_size(recipe):
    x = image_tensor(recipe, random_image(100, 300), channel_order="deploy-binary")
    assert x.shape == (1, 3, 864, 1536)


def test_linear_resize_is_half_pixel():
    ramp = np.array([0.0, 1.0, 2.0, 3.0], np.float32)[None, :, None]
    np.testing.assert_array_equal(linear_resize(ramp, 1, 2)[0, :, 0], [0.5, 2.5])
    np.testing.assert_array_equal(linear_resize(ramp, 1, 8)[0, :, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_unknown_channel_order(recipe, dair_image):
    with pytest.raises(ValueError):
        image_tensor(recipe, dair_image, channel_order="bgr")


# --------------------------------------------------------------------------------------------------- camera metas

def test_denorm_is_lidar_up_axis_and_camera_height():
    rotation, translation = pitched_camera(15.0, 6.5, forward=2.0)
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3], lidar2cam[:3, 3] = rotation, translation
    denorm = ground_denorm(lidar2cam)
    np.testing.assert_allclose(denorm[:3], rotation @ [0.0, 0.0, 1.0], atol=1e-12)
    assert denorm[3] == pytest.approx(6.5)        # the camera centre is 6.5 m above the z=0 plane
    ground_point = lidar2cam @ [30.0, -4.0, 0.0, 1.0]
    assert denorm @ ground_point == pytest.approx(0.0, abs=1e-9)
    above = lidar2cam @ [30.0, -4.0, 1.25, 1.0]
    assert denorm @ above == pytest.approx(1.25)


def test_camera_metas(recipe):
    rotation, translation = pitched_camera(12.0, 5.0)
    k = np.array([[2000.0, 0.0, 960.0], [0.0, 2000.0, 540.0], [0.0, 0.0, 1.0]])
    calib = Calibration.from_dair(k.ravel(), rotation, translation)
    metas = camera_metas(recipe, CameraView.from_kitti("0", "camera", Path("0.jpg"), calib))
    for m in (metas.intrinsics, metas.camera2lidar, metas.img_aug, metas.lidar_aug, metas.denorm):
        assert m.dtype == np.float32
    expected_k = np.eye(4)
    expected_k[:3, :3] = k
    np.testing.assert_array_equal(metas.intrinsics, expected_k.astype(np.float32))
    np.testing.assert_allclose(metas.camera2lidar[:3, 3], [0.0, 0.0, 5.0], atol=1e-6)   # camera centre in LiDAR
    np.testing.assert_allclose(metas.camera2lidar.astype(np.float64) @ calib.lidar2cam, np.eye(4), atol=1e-6)
    np.testing.assert_array_equal(metas.lidar_aug, np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(metas.img_aug, img_aug_matrix(recipe))
    np.testing.assert_allclose(metas.denorm, np.append(rotation[:, 2], 5.0), atol=1e-6)
