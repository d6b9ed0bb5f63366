"""The soft matte at cut-back (core/matting.py through compositing.product_layer): a drawn product
with an anti-aliased edge over a coloured backdrop, cut back onto a different colour."""
import cv2
import numpy as np
import pytest

from bggen_assets.core.compositing import fidelity_error, product_alpha, product_layer, solid_core
from bggen_assets.core.matting import BAND_PX, edge_matte
from matting_scenes import cut_back_onto, edge_error, ideal_composite, scene

@pytest.mark.parametrize("scale", [1.0, 0.5, 1.7])
def test_the_edge_blends_into_the_new_background_without_the_old_backdrop(scale):
    photo, true_alpha, product = scene()
    mask = true_alpha >= 0.5
    bbox = cv2.boundingRect(mask.astype(np.uint8))
    ideal, band = ideal_composite(true_alpha, product, bbox, scale)
    measured = {}
    for name, (rgb, alpha) in {"hard": (photo, product_alpha(mask, photo)),
                               "soft": tuple(product_layer(mask, photo))}.items():
        comp, _ = cut_back_onto(rgb, alpha, bbox, scale)
        # colour error in the band, and the part of it that points at the old backdrop (the fringe)
        measured[name] = edge_error(comp, ideal, band)
    (hard_err, hard_fringe), (soft_err, soft_fringe) = measured["hard"], measured["soft"]
    # measured: hard 6.9 / 2.9 / 8.5 mean abs error, soft 1.0 / 0.5 / 2.3; fringe hard 4.4 / 2.1 / 5.2, soft -0.2 / -0.1 / -0.2
    assert soft_err < 0.4 * hard_err, measured
    assert hard_fringe > 2.0 and abs(soft_fringe) < 0.5, measured


def test_inside_the_band_the_product_is_the_photo_pixel_for_pixel():
    photo, true_alpha, _ = scene()
    mask = true_alpha >= 0.5
    layer = product_layer(mask, photo)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * BAND_PX + 1, 2 * BAND_PX + 1))
    inside = cv2.erode(mask.astype(np.uint8), disk).astype(bool)
    assert (layer.alpha[inside] == 1.0).all()
    assert np.array_equal(layer.rgb[inside], photo[inside])
    # the matte softens the masker's boundary but never moves it
    assert np.array_equal(layer.alpha >= 0.5, mask)
    assert ((layer.alpha > 0) & (layer.alpha < 1)).sum() > 0.5 * ((true_alpha > 0.02) & (true_alpha < 0.98)).sum()
    # cut back at the source size onto another colour: the eroded product is the photo's exact pixels,
    # and the fidelity check (inside the resampled alpha == 1, eroded) holds
    bbox = cv2.boundingRect(mask.astype(np.uint8))
    comp, (rgb, alpha, lay) = cut_back_onto(layer.rgb, layer.alpha, bbox, 1.0)
    x, y, w, h = bbox
    core = inside[y:y + h, x:x + w]
    assert np.array_equal(comp[10:10 + h, 10:10 + w][core], photo[y:y + h, x:x + w][core])
    assert fidelity_error(comp, rgb, alpha, lay) == 0
    assert solid_core(alpha, 1).sum() > 0.8 * core.sum()


def test_light_on_light_keeps_the_hard_edge():
    """F and B closer than the projection can tell apart: the mask's edge and the photo's pixels stay."""
    photo, true_alpha, _ = scene(fg=(232, 233, 230), bg=(246, 244, 240), texture=3.0, shade=0.03)
    mask = true_alpha >= 0.5
    layer = edge_matte(photo, mask)
    assert np.array_equal(layer.alpha, mask.astype(np.float32))
    assert np.array_equal(layer.rgb, photo)


def test_a_file_alpha_is_its_own_matte():
    photo, true_alpha, _ = scene()
    rgba = np.dstack([photo, np.rint(true_alpha * 255).astype(np.uint8)])
    mask = true_alpha >= 0.5
    layer = product_layer(mask, rgba)
    assert np.array_equal(layer.rgb, photo)
    assert np.array_equal(layer.alpha, product_alpha(mask, rgba))


def test_bad_input_is_refused_by_name():
    photo, true_alpha, _ = scene()
    with pytest.raises(ValueError, match="mask is 10x10, image is 240x200"):
        edge_matte(photo, np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        edge_matte(photo.astype(np.float32), true_alpha >= 0.5)
    empty = edge_matte(photo, np.zeros(photo.shape[:2], bool))
    assert not empty.alpha.any() and np.array_equal(empty.rgb, photo)
