"""Control edges: the product's Canny edges and contour, nothing outside the product region."""
import cv2
import numpy as np
import pytest

from bggen_assets.core.edges import EdgeInputError, control_edges, product_region


def _canvas(product_value=(200, 40, 40), background=127, size=(120, 160)):
    h, w = size
    canvas = np.full((h, w, 3), background, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (80, 60), (45, 30), 15, 0, 360, 1, -1)
    mask = mask.astype(bool)
    canvas[mask] = product_value
    # inner structure (a label and a stripe) so Canny has something inside the product
    inner = np.zeros_like(mask)
    inner[50:70, 60:100] = True
    canvas[inner & mask] = (250, 250, 250)
    return canvas, mask


def _boundary(mask):
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return mask & ~eroded


def test_format_is_white_on_black_three_channels():
    canvas, mask = _canvas()
    e = control_edges(canvas, mask)
    assert e.shape == canvas.shape and e.dtype == np.uint8
    assert set(np.unique(e)) <= {0, 255}
    assert (e[:, :, 0] == e[:, :, 1]).all() and (e[:, :, 1] == e[:, :, 2]).all()
    assert (e > 0).mean() < 0.2  # mostly black


@pytest.mark.parametrize("thickness", [0, 1, 2, 4])
def test_nothing_outside_the_product_region_even_with_a_busy_background(thickness):
    canvas, mask = _canvas()
    # a strongly textured canvas around the product: its edges must not leak into the map
    yy, xx = np.mgrid[: canvas.shape[0], : canvas.shape[1]]
    stripes = (((xx // 4) + (yy // 4)) % 2 * 255).astype(np.uint8)
    canvas[~mask] = stripes[~mask][:, None]
    e = control_edges(canvas, mask, contour_thickness=thickness)[:, :, 0] > 0
    region = product_region(mask, thickness)
    assert not (e & ~region).any()
    assert e.any()


def test_contour_is_drawn_from_the_mask():
    # a product almost the colour of the grey canvas: Canny alone barely sees its outline
    canvas, mask = _canvas(product_value=(129, 128, 127))
    boundary = _boundary(mask)
    with_contour = control_edges(canvas, mask, contour_thickness=2)[:, :, 0] > 0
    without = control_edges(canvas, mask, reinforce_contour=False)[:, :, 0] > 0
    assert with_contour[boundary].all()  # the whole silhouette is a closed line
    assert without[boundary].mean() < 0.2
    # the inner structure comes from Canny either way
    assert with_contour[48:72, 58:102].any() and without[48:72, 58:102].any()


def test_contour_thickness_is_configurable():
    canvas, mask = _canvas(product_value=(129, 128, 127))
    thin = (control_edges(canvas, mask, contour_thickness=1)[:, :, 0] > 0).sum()
    thick = (control_edges(canvas, mask, contour_thickness=5)[:, :, 0] > 0).sum()
    assert thick > 2 * thin


def test_high_contrast_product_outline_found_by_canny_too():
    canvas, mask = _canvas(product_value=(20, 20, 20))
    e = control_edges(canvas, mask, reinforce_contour=False, contour_thickness=1)[:, :, 0] > 0
    near = product_region(mask, 1) & ~cv2.erode(mask.astype(np.uint8), np.ones((5, 5))).astype(bool)
    assert e[near].sum() > 0.5 * _boundary(mask).sum()


def test_empty_mask_gives_an_empty_map():
    canvas, _ = _canvas()
    e = control_edges(canvas, np.zeros(canvas.shape[:2], bool))
    assert not e.any()


def test_bad_input_is_named():
    canvas, mask = _canvas()
    with pytest.raises(EdgeInputError, match="product_mask shape"):
        control_edges(canvas, mask[:-1])
    with pytest.raises(EdgeInputError, match="canvas_rgb"):
        control_edges(canvas[:, :, 0], mask)
    with pytest.raises(EdgeInputError, match="low <= high"):
        control_edges(canvas, mask, low=200, high=100)
