"""Pictures of detections: the camera image with projected 3D boxes, a bird's-eye view (BEV) canvas, the two side by
side with a one-line HUD, and an MP4 writer — what the deploy binary's `--vis` shows (800x800 BEV canvas over the
ranges the caller passes, the recipe's decoding range; MP4 at 25 fps, downscaled to fit 1280x720). Class names come
from the caller too. NumPy + Pillow only (imageio-ffmpeg or OpenCV for video).

Box conventions (LiDAR frame, x forward, y left, z up):

* model boxes [N,>=7] = (x, y, z_bottom, dx, dy, dz, yaw, ...): dx is the width, dy the length, dz the height; the
  length lies along angle `yaw` and the width along yaw + pi/2. The model was trained on DAIR-V2X-I labels whose
  rotation BEVHeight's gen_info passes through as yaw, so yaw is the physical heading: the front face is the one at
  +dy/2 along (cos yaw, sin yaw).
* physical boxes [N,7] = (x, y, z_center, l, w, h, heading) (synthetic scenes, KITTI labels through camera2lidar)
  become model boxes with `model_boxes_from_physical`, so that every drawing goes through one `box_corners`
  (bevport.geometry.boxes, which the synthetic scenes and the KITTI writers use too).

BEV canvas orientation: x (forward) points up, y (left) points left; the sensor sits at the bottom centre.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bevport.errors import BevportError
from bevport.geometry.boxes import box_corners

Color = Tuple[int, int, int]
PathLike = Union[str, "os.PathLike[str]"]

# One colour per class, the same in the camera view and on the BEV canvas: saturated, told apart on a dark canvas
# and on a daylight photo, and none of them grey (grey/white is ground truth).
CLASS_COLORS = {
    "car": (255, 168, 0),
    "truck": (255, 82, 82),
    "construction_vehicle": (186, 120, 255),
    "bus": (255, 92, 205),
    "trailer": (214, 168, 104),
    "barrier": (140, 214, 255),
    "motorcycle": (0, 222, 196),
    "bicycle": (64, 140, 255),
    "pedestrian": (96, 240, 96),
    "traffic_cone": (255, 238, 64),
}
_SPARE_COLORS = ((255, 128, 64), (128, 255, 200), (200, 255, 96), (255, 160, 200), (120, 180, 255))
GT_COLOR = (225, 228, 235)

BEV_BACKGROUND = (17, 19, 25)
GRID_COLOR = (46, 51, 62)
GRID_AXIS_COLOR = (70, 78, 94)
LABEL_COLOR = (128, 136, 152)
TEXT_COLOR = (236, 238, 242)
PANEL_COLOR = (8, 9, 12, 200)

NEAR = 0.1                       # camera near plane (m): a box with any corner closer is not drawn
GRID_STEP = 10.0                 # metres between grid lines on the BEV canvas
_RESAMPLE = getattr(Image, "Resampling", Image)     # Pillow >= 9.1 has Image.Resampling; 8.4 the module constants


# ------------------------------------------------------------------------------------------------------ geometry

# Corners as box_corners orders them: bottom 4 then top 4, each front-left, front-right, rear-right, rear-left.
EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
FRONT_FACE = (0, 1, 5, 4)


def model_boxes_from_physical(boxes7) -> np.ndarray:
    """[N,7] physical LiDAR boxes (x, y, z_center, l, w, h, heading) -> model boxes (x, y, z_bottom, dx=w, dy=l,
    dz=h, yaw=heading)."""
    b = np.asarray(boxes7, np.float64).reshape(-1, 7)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 5] / 2, b[:, 4], b[:, 3], b[:, 5], b[:, 6]], axis=1)


def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes if boxes is not None else np.zeros((0, 7)), np.float64)
    if b.size == 0:
        return np.zeros((0, 7))
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be [N,>=7] (x, y, z_bottom, dx, dy, dz, yaw, ...), got shape {b.shape}")
    return b[:, :7]


def front_midpoints(boxes) -> np.ndarray:
    """[N,2] BEV midpoint of each model box's front edge (where the heading tick ends)."""
    b = _as_boxes(boxes)
    heading = b[:, 6]
    return b[:, :2] + (b[:, 4:5] / 2) * np.stack([np.cos(heading), np.sin(heading)], axis=1)


def project(points_lidar, calib) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [...,2] and camera depth [...] of LiDAR-frame points [...,3] through calib.lidar2cam and
    calib.intrinsics. Points at or behind the camera get non-finite or meaningless uv: check depth first."""
    p = np.asarray(points_lidar, np.float64)
    m = np.asarray(calib.lidar2cam, np.float64)
    cam = p[..., :3] @ m[:3, :3].T + m[:3, 3]
    uvw = cam @ np.asarray(calib.intrinsics, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[..., :2] / uvw[..., 2:3]
    return uv, cam[..., 2]


# ------------------------------------------------------------------------------------------------- colours, text

def class_color(label, class_names: Sequence[str]) -> Color:
    """The fixed colour of a class, given its index into class_names or its name."""
    if isinstance(label, str):
        name, index = label, (list(class_names).index(label) if label in class_names else len(class_names))
    else:
        index = int(label)
        name = class_names[index] if 0 <= index < len(class_names) else ""
    color = CLASS_COLORS.get(name.lower())
    return color if color is not None else _SPARE_COLORS[index % len(_SPARE_COLORS)]


def _lighter(color: Color, amount: float = 0.55) -> Color:
    return tuple(int(round(c + (255 - c) * amount)) for c in color)


def _class_name(label, class_names: Sequence[str]) -> str:
    if isinstance(label, str):
        return label
    index = int(label)
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


_FONTS = {}  # type: Dict[int, Tuple[object, int]]
_BITMAP_HEIGHT = 11              # the bitmap font of load_default() on Pillow < 10.1


def _font(size: int):
    """(font, integer upscale): Pillow >= 10.1 scales its default font; older Pillow has one small bitmap font,
    which `_text` magnifies by an integer factor instead."""
    if size not in _FONTS:
        try:
            _FONTS[size] = (ImageFont.load_default(size=size), 1)
        except TypeError:                                   # Pillow < 10.1: no size argument
            _FONTS[size] = (ImageFont.load_default(), max(1, int(round(size / _BITMAP_HEIGHT))))
    return _FONTS[size]


def _text_box(text: str, size: int) -> Tuple[int, int, int, int]:
    """Ink bounding box (x0, y0, x1, y1) of `text` drawn at (0, 0)."""
    font, scale = _font(size)
    if hasattr(font, "getbbox"):
        try:
            x0, y0, x1, y1 = font.getbbox(text)
        except (AttributeError, ValueError):                # bitmap fonts before Pillow 9.2
            x0, y0, (x1, y1) = 0, 0, font.getsize(text)
    else:
        x0, y0, (x1, y1) = 0, 0, font.getsize(text)
    return int(x0) * scale, int(y0) * scale, int(x1) * scale, int(y1) * scale


def text_size(text: str, size: int) -> Tuple[int, int]:
    """(width, height) that `text` takes from its drawing origin."""
    _, _, x1, y1 = _text_box(text, size)
    return x1, y1


def _text(image: Image.Image, xy: Tuple[float, float], text: str, size: int, fill) -> None:
    font, scale = _font(size)
    x, y = int(round(xy[0])), int(round(xy[1]))
    if scale == 1:
        ImageDraw.Draw(image).text((x, y), text, font=font, fill=fill)
        return
    w, h = text_size(text, size)
    mask = Image.new("L", (max(1, w // scale), max(1, h // scale)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font, fill=255)
    mask = mask.resize((mask.width * scale, mask.height * scale), _RESAMPLE.NEAREST)
    image.paste(Image.new(image.mode, mask.size, fill), (x, y), mask)


def _text_centred(image: Image.Image, x: float, mid: float, text: str, size: int, fill) -> None:
    """Text from x whose line (capitals and descenders, whatever the text holds) is centred on row `mid`."""
    _, y0, _, y1 = _text_box("Ag", size)
    _text(image, (x, mid - (y0 + y1) / 2), text, size, fill)


def _panel(image: Image.Image, box: Tuple[float, float, float, float], fill=PANEL_COLOR) -> None:
    """A translucent rectangle composited onto an RGB image in place."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(image.width, x1), min(image.height, y1)
    if x1 <= x0 or y1 <= y0:
        return
    region = image.crop((x0, y0, x1, y1)).convert("RGBA")
    region = Image.alpha_composite(region, Image.new("RGBA", region.size, fill))
    image.paste(region.convert(image.mode), (x0, y0))


def _dashed_line(draw: ImageDraw.ImageDraw, p0, p1, fill, width: int, dash: float, gap: float) -> None:
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 1e-6:
        return
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    t = 0.0
    while t < length:
        e = min(t + dash, length)
        draw.line([(x0 + ux * t, y0 + uy * t), (x0 + ux * e, y0 + uy * e)], fill=fill, width=width)
        t += dash + gap


def _dashed_polygon(draw, points, fill, width: int, dash: float, gap: float) -> None:
    for i in range(len(points)):
        _dashed_line(draw, points[i], points[(i + 1) % len(points)], fill, width, dash, gap)


def _arrow(draw: ImageDraw.ImageDraw, tail, head, fill, width: int, tip: float) -> None:
    """A line from tail to head with a filled triangular tip at head."""
    (x0, y0), (x1, y1) = tail, head
    length = math.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    bx, by = x1 - ux * tip, y1 - uy * tip
    draw.line([(x0, y0), (bx, by)], fill=fill, width=width)
    draw.polygon([(x1, y1), (bx - uy * tip * 0.55, by + ux * tip * 0.55), (bx + uy * tip * 0.55, by - ux * tip * 0.55)],
                 fill=fill)


def _present_classes(labels, class_names: Sequence[str]) -> List[Tuple[str, Color]]:
    """(name, colour) of each distinct class among `labels`, in class_names order (unknown names last)."""
    names = {_class_name(label, class_names): label for label in labels}
    rank = {name: i for i, name in enumerate(class_names)}
    return [(name, class_color(names[name], class_names))
            for name in sorted(names, key=lambda n: (rank.get(n, len(rank)), n))]


def _labels_scores(boxes: np.ndarray, labels, scores, score_threshold: float):
    n = len(boxes)
    labels = list(labels) if labels is not None else [0] * n
    scores = np.asarray(scores, np.float64).reshape(-1) if scores is not None else np.ones(n)
    if len(labels) != n or len(scores) != n:
        raise ValueError(f"{n} boxes but {len(labels)} labels and {len(scores)} scores")
    keep = [i for i in range(n) if scores[i] >= score_threshold]
    return keep, labels, scores


# ------------------------------------------------------------------------------------------------------------ BEV

class BevCanvas:
    """Metres <-> pixels of a square BEV canvas: x (forward) up, y (left) left."""

    def __init__(self, size: int, x_range: Tuple[float, float], y_range: Tuple[float, float]):
        self.size = int(size)
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.y_range = (float(y_range[0]), float(y_range[1]))
        self.px_per_m_x = self.size / (self.x_range[1] - self.x_range[0])
        self.px_per_m_y = self.size / (self.y_range[1] - self.y_range[0])

    def to_pixels(self, xy) -> np.ndarray:
        """[...,2] metres (x, y) -> [...,2] pixel (column, row), continuous (pixel centres at +0.5)."""
        xy = np.asarray(xy, np.float64)
        col = (self.y_range[1] - xy[..., 1]) * self.px_per_m_y
        row = (self.x_range[1] - xy[..., 0]) * self.px_per_m_x
        return np.stack([col, row], axis=-1)


def _height_lut() -> np.ndarray:
    """256 colours for points, low (ground, dim slate) to high (pale cyan): quiet enough for boxes to stand out."""
    stops = np.array([0.0, 0.15, 0.45, 1.0])
    rgb = np.array([[66, 78, 102], [78, 114, 152], [96, 178, 214], [214, 244, 255]], np.float64)
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, stops, rgb[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


_LUT = _height_lut()


def _point_values(points: np.ndarray, color_by: str) -> np.ndarray:
    """Each point's 0..1 colour value: height above the ground (estimated as the 5th percentile of z), 0..3 m, or
    intensity (raw 0..255, or 0..1 when no value exceeds 1)."""
    if color_by == "height":
        z = points[:, 2]
        ground = np.percentile(z, 5) if len(z) else 0.0
        return np.clip((z - ground) / 3.0, 0.0, 1.0)
    if color_by == "intensity":
        if points.shape[1] < 4:
            raise ValueError("color_by='intensity' needs points [N,4] (x, y, z, intensity)")
        i = points[:, 3].astype(np.float64)
        top = 1.0 if len(i) and i.max() <= 1.0 else 255.0
        return np.clip(np.sqrt(i / top), 0.0, 1.0)     # sqrt: most returns are dim
    raise ValueError(f"color_by must be 'height' or 'intensity', got {color_by!r}")


def _rasterize_points(canvas: np.ndarray, geo: BevCanvas, points, color_by: str) -> None:
    """Paint points into an [S,S,3] uint8 array in place; where several fall in one pixel the highest value wins."""
    if points is None:
        return
    pts = np.asarray(points, np.float64)
    if pts.size == 0:
        return
    pts = pts.reshape(len(pts), -1)
    value = _point_values(pts, color_by)
    px = np.floor(geo.to_pixels(pts[:, :2])).astype(np.int64)
    ok = (px[:, 0] >= 0) & (px[:, 0] < geo.size) & (px[:, 1] >= 0) & (px[:, 1] < geo.size) & np.isfinite(value)
    flat, value = px[ok, 1] * geo.size + px[ok, 0], value[ok]
    if flat.size == 0:
        return
    order = np.lexsort((value, flat))                    # by pixel, then value: the last of each pixel is the max
    flat, value = flat[order], value[order]
    last = np.append(flat[1:] != flat[:-1], True)
    canvas.reshape(-1, 3)[flat[last]] = _LUT[np.round(value[last] * 255).astype(np.int64)]


def _grid_values(geo: BevCanvas):
    (x0, x1), (y0, y1) = geo.x_range, geo.y_range
    xs = np.arange(math.ceil(x0 / GRID_STEP), math.floor(x1 / GRID_STEP) + 1) * GRID_STEP
    ys = np.arange(math.ceil(y0 / GRID_STEP), math.floor(y1 / GRID_STEP) + 1) * GRID_STEP
    return xs, ys


def _grid_lines(image: Image.Image, geo: BevCanvas) -> None:
    draw = ImageDraw.Draw(image)
    xs, ys = _grid_values(geo)
    for y in ys:
        col = float(geo.to_pixels([0.0, y])[0])
        draw.line([(col, 0), (col, geo.size)], fill=GRID_AXIS_COLOR if y == 0 else GRID_COLOR, width=1)
    for x in xs:
        row = float(geo.to_pixels([x, 0.0])[1])
        draw.line([(0, row), (geo.size, row)], fill=GRID_AXIS_COLOR if x == 0 else GRID_COLOR, width=1)


def _grid_labels(image: Image.Image, geo: BevCanvas, ui: float, avoid: Sequence[Tuple[int, int, int, int]]) -> None:
    """Distances of the grid lines: forward x along the right edge, lateral y along the top, none under `avoid`."""
    size, font, margin = geo.size, max(9, int(round(11 * ui))), 3 * ui
    xs, ys = _grid_values(geo)

    def free(x0, y0, x1, y1):
        inside = 0 <= x0 and 0 <= y0 and x1 <= size and y1 <= size
        return inside and not any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in avoid)

    labels = []
    for x in xs:
        row = float(geo.to_pixels([x, 0.0])[1])
        text = f"{x:g} m"
        w, h = text_size(text, font)
        labels.append((size - w - margin, row - h - 2, text))
    for y in ys:
        col = float(geo.to_pixels([0.0, y])[0])
        labels.append((col + 3, margin, f"y {y:+g}" if y else "y 0"))
    placed = []  # type: List[Tuple[float, float, float, float]]
    for lx, ly, text in labels:
        w, h = text_size(text, font)
        rect = (lx, ly, lx + w, ly + h)
        if free(*rect) and not any(rect[0] < p[2] and p[0] < rect[2] and rect[1] < p[3]
                                                   and p[1] < rect[3] for p in placed):
            placed.append(rect)
            _text(image, (lx, ly), text, font, LABEL_COLOR)


def _ego(image: Image.Image, geo: BevCanvas, ui: float) -> None:
    """The sensor: a white wedge at its position (clamped into the canvas), with axis arrows x forward, y left."""
    draw = ImageDraw.Draw(image)
    col, row = (float(v) for v in geo.to_pixels([0.0, 0.0]))
    col = min(max(col, 12 * ui), geo.size - 12 * ui)
    row = min(max(row, 12 * ui), geo.size - 2 * ui)
    s = 9 * ui
    draw.polygon([(col, row - 1.6 * s), (col - s, row), (col + s, row)], fill=(255, 255, 255), outline=(0, 0, 0))
    arrow = 34 * ui
    width = max(1, int(round(2 * ui)))
    color = (200, 206, 218)
    _arrow(draw, (col, row - 1.6 * s - 3 * ui), (col, row - 1.6 * s - 3 * ui - arrow), color, width, 7 * ui)
    _arrow(draw, (col - s - 3 * ui, row - 0.5 * s), (col - s - 3 * ui - arrow, row - 0.5 * s), color, width, 7 * ui)
    font = max(9, int(round(11 * ui)))
    _text(image, (col + 4 * ui, row - 1.6 * s - 3 * ui - arrow), "x", font, color)
    w, h = text_size("y", font)
    _text(image, (col - s - 3 * ui - arrow - w - 3 * ui, row - 0.5 * s - h * 0.7), "y", font, color)
    _text(image, (col + s + 4 * ui, row - text_size("LiDAR", font)[1] - 2 * ui), "LiDAR", font, color)


def _scale_bar(image: Image.Image, geo: BevCanvas, ui: float, metres: float = 10.0) -> Tuple[int, int, int, int]:
    """A `metres` scale bar in the bottom-right corner; returns its panel box."""
    length = metres * geo.px_per_m_y
    font = max(9, int(round(12 * ui)))
    text = f"{metres:g} m"
    tw, th = text_size(text, font)
    pad = 6 * ui
    x1, y1 = geo.size - pad * 2, geo.size - pad * 2
    x0 = x1 - length
    box = (int(x0 - pad), int(y1 - th - 12 * ui - pad), int(x1 + pad), int(y1 + pad))
    _panel(image, box)
    draw = ImageDraw.Draw(image)
    width = max(2, int(round(3 * ui)))
    tick = 5 * ui
    draw.line([(x0, y1 - tick), (x1, y1 - tick)], fill=TEXT_COLOR, width=width)
    draw.line([(x0, y1), (x0, y1 - 2 * tick)], fill=TEXT_COLOR, width=max(1, width // 2 + 1))
    draw.line([(x1, y1), (x1, y1 - 2 * tick)], fill=TEXT_COLOR, width=max(1, width // 2 + 1))
    _text(image, ((x0 + x1 - tw) / 2, y1 - 2 * tick - th - 2 * ui), text, font, TEXT_COLOR)
    return box


def _axes_row(image: Image.Image, x: float, mid: float, size: int, ui: float, draw_it: bool) -> float:
    """'x [arrow up] forward   y [arrow left] left' from x, centred on row `mid`; returns its width."""
    draw = ImageDraw.Draw(image)
    arrow, width = 12 * ui, max(1, int(round(1.5 * ui)))
    start = x
    items = [("text", "x"), ("arrow", (0.0, -1.0)), ("text", "forward"), ("gap", None), ("text", "y"),
             ("arrow", (-1.0, 0.0)), ("text", "left")]
    for kind, value in items:
        if kind == "text":
            if draw_it:
                _text_centred(image, x, mid, value, size, TEXT_COLOR)
            x += text_size(value, size)[0] + 4 * ui
        elif kind == "gap":
            x += 10 * ui
        else:
            dx, dy = value
            if draw_it:
                cx, cy = x + arrow / 2, mid
                _arrow(draw, (cx - dx * arrow / 2, cy - dy * arrow / 2), (cx + dx * arrow / 2, cy + dy * arrow / 2),
                       TEXT_COLOR, width, 5 * ui)
            x += arrow + 4 * ui
    return x - start


def _legend(image: Image.Image, ui: float, classes: Sequence[Tuple[str, Color]], has_pred: bool, has_gt: bool,
            title: Optional[str]) -> Tuple[int, int, int, int]:
    """Top-left panel: title, orientation, line styles, and the colours of the classes in this frame; returns its
    box."""
    font = max(10, int(round(13 * ui)))
    pad, line = 8 * ui, max(int(round(19 * ui)), text_size("Ag", font)[1] + 4)
    swatch = 22 * ui
    rows = [("title", title or "bird's-eye view"), ("axes", "")]
    if has_pred:
        rows.append(("pred", "prediction"))
    if has_gt:
        rows.append(("gt", "ground truth"))
    rows += [("class", name, color) for name, color in classes]
    widths = []
    for row in rows:
        if row[0] == "axes":
            widths.append(_axes_row(image, 0, 0, font, ui, draw_it=False))
        else:
            widths.append(text_size(row[1], font)[0] + (swatch + 6 * ui if row[0] != "title" else 0))
    box = (0, 0, int(2 * pad + max(widths)), int(2 * pad + line * len(rows)))
    _panel(image, box)
    draw = ImageDraw.Draw(image)
    for n, row in enumerate(rows):
        kind, text = row[0], row[1]
        mid, x = pad + line * (n + 0.5), pad
        if kind == "axes":
            _axes_row(image, x, mid, font, ui, draw_it=True)
            continue
        if kind != "title":
            sx0, sx1, sy0, sy1 = pad, pad + swatch, mid - 5 * ui, mid + 5 * ui
            if kind == "pred":
                draw.rectangle([sx0, sy0, sx1, sy1], outline=TEXT_COLOR, width=max(1, int(round(2 * ui))))
            elif kind == "gt":
                _dashed_polygon(draw, [(sx0, sy0), (sx1, sy0), (sx1, sy1), (sx0, sy1)], GT_COLOR,
                                max(1, int(round(ui))), 4 * ui, 3 * ui)
            else:
                color = row[2]
                draw.rectangle([sx0, sy0, sx1, sy1], fill=tuple(int(c * 0.45) for c in color), outline=color,
                               width=max(1, int(round(2 * ui))))
            x = pad + swatch + 6 * ui
        _text_centred(image, x, mid, text, font, TEXT_COLOR)
    return box


def bev_image(points, pred_boxes, pred_labels, pred_scores, gt_boxes=None, gt_labels=None, *,
              class_names: Sequence[str], x_range: Tuple[float, float], y_range: Tuple[float, float],
              size: int = 800, score_threshold: float = 0.0, color_by: str = "height",
              title: Optional[str] = None, legend: bool = True) -> Image.Image:
    """The BEV canvas over x_range x y_range (metres; the recipe's decoding range): grid every 10 m, LiDAR points
    coloured by height (or intensity), predicted boxes in their class colour with a heading tick to the front edge,
    ground truth as dashed light outlines (tinted toward the class colour when gt_labels is given), the sensor, a
    10 m scale bar and a legend. x forward is up, y left is left. Boxes are model-convention [N,>=7]; labels index
    class_names (or are names)."""
    geo = BevCanvas(size, x_range, y_range)
    ui = geo.size / 800.0
    base = np.empty((geo.size, geo.size, 3), np.uint8)
    base[:] = BEV_BACKGROUND
    image = Image.fromarray(base, "RGB")
    _grid_lines(image, geo)
    pixels = np.array(image)
    _rasterize_points(pixels, geo, points, color_by)
    image = Image.fromarray(pixels, "RGB")

    preds = _as_boxes(pred_boxes)
    keep, labels, scores = _labels_scores(preds, pred_labels, pred_scores, score_threshold)
    if keep:
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        fill_draw = ImageDraw.Draw(overlay)
        corners = geo.to_pixels(box_corners(preds[keep])[:, :4, :2])
        centres = geo.to_pixels(preds[keep, :2])
        fronts = geo.to_pixels(front_midpoints(preds[keep]))
        line = max(1, int(round(2 * ui)))
        order = np.argsort(scores[keep], kind="stable")          # best last: drawn on top
        for j in order:
            color = class_color(labels[keep[j]], class_names)
            fill_draw.polygon([tuple(p) for p in corners[j]], fill=color + (70,))
        image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
        draw = ImageDraw.Draw(image)
        for j in order:
            color = class_color(labels[keep[j]], class_names)
            poly = [tuple(p) for p in corners[j]]
            draw.line(poly + [poly[0]], fill=color, width=line, joint="curve")
            draw.line([tuple(centres[j]), tuple(fronts[j])], fill=_lighter(color), width=line)

    gts = _as_boxes(gt_boxes)
    if len(gts):
        draw = ImageDraw.Draw(image)
        corners = geo.to_pixels(box_corners(gts)[:, :4, :2])
        centres, fronts = geo.to_pixels(gts[:, :2]), geo.to_pixels(front_midpoints(gts))
        glabels = list(gt_labels) if gt_labels is not None else None
        width = max(1, int(round(ui)))
        for j in range(len(gts)):
            color = GT_COLOR
            if glabels is not None:
                tint = class_color(glabels[j], class_names)
                color = tuple(int(round(0.7 * g + 0.3 * t)) for g, t in zip(GT_COLOR, tint))
            _dashed_polygon(draw, [tuple(p) for p in corners[j]], color, width, 4 * ui, 3 * ui)
            draw.line([tuple(centres[j]), tuple(fronts[j])], fill=color, width=width)

    _ego(image, geo, ui)
    panels = [_scale_bar(image, geo, ui)]
    if legend:
        classes = _present_classes([labels[i] for i in keep], class_names)
        panels.append(_legend(image, ui, classes, bool(keep), len(gts) > 0, title))
    _grid_labels(image, geo, ui, panels)
    return image


# --------------------------------------------------------------------------------------------------------- camera

def _rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be [H,W], [H,W,3] or [H,W,4], got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array[..., :3]).astype(np.uint8), "RGB")


def _visible(uv: np.ndarray, depth: np.ndarray, width: int, height: int) -> bool:
    """Every corner before the near plane, and the box's projection overlapping the image."""
    if not np.all(depth > NEAR) or not np.all(np.isfinite(uv)):
        return False
    (u0, v0), (u1, v1) = uv.min(axis=0), uv.max(axis=0)
    return u1 >= 0 and v1 >= 0 and u0 < width and v0 < height


def _tag_rect(image: Image.Image, anchor: Tuple[float, float], text: str, size: int):
    """(x0, y0, x1, y1) of a tag whose bottom-left corner sits at `anchor`, kept inside the image."""
    _, y0, x1, y1 = _text_box(text, size)
    pad = max(2, size // 6)
    w, h = x1 + 2 * pad, y1 - min(y0, 0) + 2 * pad
    x = min(max(0.0, anchor[0]), image.width - w)
    y = min(max(0.0, anchor[1] - h), image.height - h)
    return x, y, x + w, y + h


def _tag(image: Image.Image, rect, text: str, size: int, color: Color) -> None:
    """A class-coloured tag with dark text."""
    x0, y0, x1, y1 = rect
    pad = max(2, size // 6)
    ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    _text(image, (x0 + pad, y0 + pad - min(_text_box(text, size)[1], 0)), text, size, (16, 16, 20))


def camera_image(image, calib, pred_boxes, pred_labels, pred_scores, gt_boxes=None, *,
                 class_names: Sequence[str], score_threshold: float = 0.0,
                 show_scores: bool = True) -> Image.Image:
    """The camera image with every box projected through calib (12 edges in the class colour, the front face
    shaded, a `name score` tag), ground truth as thin light edges on top. Boxes with a corner at depth <= 0.1 m, or
    wholly outside the image, are skipped. Boxes are model-convention [N,>=7]."""
    out = _rgb(image)
    width, height = out.size
    ui = max(0.5, height / 540.0)
    line, thin = max(1, int(round(1.5 * ui))), max(1, int(round(0.6 * ui)))
    font = max(10, int(round(11 * ui)))

    preds = _as_boxes(pred_boxes)
    keep, labels, scores = _labels_scores(preds, pred_labels, pred_scores, score_threshold)
    drawn = []  # type: List[Tuple[float, int, np.ndarray]]
    if keep:
        uv, depth = project(box_corners(preds[keep]), calib)
        for j, i in enumerate(keep):
            if _visible(uv[j], depth[j], width, height):
                drawn.append((float(depth[j].mean()), i, uv[j]))
    drawn.sort(key=lambda d: -d[0])                                   # far to near: near boxes on top
    if drawn:
        overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
        faces = ImageDraw.Draw(overlay)
        for _, i, uv_i in drawn:
            faces.polygon([tuple(uv_i[k]) for k in FRONT_FACE], fill=class_color(labels[i], class_names) + (90,))
        out = Image.alpha_composite(out.convert("RGBA"), overlay).convert("RGB")
        draw = ImageDraw.Draw(out)
        for _, i, uv_i in drawn:
            color = class_color(labels[i], class_names)
            for a, b in EDGES:
                draw.line([tuple(uv_i[a]), tuple(uv_i[b])], fill=color, width=line)
            f = [tuple(uv_i[k]) for k in FRONT_FACE]                   # a cross marks the front face
            draw.line([f[0], f[2]], fill=color, width=max(1, line - 1))
            draw.line([f[1], f[3]], fill=color, width=max(1, line - 1))

    gts = _as_boxes(gt_boxes)
    if len(gts):
        draw = ImageDraw.Draw(out)
        uv, depth = project(box_corners(gts), calib)
        for j in range(len(gts)):
            if _visible(uv[j], depth[j], width, height):
                for a, b in EDGES:
                    draw.line([tuple(uv[j][a]), tuple(uv[j][b])], fill=GT_COLOR, width=thin)

    if show_scores:                     # near boxes first; a tag that would cover an earlier one is left out
        placed = []  # type: List[Tuple[float, float, float, float]]
        for _, i, uv_i in reversed(drawn):
            text = f"{_class_name(labels[i], class_names)} {scores[i]:.2f}"
            rect = _tag_rect(out, (float(uv_i[:, 0].min()), float(uv_i[:, 1].min())), text, font)
            if not any(rect[0] < p[2] and p[0] < rect[2] and rect[1] < p[3] and p[1] < rect[3] for p in placed):
                placed.append(rect)
                _tag(out, rect, text, font, class_color(labels[i], class_names))
    return out


def image_grid(images: Sequence[Image.Image], names: Sequence[str], columns: int,
               tile_width: int = 800) -> Image.Image:
    """Camera pictures in rows of `columns` tiles, each scaled to `tile_width` (aspect kept) with its name in the
    top-left corner."""
    tiles = [_rgb(im) for im in images]
    tile_h = max(int(round(t.height * tile_width / t.width)) for t in tiles)
    gap = 4
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * tile_width + (columns - 1) * gap, rows * tile_h + (rows - 1) * gap),
                     (10, 11, 14))
    font = max(10, int(round(tile_h / 22)))
    for n, (tile, name) in enumerate(zip(tiles, names)):
        tile = tile.resize((tile_width, int(round(tile.height * tile_width / tile.width))), _RESAMPLE.BILINEAR)
        x, y = (n % columns) * (tile_width + gap), (n // columns) * (tile_h + gap)
        grid.paste(tile, (x, y))
        _tag(grid, _tag_rect(grid, (x + 6, y + 6 + text_size(name, font)[1] + 2 * max(2, font // 6)), name, font),
             name, font, TEXT_COLOR)
    return grid


# ---------------------------------------------------------------------------------------------------------- frame

def frame_picture(camera, bev, frame_id=None, detections: Optional[int] = None,
                  latency_ms: Optional[float] = None, text: Optional[str] = None) -> Image.Image:
    """The camera picture resized to the BEV canvas height, side by side with it (as the deploy binary shows a
    frame), under a one-line HUD: frame id, number of detections, latency, and any extra text."""
    camera, bev = _rgb(camera), _rgb(bev)
    height = bev.height
    cam_w = max(1, int(round(camera.width * height / camera.height)))
    if camera.size != (cam_w, height):
        camera = camera.resize((cam_w, height), _RESAMPLE.BILINEAR)
    ui = height / 800.0
    gap = max(2, int(round(4 * ui)))
    font = max(10, int(round(16 * ui)))
    hud_h = max(text_size("Ag", font)[1] + 6, int(round(30 * ui)))
    picture = Image.new("RGB", (cam_w + gap + bev.width, hud_h + height), (10, 11, 14))
    picture.paste(camera, (0, hud_h))
    picture.paste(bev, (cam_w + gap, hud_h))
    parts = []
    if frame_id is not None:
        parts.append(f"frame {frame_id}")
    if detections is not None:
        parts.append(f"{int(detections)} detection{'s' if int(detections) != 1 else ''}")
    if latency_ms is not None:
        parts.append(f"{float(latency_ms):.1f} ms")
    if text:
        parts.append(str(text))
    if parts:
        line = "   |   ".join(parts)
        _, y0, _, y1 = _text_box(line, font)
        _text(picture, (int(round(10 * ui)), (hud_h - (y1 + y0)) / 2), line, font, TEXT_COLOR)
    return picture


# ---------------------------------------------------------------------------------------------------------- video

def fit_size(size: Tuple[int, int], max_size: Tuple[int, int]) -> Tuple[int, int]:
    """The even (W, H) that `size` is downscaled to (never up) to fit inside max_size, aspect kept (yuv420p needs
    even sides)."""
    w, h = int(size[0]), int(size[1])
    scale = min(1.0, max_size[0] / w, max_size[1] / h)
    return max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)


# libx264, yuv420p, a fixed encoder thread count (x264's output depends on it, not on the machine's cores), no
# timestamps or encoder version in the file, BT.709 matrix tagged so players show the colours as drawn.
_FFMPEG_OUTPUT = ["-preset", "medium", "-crf", "20", "-threads", "4",
                  "-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int",
                  "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
                  "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart",
                  "-f", "mp4"]


def _video_backend(preferred: str) -> str:
    candidates = ("imageio", "opencv") if preferred == "auto" else (preferred,)
    for name in candidates:
        try:
            if name == "imageio":
                import imageio_ffmpeg  # noqa: F401
            elif name == "opencv":
                import cv2  # noqa: F401
            else:
                raise ValueError(f"unknown video backend {name!r}: use 'auto', 'imageio' or 'opencv'")
            return name
        except ImportError:
            continue
    raise BevportError("writing an MP4 video needs imageio-ffmpeg (or OpenCV), and neither can be imported",
                       "pip install imageio-ffmpeg  (or opencv-python-headless)")


class VideoWriter:
    """Writes pictures to an MP4 (H.264 via imageio-ffmpeg; OpenCV's avc1/mp4v writer when imageio-ffmpeg is not
    installed). The output size is the first picture's, downscaled to fit max_size and made even; later pictures
    of another size are fitted into it on black. The file appears at `path` only when the writer closes without an
    error (it is written beside it first).

        with VideoWriter("vis/bevfusion.mp4") as video:
            video.write(frame_picture(...))
    """

    def __init__(self, path: PathLike, fps: float = 25, max_size: Tuple[int, int] = (1280, 720),
                 backend: str = "auto"):
        self.path = Path(path)
        self.fps = fps
        self.max_size = (int(max_size[0]), int(max_size[1]))
        self.backend = _video_backend(backend)
        self.size = None  # type: Optional[Tuple[int, int]]
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.part{self.path.suffix or '.mp4'}")
        self._writer = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, size: Tuple[int, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.backend == "imageio":
            import imageio_ffmpeg

            self._writer = imageio_ffmpeg.write_frames(
                str(self._tmp), size, fps=self.fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                quality=None, macro_block_size=2, ffmpeg_log_level="error", output_params=list(_FFMPEG_OUTPUT))
            self._writer.send(None)
        else:
            import cv2

            for code in ("avc1", "mp4v"):
                writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*code), float(self.fps), size)
                if writer.isOpened():
                    self._writer = writer
                    break
                writer.release()
            else:
                raise BevportError(f"OpenCV cannot write an MP4 video to {self.path} (no avc1 or mp4v encoder)",
                                   "pip install imageio-ffmpeg")
        self.size = size

    def _fitted(self, picture: Image.Image) -> Image.Image:
        assert self.size is not None
        if picture.size == self.size:
            return picture
        w, h = self.size
        scale = min(w / picture.width, h / picture.height)
        inner = (max(1, int(round(picture.width * scale))), max(1, int(round(picture.height * scale))))
        canvas = Image.new("RGB", self.size, (0, 0, 0))
        canvas.paste(picture.resize(inner, _RESAMPLE.LANCZOS), ((w - inner[0]) // 2, (h - inner[1]) // 2))
        return canvas

    def write(self, picture) -> None:
        """Append one picture (PIL image or [H,W,3] uint8 RGB array)."""
        picture = _rgb(picture)
        if self._writer is None:
            self._open(fit_size(picture.size, self.max_size))
        frame = np.ascontiguousarray(np.asarray(self._fitted(picture), np.uint8))
        if self.backend == "imageio":
            self._writer.send(frame)
        else:
            self._writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        self.frames += 1

    def _release(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self.backend == "imageio":
            writer.close()
        else:
            writer.release()

    def close(self) -> None:
        """Finish the file and move it into place (nothing is written when no picture was)."""
        try:
            self._release()
        except BaseException:
            self.abort()
            raise
        if self.frames and self._tmp.exists():
            os.replace(str(self._tmp), str(self.path))

    def abort(self) -> None:
        """Stop without leaving a file behind."""
        try:
            self._release()
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
