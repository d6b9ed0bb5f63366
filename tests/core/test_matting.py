"""The soft matte at cut-back (core/matting.py through compositing.product_layer): a drawn product
with an anti-aliased edge over a coloured backdrop, cut back onto a different colour."""
import cv2
import numpy as np
import pytest

from bggen_assets.core.compositing import (cut_back, fidelity_error, product_alpha, product_layer, resample_product,
                                           solid_core)
from bggen_assets.core.geometry import CanvasLayout
from bggen_assets.core.matting import BAND_PX, edge_matte

BACKDROP = (40, 90, 200)  # the photo's blue
NEW_BG = (60, 180, 80)  # the generated background's green


def scene(fg=(205, 60, 40), bg=BACKDROP, w=240, h=200, ss=4, seed=0, texture=12.0, shade=0.1):
    """(photo uint8, true alpha, true product colour): an ellipse with a hole and a bar, drawn at
    4x and area-averaged (an anti-aliased edge), textured, over a shaded backdrop, with noise."""
    big = np.zeros((h * ss, w * ss), np.uint8)
    cv2.ellipse(big, (110 * ss, 100 * ss), (70 * ss, 55 * ss), 15, 0, 360, 255, -1)
    cv2.rectangle(big, (150 * ss, 40 * ss), (200 * ss, 150 * ss), 255, -1)
    cv2.circle(big, (110 * ss, 100 * ss), 18 * ss, 0, -1)
    alpha = cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:h, 0:w]
    product = np.array(fg, np.float32) + texture * np.sin(xx / 7.0)[..., None]
    backdrop = np.array(bg, np.float32) + shade * (yy[..., None] - h / 2)
    noise = np.random.default_rng(seed).normal(0.0, 2.0, (h, w, 3))
    photo = alpha[..., None] * product + (1 - alpha[..., None]) * backdrop + noise
    return np.clip(np.rint(photo), 0, 255).astype(np.uint8), alpha, product


def cut_back_onto_green(layer_rgb, layer_alpha, bbox, scale):
    x, y, w, h = bbox
    tw, th = round(w * scale), round(h * scale)
    lay = CanvasLayout(tw + 20, th + 20, 10, 10, tw, th)
    generated = np.full((lay.height, lay.width, 3), NEW_BG, np.uint8)
    rgb, alpha = resample_product(layer_rgb, layer_alpha, bbox, (tw, th))
    return cut_back(generated, rgb, alpha, lay), (rgb, alpha, lay)


def ideal_composite(true_alpha, product, bbox, scale):
    """The true product composited onto the green with its true alpha, then resized as the cut-back is."""
    x, y, w, h = bbox
    tw, th = round(w * scale), round(h * scale)
    full = true_alpha[..., None] * product + (1 - true_alpha[..., None]) * np.array(NEW_BG, np.float32)
    interp = cv2.INTER_AREA if scale <= 1 else cv2.INTER_CUBIC
    out = np.empty((th + 20, tw + 20, 3), np.float32)
    out[:] = NEW_BG
    out[10:10 + th, 10:10 + tw] = cv2.resize(full[y:y + h, x:x + w], (tw, th), interpolation=interp)
    small_alpha = cv2.resize(true_alpha[y:y + h, x:x + w], (tw, th), interpolation=cv2.INTER_AREA)
    edge = ((small_alpha > 0.02) & (small_alpha < 0.98)).astype(np.uint8)
    band = np.zeros(out.shape[:2], bool)
    band[10:10 + th, 10:10 + tw] = cv2.dilate(edge, np.ones((3, 3), np.uint8)).astype(bool)
    return out, band


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.7])
def test_the_edge_blends_into_the_new_background_without_the_old_backdrop(scale):
    photo, true_alpha, product = scene()
    mask = true_alpha >= 0.5
    bbox = cv2.boundingRect(mask.astype(np.uint8))
    ideal, band = ideal_composite(true_alpha, product, bbox, scale)
    towards_backdrop = np.array(BACKDROP, np.float32) - np.array(NEW_BG, np.float32)
    towards_backdrop /= np.linalg.norm(towards_backdrop)
    measured = {}
    for name, (rgb, alpha) in {"hard": (photo, product_alpha(mask, photo)),
                               "soft": tuple(product_layer(mask, photo))}.items():
        comp, _ = cut_back_onto_green(rgb, alpha, bbox, scale)
        diff = comp.astype(np.float32)[band] - ideal[band]
        # colour error in the band, and the part of it that points at the old backdrop (the fringe)
        measured[name] = (float(np.abs(diff).mean()), float((diff @ towards_backdrop).mean()))
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
    comp, (rgb, alpha, lay) = cut_back_onto_green(layer.rgb, layer.alpha, bbox, 1.0)
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
