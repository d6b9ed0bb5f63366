"""Control edges for ControlNet-canny: Canny on the positioned product, plus its contour.

The map follows what ``lllyasviel/sd-controlnet-canny`` was trained on: white (255) edges on a
black background, three identical channels, ``H×W×3 uint8``.

Only the product constrains the generation: every edge pixel lies inside the *product region*,
the product mask dilated by ``contour_thickness`` pixels at most (the canvas around the product is
neutral grey and carries no information; the background is what the model invents).
"""
from __future__ import annotations

import cv2
import numpy as np


class EdgeInputError(ValueError):
    """The canvas or mask handed to :func:`control_edges` is not usable."""


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def product_region(product_mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask dilated by ``radius`` pixels (a disk); ``radius <= 0`` gives the mask itself."""
    m = product_mask.astype(np.uint8)
    if radius > 0:
        m = cv2.dilate(m, _disk(radius))
    return m.astype(bool)


def control_edges(
    canvas_rgb: np.ndarray,
    product_mask: np.ndarray,
    *,
    low: int = 100,
    high: int = 200,
    contour_thickness: int = 2,
    reinforce_contour: bool = True,
) -> np.ndarray:
    """Canny edge map of the positioned product for ControlNet-canny.

    ``canvas_rgb``: ``H×W×3 uint8`` canvas with the product in place; ``product_mask``: ``H×W``
    bool. Canny (``low``/``high`` hysteresis thresholds) runs on the canvas; edges are kept only
    inside the product region (the mask dilated by ``contour_thickness`` px; 0 keeps the mask
    itself). With ``reinforce_contour`` the
    product's outer contour, traced from the mask, is drawn ``contour_thickness`` px thick, so the
    silhouette is a closed line even where product and grey canvas have little contrast.
    Returns ``H×W×3 uint8``, values 0 or 255.
    """
    canvas_rgb = np.asarray(canvas_rgb)
    product_mask = np.asarray(product_mask)
    if canvas_rgb.ndim != 3 or canvas_rgb.shape[2] != 3 or canvas_rgb.dtype != np.uint8:
        raise EdgeInputError(
            f"canvas_rgb must be an H×W×3 uint8 array, got shape {canvas_rgb.shape} dtype {canvas_rgb.dtype}"
        )
    if product_mask.shape != canvas_rgb.shape[:2]:
        raise EdgeInputError(
            f"product_mask shape {product_mask.shape} does not match canvas {canvas_rgb.shape[:2]}"
        )
    if contour_thickness < 0:
        raise EdgeInputError(f"contour_thickness must be >= 0, got {contour_thickness}")
    if not (0 <= low <= high):
        raise EdgeInputError(f"Canny thresholds need 0 <= low <= high, got low={low} high={high}")
    mask = product_mask.astype(bool)

    gray = cv2.cvtColor(np.ascontiguousarray(canvas_rgb), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, int(low), int(high))

    # The region edges may occupy. Canny marks the stronger side of a step, which can be the grey
    # side, one pixel outside the mask: a thickness >= 1 keeps that pixel.
    region = product_region(mask, int(contour_thickness))
    edges[~region] = 0

    if reinforce_contour and contour_thickness > 0 and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        line = np.zeros_like(edges)
        cv2.drawContours(line, contours, -1, 255, thickness=int(contour_thickness))
        line[~region] = 0  # a thick line is centred on the boundary: keep it within the region
        edges = np.maximum(edges, line)

    return np.repeat(edges[:, :, None], 3, axis=2)
