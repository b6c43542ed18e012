"""Camera preprocessing identical to training (V2XDataset at test time) and the camera metas the geometry needs.

Training resizes the PIL RGB image with bicubic filtering (PIL's default at the pinned Pillow 8.4), crops, and calls
`mmcv.imnormalize(img, mean, std, to_rgb=True)` on the RGB array: that swaps the channels, so the network was
trained on B,G,R order with the RGB mean/std applied per index. `image_tensor` reproduces this bit for bit
(see `normalize` for the exact float arithmetic OpenCV does inside mmcv).

`channel_order="deploy-binary"` reproduces instead what Intel's split deploy binary feeds the camera model: a
direct half-pixel linear resize to the model size (no crop), true R,G,B order, and a division by std.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from bevport.errors import DatasetError

F32 = np.float32
CHANNEL_ORDERS = ("training", "deploy-binary")
# Image.BICUBIC moved to Image.Resampling in Pillow 9.1; both name the same filter.
BICUBIC = getattr(Image, "Resampling", Image).BICUBIC
GROUND_POINTS_LIDAR = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0]])


@dataclass(frozen=True)
class ResizeParams:
    scale: float
    resize_dims: Tuple[int, int]         # (W, H) after resizing
    crop: Tuple[int, int, int, int]      # (x1, y1, x2, y2) in the resized image


def resize_params(recipe) -> ResizeParams:
    """The test-time image augmentation of BEVHeight/V2XFusion (`sample_ida_augmentation`, is_train=False)."""
    raw_h, raw_w = recipe.input.raw_image_size
    out_h, out_w = recipe.input.image_size
    scale = max(out_h / raw_h, out_w / raw_w)
    new_w, new_h = int(raw_w * scale), int(raw_h * scale)
    bottom = float(np.mean(recipe.input.get("bot_pct_lim", [0.0, 0.0])))
    crop_h = int((1 - bottom) * new_h) - out_h
    crop_w = int(max(0, new_w - out_w) / 2)
    return ResizeParams(scale, (new_w, new_h), (crop_w, crop_h, crop_w + out_w, crop_h + out_h))


def img_aug_matrix(recipe) -> np.ndarray:
    """4x4 float32 mapping raw pixel coordinates to network-input coordinates: scale, then shift by -crop."""
    p = resize_params(recipe)
    ida = np.eye(4, dtype=F32)
    ida[0, 0] = ida[1, 1] = p.scale
    ida[0, 3], ida[1, 3] = -p.crop[0], -p.crop[1]
    return ida


# ---------------------------------------------------------------------------------------------------------- image

def normalize_tables(mean, std) -> np.ndarray:
    """[256, 3] float32: the normalised value of every uint8 level per channel index, computed as mmcv does.

    Bit-exact with OpenCV's scalar arithmetic inside mmcv: cv2.subtract rounds the float64 mean to float32 and
    subtracts in float32, while cv2.multiply works in float64 (x * 1/std) and rounds the product to float32.
    A uint8 input has 256 values per channel, so the arithmetic runs once per value and the image is a lookup."""
    values = np.arange(256, dtype=F32)[:, None]
    centred = values - np.asarray(mean, np.float64).astype(F32)
    return (centred.astype(np.float64) * (1.0 / np.asarray(std, np.float64))).astype(F32)


def normalize(rgb: np.ndarray, mean, std, to_rgb: bool) -> np.ndarray:
    """HWC uint8 -> CHW float32 like mmcv.imnormalize(rgb, mean, std, to_rgb): with to_rgb the channels are
    reversed (on PIL's RGB array that yields B,G,R)."""
    channels = rgb[..., ::-1] if to_rgb else rgb
    table = normalize_tables(mean, std)
    out = np.empty((3,) + rgb.shape[:2], F32)
    for c in range(3):
        np.take(table[:, c], channels[..., c], out=out[c])
    return out


def _check_size(recipe, image: Image.Image, source: Optional[str]) -> None:
    raw_h, raw_w = recipe.input.raw_image_size
    if image.size != (raw_w, raw_h):
        where = f"{source}: " if source else ""
        raise DatasetError(f"{where}image is {image.size[0]}x{image.size[1]}, the recipe expects {raw_w}x{raw_h} "
                           f"(input.raw_image_size)", "the checkpoint was trained on that size and the camera metas "
                           "assume it; resize the dataset's images, or use a recipe whose raw_image_size matches")


def image_tensor(recipe, image: Image.Image, channel_order: str = "training",
                 source: Optional[str] = None) -> np.ndarray:
    """The camera network input [1, 3, H, W] float32 for one PIL image. `source` names the file in errors."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if channel_order == "deploy-binary":
        return _deploy_binary_tensor(recipe, rgb)[None]
    _check_size(recipe, rgb, source)
    p = resize_params(recipe)
    x1, y1, x2, y2 = p.crop
    inp = recipe.input
    if not (0 <= x1 < x2 <= p.resize_dims[0] and 0 <= y1 < y2 <= p.resize_dims[1]):
        # a crop beyond the resized image: PIL pads it with zeros
        resized = rgb.resize(p.resize_dims, BICUBIC).crop(p.crop)
        return normalize(np.asarray(resized, np.uint8), inp.mean, inp.std, bool(inp.to_rgb))[None]
    # Per channel, in parallel: PIL's single-band resize does each channel's integer arithmetic exactly as its RGB
    # resize does (same coefficients, same rounding), and releases the GIL while it runs; the lookup normalisation is
    # per channel too. Bit-identical to resizing the RGB image, about half the wall time on two cores.
    tables = normalize_tables(inp.mean, inp.std)
    bands = rgb.split()
    out = np.empty((1, 3, y2 - y1, x2 - x1), F32)

    def channel(c: int) -> None:        # network channel c; with to_rgb it reads the reversed (B, G, R) band
        band = bands[2 - c if inp.to_rgb else c].resize(p.resize_dims, BICUBIC)
        np.take(tables[:, c], np.asarray(band, np.uint8)[y1:y2, x1:x2], out=out[0, c])

    list(_workers().map(channel, range(3)))
    return out


_POOL: Optional[ThreadPoolExecutor] = None


def _workers() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(3, os.cpu_count() or 1), thread_name_prefix="bevport-image")
    return _POOL


def _deploy_binary_tensor(recipe, rgb: Image.Image) -> np.ndarray:
    # Intel's binary: cv::imread BGR -> f32 -> RESIZE_LINEAR to the model size -> convert_color(RGB) -> (x-mean)/std.
    out_h, out_w = recipe.input.image_size
    x = linear_resize(np.asarray(rgb, np.uint8).astype(F32), out_h, out_w)
    mean = np.asarray(recipe.input.mean, np.float64).astype(F32)
    std = np.asarray(recipe.input.std, np.float64).astype(F32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def _linear_taps(n_in: int, n_out: int):
    """Source indices and weights of half-pixel linear interpolation along one axis (no antialiasing)."""
    src = (np.arange(n_out, dtype=F32) + F32(0.5)) * F32(n_in / n_out) - F32(0.5)
    # Taps outside the image get no weight in OpenVINO's Interpolate; clamping the coordinate is equivalent.
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(F32)


def linear_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """HWC float32 resized like OpenVINO's Interpolate (mode linear, half_pixel, antialias off)."""
    lo, hi, w = _linear_taps(x.shape[0], out_h)
    x = x[lo] * (F32(1) - w)[:, None, None] + x[hi] * w[:, None, None]
    lo, hi, w = _linear_taps(x.shape[1], out_w)
    return x[:, lo] * (F32(1) - w)[None, :, None] + x[:, hi] * w[None, :, None]


# --------------------------------------------------------------------------------------------------- camera metas

def ground_denorm(lidar2cam: np.ndarray) -> np.ndarray:
    """-[a, b, c, d] of the plane through LiDAR points (0,0,0), (0,1,0), (1,1,0) expressed in camera coordinates,
    as V2XFusion's get_denorm computes it (normal = cross product of the two edges, not normalised; for a rigid
    lidar2cam it has unit length). denorm[:3] is the LiDAR +z axis in the camera frame."""
    cam = (np.asarray(lidar2cam, np.float64) @ GROUND_POINTS_LIDAR.T).T[:, :3]
    normal = np.cross(cam[1] - cam[0], cam[2] - cam[0])
    return -np.append(normal, -normal @ cam[0])


@dataclass
class CameraMetas:
    """The per-camera matrices LSSV2XTransform takes (float32, as after the training collate)."""

    intrinsics: np.ndarray     # [4,4] [[K,0],[0,1]]
    camera2lidar: np.ndarray   # [4,4]
    img_aug: np.ndarray        # [4,4]
    lidar_aug: np.ndarray      # [4,4] identity at test time
    denorm: np.ndarray         # [4]

    def geometry_args(self) -> Tuple[np.ndarray, ...]:
        """(intrinsics, camera2lidar, img_aug, lidar_aug, denorm), the order geometry.lss.geometry takes them in."""
        return self.intrinsics, self.camera2lidar, self.img_aug, self.lidar_aug, self.denorm


def camera_metas(recipe, camera) -> CameraMetas:
    """The metas of one `CameraView` (intrinsics, lidar2camera) after the recipe's test-time image augmentation."""
    intrinsics = np.eye(4)
    intrinsics[:3, :3] = camera.intrinsics
    lidar2cam = camera.lidar2camera
    return CameraMetas(intrinsics.astype(F32), camera.camera2lidar.astype(F32), img_aug_matrix(recipe),
                       np.eye(4, dtype=F32), ground_denorm(lidar2cam).astype(F32))
