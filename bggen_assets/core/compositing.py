"""Putting product pixels onto canvases: resampling, cut-back, the serving crop and the fallback.

The product's own pixels are the ad's promise to the shopper, so generation never owns them: the
product is resampled once from the source (alpha-weighted, so the photo's old background does not
bleed into the edge as a halo) and pasted back over whatever the generator drew. Its edge is a
soft matte (core/matting.py: alpha and unmixed colour in a 2 px band along the mask's boundary),
so the product blends into the new background without a cut-out line or a fringe of the old
backdrop; farther inside, alpha is 1 and the pixels are the photo's own.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from .generation import NEUTRAL_GREY
from .geometry import CanvasLayout, PlacedBox, crop_box
from .matting import Matte, edge_matte

FALLBACK_BACKGROUND = (244, 244, 244)


def product_alpha(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Float alpha in [0, 1]: the file's own alpha where it has one (inside the mask), else the mask."""
    alpha = mask.astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 4:
        alpha *= image[:, :, 3].astype(np.float32) / 255.0
    return alpha


def product_layer(mask: np.ndarray, image: np.ndarray) -> Matte:
    """The product as it is cut back: colour and alpha at source resolution. A file with its own
    alpha channel is its own matte (the mask times that alpha, the pixels as they are); otherwise
    the edge is matted from the photo's local product and backdrop colours (core/matting.py)."""
    if image.ndim == 3 and image.shape[2] == 4:
        return Matte(np.ascontiguousarray(image[:, :, :3]), product_alpha(mask, image))
    return edge_matte(image, mask)


def resample_product(
    image: np.ndarray, alpha: np.ndarray, bbox: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the bbox and resize to size=(w, h): RGB uint8 and alpha float32.

    Colour is resized premultiplied by alpha and divided back, so edge pixels keep the product's
    colour instead of a blend with the photo's background. Deterministic: the fidelity check
    recomputes it and compares pixel for pixel.
    """
    x, y, w, h = bbox
    rgb = image[y : y + h, x : x + w, :3].astype(np.float32)
    a = alpha[y : y + h, x : x + w].astype(np.float32)
    tw, th = size
    interp = cv2.INTER_AREA if tw * th <= w * h else cv2.INTER_CUBIC
    a_raw = cv2.resize(a, (tw, th), interpolation=interp)
    pre = cv2.resize(rgb * a[:, :, None], (tw, th), interpolation=interp)
    weight = a_raw[:, :, None]
    colour = np.where(weight > 1e-3, pre / np.where(weight > 1e-3, weight, 1.0), cv2.resize(rgb, (tw, th), interpolation=interp))
    alpha_out = np.clip(a_raw, 0.0, 1.0)
    # Resampling leaves 0.9999994 inside solid regions: snap, so "fully inside" means alpha == 1.
    alpha_out[alpha_out > 0.998] = 1.0
    alpha_out[alpha_out < 0.002] = 0.0
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8), alpha_out


def place_on_canvas(
    product_rgb: np.ndarray, alpha: np.ndarray, layout: CanvasLayout
) -> tuple[np.ndarray, np.ndarray]:
    """The product on a neutral canvas (what a generator sees) and the canvas-sized alpha."""
    canvas = np.full((layout.height, layout.width, 3), NEUTRAL_GREY, np.uint8)
    canvas_alpha = np.zeros((layout.height, layout.width), np.float32)
    x, y, w, h = layout.product_box
    a = alpha[:, :, None]
    canvas[y : y + h, x : x + w] = np.rint(product_rgb * a + NEUTRAL_GREY * (1.0 - a)).astype(np.uint8)
    canvas_alpha[y : y + h, x : x + w] = alpha
    return canvas, canvas_alpha


def cut_back(generated: np.ndarray, product_rgb: np.ndarray, alpha: np.ndarray, layout: CanvasLayout) -> np.ndarray:
    """Paste the resampled product over the generated canvas: exact product pixels where alpha == 1."""
    if generated.shape[:2] != (layout.height, layout.width):
        raise ValueError(f"generated image is {generated.shape[1]}x{generated.shape[0]}, canvas is {layout.width}x{layout.height}")
    out = generated[:, :, :3].copy()
    x, y, w, h = layout.product_box
    region = out[y : y + h, x : x + w].astype(np.float32)
    a = alpha[:, :, None]
    blended = np.rint(product_rgb.astype(np.float32) * a + region * (1.0 - a)).astype(np.uint8)
    full = alpha >= 1.0
    blended[full] = product_rgb[full]  # exact, not a float round-trip
    out[y : y + h, x : x + w] = blended
    return out


def solid_core(alpha: np.ndarray, erode_px: int) -> np.ndarray:
    """Pixels fully inside the product: alpha == 1, eroded by erode_px."""
    core = (alpha >= 1.0).astype(np.uint8)
    if erode_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1, 2 * erode_px + 1))
        core = cv2.erode(core, kernel)
    return core.astype(bool)


def fidelity_error(
    composited: np.ndarray, product_rgb: np.ndarray, alpha: np.ndarray, layout: CanvasLayout, erode_px: int = 1
) -> int:
    """Largest absolute pixel difference, inside the eroded product, between the composited canvas and
    the resampled source product (0 when the cut-back kept the product's own pixels)."""
    x, y, w, h = layout.product_box
    core = solid_core(alpha, erode_px)
    if not core.any():
        return 0
    region = composited[y : y + h, x : x + w, :3].astype(np.int16)
    return int(np.abs(region[core] - product_rgb[core].astype(np.int16)).max())


# The serving crop is the hot path of every hit. Pillow's Lanczos costs in proportion to the source
# area it reads, so a big downscale is cut short on a cached 2x/4x box-filtered copy of the canvas
# (what Pillow's own ``reducing_gap`` does, but reduced once per canvas instead of per request).
# A remaining scale of at least REDUCING_GAP keeps the result close to one direct Lanczos pass
# (lanczos_crop; benchmarks/serving.py prints the PSNR). Upscales have no aliasing to fight, and
# OpenCV's bilinear warp is much cheaper than Pillow's Lanczos there (the benchmark's per-size table).
PYRAMID_LEVELS = 3  # factors 1, 2, 4: +31% memory per cached canvas
REDUCING_GAP = 1.3


class CanvasPyramid(NamedTuple):
    """A decoded RGB canvas and its 2x, 4x, ... box-filtered reductions (level k = factor 2**k)."""

    levels: tuple[Image.Image, ...]

    @property
    def nbytes(self) -> int:
        return sum(im.width * im.height * len(im.getbands()) for im in self.levels)


def canvas_pyramid(canvas: Image.Image, levels: int = PYRAMID_LEVELS) -> CanvasPyramid:
    """Pillow's reduce(f) averages f x f blocks, so canvas x maps to x / f exactly."""
    return CanvasPyramid((canvas, *(canvas.reduce(2**k) for k in range(1, levels))))


def crop_placement(canvas: Image.Image | CanvasPyramid, layout: CanvasLayout, placed: PlacedBox) -> Image.Image:
    """Crop the placement's box out of a bucket canvas and resize it to exactly W x H.

    The box is a float box resampled in one pass (Pillow's ``box=``, or an affine warp), which is
    what keeps the product on its placed box to the pixel (see geometry.crop_box)."""
    pyramid = canvas if isinstance(canvas, CanvasPyramid) else CanvasPyramid((canvas,))
    x0, y0, x1, y1 = crop_box(layout, placed)
    size = (placed.canvas_w, placed.canvas_h)
    scale = min((x1 - x0) / size[0], (y1 - y0) / size[1])
    if scale < 1.0:
        return _warp_up(pyramid.levels[0], (x0, y0, x1, y1), size)
    level = 0
    while level + 1 < len(pyramid.levels) and scale / 2 ** (level + 1) >= REDUCING_GAP:
        level += 1
    f = 2**level
    return pyramid.levels[level].resize(size, Image.Resampling.LANCZOS, box=(x0 / f, y0 / f, x1 / f, y1 / f))


def lanczos_crop(canvas: Image.Image, layout: CanvasLayout, placed: PlacedBox) -> Image.Image:
    """The reference resampling: one Lanczos pass over the full canvas, whatever the scale. What
    crop_placement approximates faster; benchmarks and tests measure it against this."""
    return canvas.resize((placed.canvas_w, placed.canvas_h), Image.Resampling.LANCZOS, box=crop_box(layout, placed))


def _warp_up(canvas: Image.Image, box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
    """Upscale the float box to size with a bilinear affine warp (output pixel centres mapped exactly)."""
    x0, y0, x1, y1 = box
    # Only the rows and columns the warp reads are copied out of Pillow.
    cx0, cy0 = max(0, int(x0) - 1), max(0, int(y0) - 1)
    cx1, cy1 = min(canvas.width, int(np.ceil(x1)) + 1), min(canvas.height, int(np.ceil(y1)) + 1)
    src = np.asarray(canvas.crop((cx0, cy0, cx1, cy1)))
    sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]
    m = np.array([[sx, 0.0, x0 - cx0 + 0.5 * sx - 0.5], [0.0, sy, y0 - cy0 + 0.5 * sy - 0.5]])
    out = cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(out)


def fallback_creative(
    cutout_rgba: np.ndarray, placed: PlacedBox, background: tuple[int, int, int] = FALLBACK_BACKGROUND
) -> np.ndarray:
    """The positioned product on a plain background: what a miss is answered with, at once."""
    out = np.empty((placed.canvas_h, placed.canvas_w, 3), np.uint8)
    out[:] = background
    interp = cv2.INTER_AREA if placed.w * placed.h <= cutout_rgba.shape[0] * cutout_rgba.shape[1] else cv2.INTER_LINEAR
    small = cv2.resize(cutout_rgba, (placed.w, placed.h), interpolation=interp).astype(np.float32)
    a = small[:, :, 3:4] / 255.0
    region = out[placed.y : placed.y + placed.h, placed.x : placed.x + placed.w].astype(np.float32)
    out[placed.y : placed.y + placed.h, placed.x : placed.x + placed.w] = np.rint(
        small[:, :, :3] * a + region * (1.0 - a)
    ).astype(np.uint8)
    return out


def make_cutout(image: np.ndarray, alpha: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """RGBA crop of the product at source resolution (what serving's fallback and previews use)."""
    x, y, w, h = bbox
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[:, :, :3] = image[y : y + h, x : x + w, :3]
    rgba[:, :, 3] = np.rint(alpha[y : y + h, x : x + w] * 255.0).astype(np.uint8)
    return rgba
