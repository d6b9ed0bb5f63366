"""A soft matte along the product's boundary, for the cut-back.

A binary mask cuts a photo's edge pixels in two: the pixels just inside it are a mix of the
product and the photo's backdrop (anti-aliasing, defocus, JPEG), and pasted with alpha 1 onto a
new background they draw a line of the old backdrop's colour around the product (a fringe),
while the hard step itself reads as a cut-out. In a band of ``band_px`` on either side of the
mask's boundary each pixel is unmixed instead, with the local colours on either side:

- F, B: the mean colour of the sure product pixels (the mask eroded by the band) and of the sure
  backdrop pixels (outside the mask dilated by the band) in a window around the pixel;
- alpha = the projection of (I - B) onto (F - B), clipped to [0, 1] (the compositing equation
  I = alpha F + (1 - alpha) B solved in the least-squares sense along F - B);
- colour = I + (1 - alpha)(F - B): what the pixel would be with the backdrop's share replaced by
  the product's, which keeps the photo's own detail (a pure mixture comes out as F) and leaves a
  pixel the projection calls pure product (alpha 1) exactly as it is.

The matte refines the masker's boundary, it never moves it: inside the mask alpha stays >= 0.5,
outside it stays < 0.5 (the masker's own boundary is where its coverage crosses 1/2), so the
binary mask is still ``alpha >= 0.5``. Where F and B are too close for the projection to be more
than noise (a light product on a light backdrop) or a side has no sure pixels in the window, the
pixel keeps the mask's hard value and its own colour. Pixels farther than the band inside the
mask are never touched: alpha 1 and the photo's exact pixels, which the fidelity check holds.

A closed-form estimate on purpose: general alpha matting (closed-form matting, e.g. pymatting)
solves a sparse system over the whole unknown region and pulls numba in; here the unknown region
is a 4-5 px band whose two sides are known, and two box filters answer it in milliseconds.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

BAND_PX = 2  # the masker unmixes a 2 px band on either side of its boundary (core/masking.py)
MIN_SEPARATION = 30.0  # RGB distance between F and B below which the projection is mostly noise
MIN_SAMPLES = 3  # sure pixels a side needs in the window for its mean to count


class Matte(NamedTuple):
    """The product layer: colour (uint8 RGB, the photo's pixels but in the band) and alpha."""

    rgb: np.ndarray
    alpha: np.ndarray  # float32 in [0, 1]


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def edge_matte(image: np.ndarray, mask: np.ndarray, band_px: int = BAND_PX,
               min_separation: float = MIN_SEPARATION) -> Matte:
    """The soft matte and unmixed colour of a product photo (RGB uint8) along ``mask``'s boundary."""
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise ValueError(f"edge_matte needs an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.shape[1]}x{image.shape[0]}")
    if band_px < 1:
        raise ValueError(f"band_px must be >= 1, got {band_px}")
    m = mask.astype(bool)
    rgb = np.ascontiguousarray(image[:, :, :3])
    alpha = m.astype(np.float32)
    if not m.any() or m.all():
        return Matte(rgb.copy(), alpha)
    # Only the mask's box (plus the band and the window) can change: work on that crop.
    win = 4 * band_px + 3  # reaches the sure pixels on both sides from anywhere in the band
    pad = band_px + win
    ys, xs = np.nonzero(m)
    h, w = m.shape
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)
    mc = m[y0:y1, x0:x1].astype(np.uint8)
    ic = rgb[y0:y1, x0:x1].astype(np.float32)
    disk = _disk(band_px)
    sure_f = cv2.erode(mc, disk, borderType=cv2.BORDER_REPLICATE)
    sure_b = 1 - cv2.dilate(mc, disk, borderType=cv2.BORDER_REPLICATE)
    band = (sure_f == 0) & (sure_b == 0)

    def local_mean(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight = sel.astype(np.float32)
        n = cv2.boxFilter(weight, -1, (win, win), normalize=False, borderType=cv2.BORDER_CONSTANT)
        s = cv2.boxFilter(ic * weight[:, :, None], -1, (win, win), normalize=False, borderType=cv2.BORDER_CONSTANT)
        return s / np.maximum(n, 1.0)[:, :, None], n

    f, nf = local_mean(sure_f)
    b, nb = local_mean(sure_b)
    d = f - b
    dd = (d * d).sum(axis=2)
    usable = band & (nf >= MIN_SAMPLES) & (nb >= MIN_SAMPLES) & (dd >= min_separation**2)
    projected = np.clip(((ic - b) * d).sum(axis=2) / np.maximum(dd, 1e-6), 0.0, 1.0)
    # the colour from the projection itself: a pixel the mask holds but the projection calls
    # backdrop (a masker's stray pixel) comes out as F, not as a half-unmixed backdrop
    colour = np.clip(np.rint(ic + (1.0 - projected)[:, :, None] * d), 0, 255).astype(np.uint8)
    inside = mc.astype(bool)
    # the masker's decision stands: inside its mask at least half product, outside less than half
    a = np.where(inside, np.maximum(projected, 0.5),
                 np.minimum(projected, np.nextafter(np.float32(0.5), np.float32(0))))
    out_rgb = rgb.copy()
    crop_rgb = out_rgb[y0:y1, x0:x1]
    crop_rgb[usable] = colour[usable]
    crop_alpha = alpha[y0:y1, x0:x1]
    crop_alpha[usable] = a[usable].astype(np.float32)
    return Matte(out_rgb, alpha)
