"""Pictures of masks for a person to judge: each mask over its photo (a tinted overlay and an
outline), laid out as a contact sheet (core/contact_sheet.py). The product_masks asset's
``mask_confidence`` check links one of the masks it held back."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

from .contact_sheet import contact_sheet

TINT = (255, 0, 200)  # magenta: rare in product photos and in their backdrops
OUTLINE = (0, 200, 255)
OPACITY = 0.4
CELL_H = 220
MAX_CELL_W = 300


class SheetItem(NamedTuple):
    label: str  # up to 4 lines, e.g. "NO-0003\nconfidence 0.42\nclassical"
    image: np.ndarray  # the photo, uint8 RGB or RGBA
    mask: np.ndarray  # bool, the photo's size


def _fit_size(w: int, h: int, max_w: int, max_h: int) -> tuple[int, int]:
    s = min(max_w / w, max_h / h, 1.0)
    return max(1, round(w * s)), max(1, round(h * s))


def mask_overlay(image: np.ndarray, mask: np.ndarray, opacity: float = OPACITY, outline_px: int = 2) -> np.ndarray:
    """The photo (RGB) with the mask tinted over it and its boundary drawn, at the photo's size."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.shape[1]}x{image.shape[0]}")
    rgb = image[:, :, :3].astype(np.float32)
    m = mask.astype(bool)
    out = rgb.copy()
    out[m] = rgb[m] * (1.0 - opacity) + np.array(TINT, np.float32) * opacity
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * outline_px + 1, 2 * outline_px + 1))
    edge = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, k).astype(bool)
    out[edge] = OUTLINE
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mask_sheet(items: Sequence[SheetItem], title: str = "") -> np.ndarray:
    """One row per item: its label, the photo, the mask over the photo. RGB uint8.

    Each photo is brought down to its cell first, so that the outline is as thick on the sheet
    whatever the photo's size."""
    if not items:
        raise ValueError("mask_sheet needs at least one item")
    rows = []
    for it in items:
        h, w = it.mask.shape
        size = _fit_size(w, h, MAX_CELL_W, CELL_H)
        photo = cv2.resize(np.ascontiguousarray(it.image[:, :, :3]), size, interpolation=cv2.INTER_AREA)
        small = cv2.resize(it.mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
        rows.append((it.label, [photo, mask_overlay(photo, small)]))
    return contact_sheet(["photo", "mask over the photo"], rows, cell_h=CELL_H, max_cell_w=MAX_CELL_W,
                         label_w=230, title=title)
