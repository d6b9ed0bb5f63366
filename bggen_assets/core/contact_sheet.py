"""A contact sheet: rows of labelled creatives, each scaled into a fixed cell height."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

BG = (250, 250, 250)
INK = (40, 40, 40)


def _fit(img: np.ndarray, max_w: int, max_h: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(max_w / w, max_h / h)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def contact_sheet(
    header: Sequence[str],
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    cell_h: int = 170,
    max_cell_w: int = 360,
    label_w: int = 230,
    gap: int = 10,
    title: str = "",
) -> np.ndarray:
    """header: column labels; rows: (row label, one RGB image per column). Returns RGB uint8."""
    n_cols = len(header)
    col_w = []
    for c in range(n_cols):
        widths = [_fit(r[1][c], max_cell_w, cell_h).shape[1] for r in rows if c < len(r[1])]
        col_w.append(max(max(widths, default=60), 9 * len(header[c]) + 8))  # header text fits
    top = 34 + (30 if title else 0)
    W = label_w + sum(col_w) + gap * (n_cols + 1)
    H = top + len(rows) * (cell_h + gap) + gap
    sheet = np.full((H, W, 3), BG, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if title:
        cv2.putText(sheet, title, (gap, 24), font, 0.7, INK, 2, cv2.LINE_AA)
    x = label_w + gap
    for c, name in enumerate(header):
        cv2.putText(sheet, name, (x, top - 10), font, 0.5, INK, 1, cv2.LINE_AA)
        x += col_w[c] + gap
    y = top
    for label, images in rows:
        for i, line in enumerate(label.split("\n")[:4]):
            cv2.putText(sheet, line[:30], (gap, y + 22 + 20 * i), font, 0.48, INK, 1, cv2.LINE_AA)
        x = label_w + gap
        for c, img in enumerate(images):
            tile = _fit(img[:, :, :3], col_w[c], cell_h)
            th, tw = tile.shape[:2]
            oy = y + (cell_h - th) // 2
            sheet[oy : oy + th, x : x + tw] = tile
            cv2.rectangle(sheet, (x - 1, oy - 1), (x + tw, oy + th), (200, 200, 200), 1)
            x += col_w[c] + gap
        y += cell_h + gap
    return sheet
