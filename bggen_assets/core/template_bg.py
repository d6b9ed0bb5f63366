"""Procedural theme backgrounds on CPU: the `template` generator.

Each theme names a style and a palette. Every style builds a scene around the product's box: a wall
with a soft light behind the product, a floor or ground from a horizon just under the product's
middle, a material texture (marble veins, wood planks, concrete grain, fabric weave, sand/grass),
a soft contact shadow where the product meets the floor, and a little film grain so flat areas do
not band. Deterministic in the job's seed.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .generation import GenerationJob

STYLES = ("studio", "marble", "wood", "concrete", "outdoor", "podium", "fabric")
DEFAULT_PALETTES = {
    "studio": ("#f4f1ec", "#d9d4cc", "#bdb5aa"),
    "marble": ("#ece8e3", "#d8d2cb", "#f6f4f1"),
    "wood": ("#efe6da", "#b98a5e", "#8a5a35"),
    "concrete": ("#d5d3cf", "#b6b3ae", "#9c9893"),
    "outdoor": ("#8fbde8", "#eaf3fb", "#d9c7a2"),
    "podium": ("#f6d9d1", "#e9b8ab", "#fbeee9"),
    "fabric": ("#e6e9ef", "#c9cfdb", "#aeb6c6"),
}
VERSION = "template-v1"


class TemplateStyleError(ValueError):
    pass


def hex_rgb(value: str) -> np.ndarray:
    v = value.strip().lstrip("#")
    if len(v) != 6:
        raise TemplateStyleError(f"palette colour must be #rrggbb, got {value!r}")
    try:
        return np.array([int(v[i : i + 2], 16) for i in (0, 2, 4)], np.float32)
    except ValueError:
        raise TemplateStyleError(f"palette colour must be #rrggbb, got {value!r}") from None


def _noise(h: int, w: int, rng: np.random.Generator, cells: int, octaves: int = 3) -> np.ndarray:
    """Smooth value noise in [-1, 1]: random grids upsampled bicubically, summed over octaves."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = max(2, cells * 2**o)
        gh = max(2, round(n * h / max(h, w)))
        gw = max(2, round(n * w / max(h, w)))
        out += amp * cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return out / total


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas run on a downscaled copy (same look, a fraction of the time)."""
    if sigma <= 0:
        return img
    h, w = img.shape[:2]
    f = max(1, int(sigma // 4))
    if f == 1:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    small = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _horizon(h: int, box: tuple[int, int, int, int]) -> int:
    _, y, _, ph = box
    return int(np.clip(y + 0.72 * ph, 0.3 * h, 0.9 * h))


def _wall(h, w, box, top, bottom, rng, light=0.10):
    x, y, pw, ph = box
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    wall = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    # A soft key light behind the product, the way a studio sweep is lit.
    cx, cy = x + pw / 2, y + ph * 0.4
    rad = 1.6 * max(pw, ph, 1)
    # separable Gaussian: an outer product of two 1-D profiles, not an H x W exp
    gy = np.exp(-((np.arange(h, dtype=np.float32) - cy) ** 2) / (2 * rad**2))
    gx = np.exp(-((np.arange(w, dtype=np.float32) - cx) ** 2) / (2 * rad**2))
    wall += (light * 255.0) * np.outer(gy, gx)[:, :, None]
    return wall


def _floor_ramp(h, horizon, near, far):
    """Floor colour from the horizon (far) to the bottom edge (near)."""
    rows = max(1, h - horizon)
    t = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None, None]
    return far * (1 - t) + near * t


def _vignette(img, strength=0.18):
    h, w = img.shape[:2]
    dy = ((np.arange(h, dtype=np.float32) - h / 2) / (h / 2)) ** 2
    dx = ((np.arange(w, dtype=np.float32) - w / 2) / (w / 2)) ** 2
    d = dy[:, None] + dx[None, :]
    img *= (1.0 - strength * np.clip(d / 2.0, 0, 1))[:, :, None]
    return img


def _marble_texture(h, w, rng):
    # Diagonal veins bent by turbulence: the direction term dominates, so they streak, not loop.
    n = _noise(h, w, rng, cells=3, octaves=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * 0.8 + yy * 1.6) / max(h, w, 1) * 3.0 + 0.6 * n
    veins = np.clip(1.0 - np.abs(np.sin(phase * np.pi)), 0, 1) ** 14
    return cv2.GaussianBlur(veins, (0, 0), 0.8)


def _wood_texture(h, w, rng, horizon):
    plank = max(8, h // 14)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    grain = np.sin(xx / max(w, 1) * 40.0 + 3.0 * _noise(h, w, rng, cells=4, octaves=3) + yy * 0.05)
    seams = (np.mod(yy - horizon, plank) < 2).astype(np.float32)
    tone = rng.uniform(-0.06, 0.06, size=(h // plank + 2, 1)).astype(np.float32)
    band = np.repeat(tone, plank, axis=0)[:h]
    return 0.06 * grain + band - 0.25 * seams


def _contact_shadow(h, w, box, mask, strength):
    """Dark, tight ellipse where the product touches the floor plus a wide ambient occlusion."""
    x, y, pw, ph = box
    shadow = np.zeros((h, w), np.float32)
    rows = np.nonzero(mask.any(axis=1))[0]
    if rows.size == 0:
        return shadow
    base_y = int(rows.max())
    cols = np.nonzero(mask[max(0, base_y - max(2, ph // 20)) : base_y + 1].any(axis=0))[0]
    cx = (cols.min() + cols.max()) / 2 if cols.size else x + pw / 2
    half_w = max(4.0, (cols.max() - cols.min()) / 2 * 1.05) if cols.size else pw / 2
    cv2.ellipse(shadow, (int(cx), base_y), (int(half_w), max(2, int(0.06 * half_w + 2))), 0, 0, 360, 1.0, -1)
    contact = _blur(shadow, max(2.0, 0.05 * half_w))
    ambient = np.zeros_like(shadow)
    cv2.ellipse(ambient, (int(cx), base_y), (int(half_w * 1.5), max(3, int(0.18 * half_w))), 0, 0, 360, 1.0, -1)
    ambient = _blur(ambient, max(4.0, 0.2 * half_w))
    return np.clip(strength * (0.65 * contact + 0.45 * ambient), 0.0, 0.75)


def render_background(
    width: int,
    height: int,
    product_box: tuple[int, int, int, int],
    product_mask: np.ndarray,
    style: str,
    palette: Sequence[str] = (),
    seed: int = 0,
) -> np.ndarray:
    """One theme background, H x W x 3 uint8, lit and shadowed for the product at product_box."""
    if style not in STYLES:
        raise TemplateStyleError(f"unknown template style {style!r}; known: {', '.join(STYLES)}")
    colours = [hex_rgb(c) for c in (palette or DEFAULT_PALETTES[style])]
    while len(colours) < 3:
        colours.append(colours[-1] * 0.85)
    c0, c1, c2 = colours[:3]
    rng = np.random.default_rng(seed)
    h, w = height, width
    horizon = _horizon(h, product_box)
    shadow_strength = 0.55

    if style == "outdoor":
        img = _wall(h, w, product_box, c0, c1, rng, light=0.05)  # sky: blue at the top, haze at the horizon
        ground = _floor_ramp(h, horizon, c2 * 0.85, c2 * 1.05)
        tex = _noise(h - horizon, w, rng, cells=24, octaves=3)[:, :, None]
        img[horizon:] = ground * (1.0 + 0.07 * tex)
        haze = np.exp(-((np.arange(h, dtype=np.float32) - horizon) ** 2) / (2 * (0.04 * h) ** 2))
        img += (18.0 * haze)[:, None, None]
        shadow_strength = 0.5
    elif style == "podium":
        img = _wall(h, w, product_box, c0, c1, rng, light=0.06)
        split = int(0.45 * w + rng.uniform(-0.05, 0.05) * w)
        img[:, split:] *= 0.94  # two-tone wall
        img[horizon:] = _floor_ramp(h, horizon, c1 * 0.92, c1)
        x, y, pw, ph = product_box
        base = min(h - 2, y + ph)
        rx = int(0.75 * pw + 0.1 * ph)
        ry = max(3, int(0.16 * rx))
        body = np.zeros((h, w), np.float32)
        cv2.rectangle(body, (int(x + pw / 2 - rx), base), (int(x + pw / 2 + rx), h), 1.0, -1)
        cv2.ellipse(body, (int(x + pw / 2), base), (rx, ry), 0, 0, 360, 1.0, -1)
        top = np.zeros((h, w), np.float32)
        cv2.ellipse(top, (int(x + pw / 2), base), (rx, ry), 0, 0, 360, 1.0, -1)
        body = cv2.GaussianBlur(body, (0, 0), 1.0)[:, :, None]
        top = cv2.GaussianBlur(top, (0, 0), 1.0)[:, :, None]
        img = img * (1 - body) + (c2 * 0.93) * body
        img = img * (1 - top) + c2 * top
    else:
        img = _wall(h, w, product_box, c0 * 1.02, c0 * 0.9, rng)
        floor = _floor_ramp(h, horizon, c1 * 0.9, c1 * 1.03)
        if style == "marble":
            tex = _marble_texture(h - horizon, w, rng)[:, :, None]
            floor = floor * (1.0 - 0.18 * tex) + 0.02 * 255 * _noise(h - horizon, w, rng, 6)[:, :, None]
        elif style == "wood":
            floor = floor * (1.0 + _wood_texture(h - horizon, w, rng, 0)[:, :, None])
        elif style == "concrete":
            n = _noise(h - horizon, w, rng, cells=40, octaves=3)[:, :, None]
            floor = floor * (1.0 + 0.04 * n)
            img = img * (1.0 + 0.012 * _noise(h, w, rng, cells=30, octaves=3)[:, :, None])
        elif style == "fabric":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            weave = 0.5 + 0.25 * (np.sin(xx * 0.9) + np.sin(yy * 0.9))
            img = img * (1.0 - 0.02 * weave[:, :, None])
            folds = _noise(h, w, rng, cells=3, octaves=2)[:, :, None]
            img = img * (1.0 + 0.06 * folds)
            floor = floor * (1.0 + 0.06 * folds[horizon:])
        img[horizon:] = floor
        # A soft edge where wall meets floor, as on a sweep.
        band = cv2.GaussianBlur(img, (1, 0), sigmaX=0.1, sigmaY=max(1.0, 0.01 * h)) if h > 20 else img
        lo, hi = max(0, horizon - int(0.02 * h)), min(h, horizon + int(0.02 * h) + 1)
        img[lo:hi] = band[lo:hi]
        img = _vignette(img, 0.14)

    shadow = _contact_shadow(h, w, product_box, product_mask, shadow_strength)
    img = img * (1.0 - shadow[:, :, None])
    img += _grain(h, w, rng)  # film grain against banding in smooth gradients
    return np.clip(img, 0, 255).astype(np.uint8)


def _grain(h: int, w: int, rng: np.random.Generator, tile: int = 128, sigma: float = 1.2) -> np.ndarray:
    """Luma grain from a tiled noise patch: looks the same as per-pixel noise, costs a tile."""
    patch = rng.normal(0.0, sigma, size=(tile, tile, 1)).astype(np.float32)
    return np.tile(patch, (h // tile + 1, w // tile + 1, 1))[:h, :w]


class TemplateGenerator:
    """The CPU generator: procedural, deterministic, no weights."""

    def identity(self) -> str:
        return VERSION

    def generate(self, jobs: Sequence[GenerationJob]) -> list[np.ndarray]:
        out = []
        for job in jobs:
            h, w = job.product_mask.shape
            ys, xs = np.nonzero(job.product_mask)
            if xs.size:
                box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            else:
                box = (w // 4, h // 4, w // 2, h // 2)
            out.append(render_background(w, h, box, job.product_mask, job.style or "studio", job.palette, job.seed))
        return out
