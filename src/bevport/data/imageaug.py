"""MIT BEVFusion's test-time camera preprocessing, bit for bit: `ImageAug3D` (is_train=False) and `ImageNormalize`.

Per camera: the PIL image is resized by `resize` (PIL's default filter, bicubic) to (int(W * r), int(H * r)), and
the bottom-aligned, horizontally centred `image_size` window is cropped. `ImageNormalize` is torchvision's
ToTensor (uint8 / 255 in float32, RGB) then Normalize ((x - mean) / std in float32). A uint8 channel has 256 levels,
so the float32 arithmetic runs once per level and the image is a lookup. The cameras are prepared on worker threads
(PIL's resize and NumPy's take release the GIL).

`img_aug_matrix` is the 4x4 float32 matrix ImageAug3D records: u' = r * u - crop_w, v' = r * v - crop_h.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from bevport.errors import DatasetError

F32 = np.float32
BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


@dataclass(frozen=True)
class Augmentation:
    resize: float
    resize_dims: Tuple[int, int]          # (W, H) after resizing
    crop: Tuple[int, int, int, int]       # (left, upper, right, lower) in the resized image


def augmentation(recipe) -> Augmentation:
    """ImageAug3D's test-time sample_augmentation for the recipe's raw and network image sizes."""
    raw_h, raw_w = recipe.input.raw_image_size
    out_h, out_w = recipe.input.image_size
    r = float(recipe.input.resize)
    new_w, new_h = int(raw_w * r), int(raw_h * r)
    crop_h = int((1 - float(np.mean(recipe.input.bot_pct_lim))) * new_h) - out_h
    crop_w = int(max(0, new_w - out_w) / 2)
    return Augmentation(r, (new_w, new_h), (crop_w, crop_h, crop_w + out_w, crop_h + out_h))


def img_aug_matrix(recipe) -> np.ndarray:
    a = augmentation(recipe)
    m = np.eye(4, dtype=F32)
    m[0, 0] = m[1, 1] = F32(a.resize)
    m[0, 3], m[1, 3] = -a.crop[0], -a.crop[1]
    return m


def normalize_tables(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[256, 3] float32: torchvision's (level / 255 - mean) / std, each step in float32."""
    levels = np.arange(256, dtype=F32)[:, None] / F32(255)
    return ((levels - np.asarray(mean, F32)) / np.asarray(std, F32)).astype(F32)


_POOL: Optional[ThreadPoolExecutor] = None


def _workers() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(6, os.cpu_count() or 1), thread_name_prefix="bevport-cams")
    return _POOL


def camera_tensor(recipe, images: Sequence[Image.Image], sources: Optional[Sequence[str]] = None) -> np.ndarray:
    """[N, 3, H, W] float32 network input of N camera images (PIL, any mode; converted to RGB)."""
    a = augmentation(recipe)
    raw_h, raw_w = recipe.input.raw_image_size
    tables = normalize_tables(recipe.input.mean, recipe.input.std)
    out = np.empty((len(images), 3) + tuple(recipe.input.image_size), F32)

    def prepare(i: int) -> None:
        image = images[i] if images[i].mode == "RGB" else images[i].convert("RGB")
        if image.size != (raw_w, raw_h):
            where = f"{sources[i]}: " if sources else ""
            raise DatasetError(f"{where}image is {image.size[0]}x{image.size[1]}, the recipe expects {raw_w}x{raw_h} "
                               "(input.raw_image_size)", "the crop and the camera matrices assume that size")
        rgb = np.asarray(image.resize(a.resize_dims, BICUBIC).crop(a.crop), np.uint8)
        for c in range(3):
            np.take(tables[:, c], rgb[..., c], out=out[i, c])

    for future in [_workers().submit(prepare, i) for i in range(len(images))]:
        future.result()
    return out
