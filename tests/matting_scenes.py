"""A drawn product with an anti-aliased edge over a coloured backdrop, with its true alpha, and
the measure of a cut-back's edge against the ideal composite: used by tests/core/test_matting.py
and benchmarks/soft_edges.py."""
from __future__ import annotations

import cv2
import numpy as np

from bggen_assets.core.compositing import cut_back, resample_product
from bggen_assets.core.geometry import CanvasLayout

BACKDROP = (40, 90, 200)  # the photo's blue
NEW_BG = (60, 180, 80)  # the generated background's green


def scene(fg=(205, 60, 40), bg=BACKDROP, w=240, h=200, ss=4, seed=0, texture=12.0, shade=0.1):
    """(photo uint8, true alpha, true product colour): an ellipse with a hole and a bar, drawn at
    4x and area-averaged (an anti-aliased edge), textured, over a shaded backdrop, with noise."""
    big = np.zeros((h * ss, w * ss), np.uint8)
    cx, cy, u = w * 11 // 24, h // 2, min(w, h) / 200
    cv2.ellipse(big, (cx * ss, cy * ss), (round(70 * u) * ss, round(55 * u) * ss), 15, 0, 360, 255, -1)
    cv2.rectangle(big, (round(cx + 40 * u) * ss, round(cy - 60 * u) * ss), (round(cx + 90 * u) * ss,
                                                                             round(cy + 50 * u) * ss), 255, -1)
    cv2.circle(big, (cx * ss, cy * ss), round(18 * u) * ss, 0, -1)
    alpha = cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:h, 0:w]
    product = np.array(fg, np.float32) + texture * np.sin(xx / 7.0)[..., None]
    backdrop = np.array(bg, np.float32) + shade * (yy[..., None] - h / 2)
    noise = np.random.default_rng(seed).normal(0.0, 2.0, (h, w, 3))
    photo = alpha[..., None] * product + (1 - alpha[..., None]) * backdrop + noise
    return np.clip(np.rint(photo), 0, 255).astype(np.uint8), alpha, product


def cut_back_onto(layer_rgb, layer_alpha, bbox, scale, colour=NEW_BG):
    """The product layer resampled by `scale` and cut back onto a plain `colour` canvas (10 px margin)."""
    x, y, w, h = bbox
    tw, th = round(w * scale), round(h * scale)
    lay = CanvasLayout(tw + 20, th + 20, 10, 10, tw, th)
    generated = np.full((lay.height, lay.width, 3), colour, np.uint8)
    rgb, alpha = resample_product(layer_rgb, layer_alpha, bbox, (tw, th))
    return cut_back(generated, rgb, alpha, lay), (rgb, alpha, lay)


def ideal_composite(true_alpha, product, bbox, scale, colour=NEW_BG):
    """The true product composited onto `colour` with its true alpha, resized as the cut-back is;
    and the edge band (true alpha strictly between 0 and 1 at that size, dilated by 1 px)."""
    x, y, w, h = bbox
    tw, th = round(w * scale), round(h * scale)
    full = true_alpha[..., None] * product + (1 - true_alpha[..., None]) * np.array(colour, np.float32)
    interp = cv2.INTER_AREA if scale <= 1 else cv2.INTER_CUBIC
    out = np.empty((th + 20, tw + 20, 3), np.float32)
    out[:] = colour
    out[10:10 + th, 10:10 + tw] = cv2.resize(full[y:y + h, x:x + w], (tw, th), interpolation=interp)
    small_alpha = cv2.resize(true_alpha[y:y + h, x:x + w], (tw, th), interpolation=cv2.INTER_AREA)
    edge = ((small_alpha > 0.02) & (small_alpha < 0.98)).astype(np.uint8)
    band = np.zeros(out.shape[:2], bool)
    band[10:10 + th, 10:10 + tw] = cv2.dilate(edge, np.ones((3, 3), np.uint8)).astype(bool)
    return out, band


def edge_error(composited, ideal, band, old_backdrop=BACKDROP, colour=NEW_BG) -> tuple[float, float]:
    """(mean absolute colour error in the band, its mean component towards the old backdrop's
    colour from the new one: the fringe; about 0 when no old backdrop shows)."""
    towards = np.array(old_backdrop, np.float32) - np.array(colour, np.float32)
    towards /= np.linalg.norm(towards)
    diff = composited.astype(np.float32)[band] - ideal[band]
    return float(np.abs(diff).mean()), float((diff @ towards).mean())
