"""Putting product pixels onto canvases: resampling, cut-back, the serving crop and the fallback.

The product's own pixels are the ad's promise to the shopper, so generation never owns them: the
product is resampled once from the source (alpha-weighted, so the photo's old background does not
bleed into the edge as a halo) and pasted back over whatever the generator drew.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .generation import NEUTRAL_GREY
from .geometry import CanvasLayout, PlacedBox, crop_box

FALLBACK_BACKGROUND = (244, 244, 244)


def product_alpha(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Float alpha in [0, 1]: the file's own alpha where it has one (inside the mask), else the mask."""
    alpha = mask.astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 4:
        alpha *= image[:, :, 3].astype(np.float32) / 255.0
    return alpha


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


def crop_placement(canvas: Image.Image, layout: CanvasLayout, placed: PlacedBox) -> Image.Image:
    """Crop the placement's box out of a bucket canvas and resize it to exactly W x H.

    PIL's resize takes a float source box and an antialiasing filter in one pass, which is what
    keeps the product on its placed box to the pixel (see geometry.crop_box)."""
    box = crop_box(layout, placed)
    return canvas.resize((placed.canvas_w, placed.canvas_h), Image.Resampling.LANCZOS, box=box)


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
