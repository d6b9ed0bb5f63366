"""Product masking: classical and alpha masks, rejections, the YOLO resource built offline,
and the documented quality targets on the labelled set and the sample catalog
(tests/masking_evalset.py), with each known miss a strict xfail."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))

from masking_evalset import (  # noqa: E402
    BACKGROUNDS,
    CATALOG_BACKGROUNDS,
    CATALOG_IOU,
    CATALOG_SIZES,
    EVAL_PER_BACKGROUND,
    FAMILIES,
    FAMILY_IOU,
    FAMILY_SEEDS,
    EVAL_SEEDS,
    SHADOW_KEPT,
    SOLE_COVERED,
    TARGET_IMAGE_IOU,
    TARGET_MEAN_IOU,
    boundary_f,
    catalog_photo,
    iou,
    parts_kept,
    render_family,
    render_item,
    sole_scores,
)

from bggen_assets.core.masking import (  # noqa: E402
    MaskRejected,
    MaskResult,
    borders_touched,
    classical_mask,
    fill_holes,
    mask_bbox,
    mask_product,
    validate_mask,
)


# ----------------------------------------------------------------------------- helpers
def _scene(h=300, w=400, box=(120, 80, 160, 140), bg=(250, 250, 250), fg=(180, 40, 40)):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    x, y, bw, bh = box
    img[y:y + bh, x:x + bw] = fg
    gt = np.zeros((h, w), bool)
    gt[y:y + bh, x:x + bw] = True
    return img, gt


# ----------------------------------------------------------------------------- validate_mask
def test_validate_accepts_normal_mask():
    _, gt = _scene()
    validate_mask(gt)


def test_reject_empty():
    with pytest.raises(MaskRejected, match="empty mask") as ei:
        validate_mask(np.zeros((50, 50), bool))
    assert "empty" in ei.value.reason


def test_reject_over_95_percent():
    m = np.ones((100, 100), bool)
    m[0, 0] = False
    with pytest.raises(MaskRejected, match=r"covers 100\.0% of the image \(> 95%\)"):
        validate_mask(m, max_borders_touched=4)


def test_reject_under_1_percent():
    m = np.zeros((100, 100), bool)
    m[50:59, 50:59] = True   # 0.81 %
    with pytest.raises(MaskRejected, match=r"< 1%"):
        validate_mask(m)


def test_reject_three_borders_unless_allowed():
    m = np.zeros((100, 100), bool)
    m[0:60, 0:100] = True    # top, left, right
    assert borders_touched(m) == 3
    with pytest.raises(MaskRejected, match="touches 3 image borders"):
        validate_mask(m)
    validate_mask(m, max_borders_touched=4)
    m2 = np.zeros((100, 100), bool)
    m2[0:60, 0:50] = True    # top + left only: a product at a corner is fine
    validate_mask(m2)


def test_mask_bbox():
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert mask_bbox(m) == (3, 2, 6, 3)
    assert mask_bbox(np.zeros((4, 4), bool)) == (0, 0, 0, 0)


# ----------------------------------------------------------------------------- classical / alpha
def test_classical_simple_product():
    img, gt = _scene()
    r = classical_mask(img)
    assert isinstance(r, MaskResult) and r.method == "classical"
    assert r.mask.dtype == bool and r.mask.shape == gt.shape
    assert iou(r.mask, gt) > 0.98
    assert r.bbox == mask_bbox(r.mask)
    assert abs(r.bbox[0] - 120) <= 1 and abs(r.bbox[1] - 80) <= 1
    assert 0.0 <= r.score <= 1.0 and r.reason.startswith("classical")


def test_alpha_channel_used_directly():
    img, gt = _scene()
    rgba = np.dstack([img, np.where(gt, 255, 0).astype(np.uint8)])
    rgba[..., :3] = 250          # colour gives nothing away: only alpha can find it
    r = mask_product(rgba)
    assert r.method == "alpha" and "alpha" in r.reason
    np.testing.assert_array_equal(r.mask, gt)


def test_constant_alpha_falls_back_to_classical():
    img, gt = _scene()
    rgba = np.dstack([img, np.full(gt.shape, 255, np.uint8)])
    r = classical_mask(rgba)
    assert r.method == "classical" and iou(r.mask, gt) > 0.98


def test_gradient_background_with_soft_shadow_excluded():
    import cv2
    h, w = 360, 480
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = 245 - 50 * (xx / w) - 20 * (yy / h)
    img = np.repeat(bg[:, :, None], 3, axis=2)
    gt = np.zeros((h, w), np.float32)
    cv2.ellipse(gt, (240, 170), (110, 80), 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(np.roll(np.roll(gt, 18, 0), 14, 1), (0, 0), 9)
    img = img * (1 - 0.25 * shadow[:, :, None])
    img = img * (1 - gt[:, :, None]) + gt[:, :, None] * np.array([40, 90, 170], np.float32)
    img = np.clip(img + np.random.default_rng(0).normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    r = mask_product(img)
    gtb = gt > 0.5
    assert iou(r.mask, gtb) > 0.95
    assert (r.mask & ~gtb).sum() < 0.03 * gtb.sum()   # the shadow stays out


def test_tiny_image():
    img, gt = _scene(h=12, w=16, box=(5, 4, 6, 4))
    r = mask_product(img)
    assert r.mask.shape == (12, 16) and iou(r.mask, gt) > 0.7


def test_large_image_masked_on_downscaled_copy():
    img, gt = _scene(h=3000, w=4000, box=(1200, 800, 1600, 1400))
    r = mask_product(img)
    assert r.mask.shape == (3000, 4000) and iou(r.mask, gt) > 0.99
    assert "upscaled to 4000x3000" in r.reason


def test_grayscale_array_and_bad_arrays():
    img, gt = _scene(fg=(60, 60, 60))
    r = classical_mask(img[:, :, 0])
    assert iou(r.mask, gt) > 0.98
    with pytest.raises(ValueError, match="uint8"):
        classical_mask(img.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        classical_mask(np.zeros((10, 10, 2), np.uint8))


def test_reject_product_fills_frame():
    # a close-up: the product fills all but a thin white frame
    img, _ = _scene(h=200, w=300, box=(3, 3, 294, 194), fg=(30, 90, 160))
    with pytest.raises(MaskRejected, match=r"> 95%.*product fills the frame") as ei:
        mask_product(img)
    assert ei.value.result is not None and ei.value.result.method == "classical"


def test_noise_without_background_is_rejected():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 300, 3)).astype(np.uint8)   # no background anywhere
    with pytest.raises(MaskRejected):
        mask_product(img)


def test_reject_plain_image_and_tiny_product():
    with pytest.raises(MaskRejected, match="empty mask"):
        mask_product(np.full((100, 100, 3), 240, np.uint8))
    img, _ = _scene(h=400, w=400, box=(200, 200, 10, 10))
    with pytest.raises(MaskRejected, match=r"< 1%"):
        mask_product(img)


def test_reject_cut_off_product_unless_allowed():
    img, gt = _scene(h=300, w=400, box=(0, 0, 400, 90))    # spans left, top and right borders
    with pytest.raises(MaskRejected, match="touches 3 image borders"):
        mask_product(img)
    r = mask_product(img, allow_border_touch=True)
    assert iou(r.mask, gt) > 0.98


# ----------------------------------------------------------------------------- the labelled set
# EVAL_SEEDS x EVAL_PER_BACKGROUND images per background type (480-900 px wide, as in the
# benchmark), held to DESIGN.md's targets: every image >= TARGET_IMAGE_IOU (0.85), the mean per
# background type >= TARGET_MEAN_IOU (0.97).  The targets are the floors; nothing here is fitted to
# a draw.  What misses them today is a strict xfail naming the image and its measured IoU
# (benchmarks/masking.py prints them all): a fix turns the xfail into a failure, and then the
# entry is deleted.
IMAGE_MISSES: dict[tuple[int, str, int], str] = {}
MEAN_MISSES: dict[str, str] = {}
# The boundary F-measure has no documented target; it is held where the IoU target puts it
# (0.1 under), on the same images.
TARGET_MEAN_F = TARGET_MEAN_IOU - 0.1


def _xfail_if_known(reason: str | None) -> list:
    return [pytest.mark.xfail(reason=f"known miss: {reason}", strict=True)] if reason else []


@functools.lru_cache(maxsize=None)
def _evalset_scores(seed: int, background: str, index: int) -> tuple[float, float]:
    """(IoU, boundary F) of the classical masker on one labelled image; cached, so that the mean
    tests reuse what the per-image tests computed."""
    it = render_item(index, background, seed=seed)
    m = classical_mask(it.image).mask
    return iou(m, it.mask), boundary_f(m, it.mask)


def _image_cases():
    for seed in EVAL_SEEDS:
        for bg in BACKGROUNDS:
            for i in range(EVAL_PER_BACKGROUND):
                yield pytest.param(seed, bg, i, id=f"seed{seed}-{bg}-{i}",
                                   marks=_xfail_if_known(IMAGE_MISSES.get((seed, bg, i))))


@pytest.mark.parametrize("seed,background,index", list(_image_cases()))
def test_every_labelled_image_reaches_the_target(seed, background, index):
    v, _ = _evalset_scores(seed, background, index)
    assert v >= TARGET_IMAGE_IOU, (seed, background, index, round(v, 4))


def _scores(background: str) -> np.ndarray:
    return np.array([_evalset_scores(s, background, i)
                     for s in EVAL_SEEDS for i in range(EVAL_PER_BACKGROUND)])


@pytest.mark.parametrize("background", [
    pytest.param(bg, marks=_xfail_if_known(MEAN_MISSES.get(bg))) for bg in BACKGROUNDS])
def test_mean_iou_reaches_the_target(background):
    v = _scores(background)[:, 0]
    assert v.mean() >= TARGET_MEAN_IOU, (background, round(float(v.mean()), 4))


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_mean_boundary_f_reaches_the_target(background):
    f = _scores(background)[:, 1]
    assert f.mean() >= TARGET_MEAN_F, (background, round(float(f.mean()), 4))


def test_known_misses_name_cases_that_exist():
    # an entry whose case was renamed or dropped would silently stop being checked
    cases = {(s, b, i) for s in EVAL_SEEDS for b in BACKGROUNDS for i in range(EVAL_PER_BACKGROUND)}
    assert set(IMAGE_MISSES) <= cases and set(MEAN_MISSES) <= set(BACKGROUNDS)
    assert set(CATALOG_MISSES) <= set(_catalog_keys())


# ----------------------------------------------------------------------------- sample catalog
# Every product kind x colour the sample catalog draws, on each opaque background, at 400 and
# 800 px (the catalog's size), seed 0: each photo's mask >= CATALOG_IOU (0.95).  The sneaker on
# white and off-white is the demo's failure (its light sole, ~245,245,242 on pure white with a soft
# floor shadow under it, was dropped): there the sole must also be >= SOLE_COVERED (95%) in the
# mask and the floor shadow out (< SHADOW_KEPT of the product), at seed 1 as well.  A second seed
# for every kind would double the file's time (an 800 px photo is drawn at 1600 px);
# benchmarks/masking.py runs it and finds the same kinds of miss (docs/masking.md).
CATALOG_SEED = 0
SOLE_SEEDS = (0, 1)
CATALOG_MISSES: dict[tuple[int, int, str, str, str], str] = {
    # at 400 px the light sole on off-white is cut off (its toe end), in the darker colours
    (400, 0, "sneaker", "red", "offwhite"): "IoU 0.924, sole 81.8% covered",
    (400, 0, "sneaker", "navy", "offwhite"): "IoU 0.923, sole 81.3% covered",
    (400, 0, "sneaker", "green", "offwhite"): "IoU 0.924, sole 81.8% covered",
    (400, 0, "sneaker", "black", "offwhite"): "IoU 0.921, sole 81.1% covered",
    (400, 0, "sneaker", "burgundy", "offwhite"): "IoU 0.923, sole 81.3% covered",
    (400, 1, "sneaker", "tan", "offwhite"): "IoU 0.930, sole 83.1% covered",
    (400, 1, "sneaker", "mustard", "offwhite"): "IoU 0.931, sole 83.1% covered",
    (400, 1, "sneaker", "sky", "offwhite"): "IoU 0.931, sole 83.5% covered",
    (400, 1, "sneaker", "coral", "offwhite"): "IoU 0.930, sole 83.1% covered",
    # (c9: the grey upper's promoted rim no longer takes the shadow-like toe of the sole with it)
    (400, 1, "sneaker", "grey", "offwhite"): "IoU 0.930, sole 83.1% covered (c8: 98.9%)",
    # at 800 px the boot's sole ends are as light and as textured as the paper, in every colour
    (800, 0, "boot", "red", "texture"): "IoU 0.882",
    (800, 0, "boot", "navy", "texture"): "IoU 0.874",
    (800, 0, "boot", "green", "texture"): "IoU 0.878",
    (800, 0, "boot", "black", "texture"): "IoU 0.878",
    (800, 0, "boot", "tan", "texture"): "IoU 0.875",
    (800, 0, "boot", "teal", "texture"): "IoU 0.881",
    (800, 0, "boot", "mustard", "texture"): "IoU 0.877",
    (800, 0, "boot", "burgundy", "texture"): "IoU 0.874",
    (800, 0, "boot", "sky", "texture"): "IoU 0.880",
    (800, 0, "boot", "olive", "texture"): "IoU 0.877",
    (800, 0, "boot", "coral", "texture"): "IoU 0.881",
    (800, 0, "boot", "grey", "texture"): "IoU 0.875",
    # at 800 px, seed 1: the sole's toe end is cut again (96-99% covered at seed 0)
    (800, 1, "sneaker", "red", "offwhite"): "sole 94.4% covered",
    (800, 1, "sneaker", "navy", "offwhite"): "sole 94.4% covered",
    (800, 1, "sneaker", "black", "offwhite"): "sole 91.4% covered",
    (800, 1, "sneaker", "burgundy", "offwhite"): "sole 94.4% covered",
}


def _catalog_keys():
    from bggen_assets.sample_catalog import COLOURS, PRODUCT_ASPECT

    for size in CATALOG_SIZES:
        for kind in PRODUCT_ASPECT:
            for colour in COLOURS:
                for bg in CATALOG_BACKGROUNDS:
                    yield size, CATALOG_SEED, kind, colour, bg
        for seed in SOLE_SEEDS:
            if seed != CATALOG_SEED:
                for colour in COLOURS:
                    for bg in ("white", "offwhite"):
                        yield size, seed, "sneaker", colour, bg


@pytest.mark.parametrize("size,seed,kind,colour,background", [
    pytest.param(*k, id=f"{k[0]}px-seed{k[1]}-{k[2]}-{k[3]}-{k[4]}",
                 marks=_xfail_if_known(CATALOG_MISSES.get(k)))
    for k in _catalog_keys()])
def test_sample_catalog_photo(size, seed, kind, colour, background):
    img, true_mask = catalog_photo(kind, colour, background, size, seed)
    m = mask_product(img).mask
    v = iou(m, true_mask)
    if kind == "sneaker" and background in ("white", "offwhite"):
        sole, floor_kept = sole_scores(m, true_mask)
        assert floor_kept < SHADOW_KEPT, f"the floor shadow is kept ({floor_kept:.2%} of the product)"
        assert sole >= SOLE_COVERED, f"the sole is dropped ({sole:.1%} covered, IoU {v:.3f})"
    assert v >= CATALOG_IOU, (size, seed, kind, colour, background, round(v, 4))


# ----------------------------------------------------------------------------- drawn families
# The drawn case families (tests/masking_evalset.py, FAMILIES), exact masks, every kind on every
# background type at seed 0 (benchmarks/masking.py runs seeds 0-3): every mask >= FAMILY_IOU
# (0.95); products in several parts keep every part (>= 90% of each); products with true holes
# keep them open (under 5% of the hole filled).  Known misses are strict xfails with the measured
# value, as above.
FAMILY_MISSES: dict[tuple[str, str], str] = {
    ("earrings", "textured"): "IoU 0.920 (c8: 0.754): both kept, with bits of brick mortar next to one",
    ("strap_loop", "white"): "IoU 0.949: the buckle's inside kept (c8 also kept the strap's shadow band)",
    ("strap_loop", "offwhite"): "IoU 0.947: the buckle's inside kept",
    ("strap_loop", "gradient"): "IoU 0.947: the buckle's inside kept",
    ("strap_loop", "textured"): "IoU 0.909 (c11: 0.743): the buckle's inside and bits of shadowed brick kept",
    ("white_sneaker", "offwhite"): "IoU 0.9498 (c6: 0.358): the upper, found as brighter than the "
                                   "backdrop, loses a 1-2 px rim where its shading meets the backdrop's level",
    ("white_sneaker", "textured"): "IoU 0.935 (c10: 0.333): the upper found by its tint, with a "
                                   "patch of brick beside its heel",
    ("silver_headphones", "offwhite"): "IoU 0.947 (c9: 0.825): a 1-2 px rim of the drop shadow "
                                       "kept beside the headband",
}


def _family_cases(families: tuple[str, ...]):
    for kind, fam in FAMILIES.items():
        if fam in families:
            for bg in BACKGROUNDS:
                yield pytest.param(kind, bg, id=f"{kind}-{bg}", marks=_xfail_if_known(FAMILY_MISSES.get((kind, bg))))


@functools.lru_cache(maxsize=None)
def _family_mask(kind: str, background: str, seed: int = 0):
    it = render_family(kind, background, seed=seed)
    return it, classical_mask(it.image).mask


@pytest.mark.parametrize("kind,background", list(_family_cases(("parts",))))
def test_a_product_in_several_parts_keeps_every_part(kind, background):
    it, m = _family_mask(kind, background)
    n_true = int(cv2.connectedComponents(it.mask.astype(np.uint8))[0]) - 1
    assert n_true == 2
    assert parts_kept(m, it.mask) == n_true, f"{parts_kept(m, it.mask)} of {n_true} parts kept"
    assert iou(m, it.mask) >= FAMILY_IOU, round(iou(m, it.mask), 4)


@pytest.mark.parametrize("kind,background", list(_family_cases(("holes",))))
def test_a_product_with_a_hole_keeps_it_open(kind, background):
    # a ring, a handbag's handle gap, a mug's handle, a lamp's gap, a strap's loop
    it, m = _family_mask(kind, background)
    hole = fill_holes(it.mask) & ~it.mask
    assert hole.sum() > 0.05 * it.mask.sum()
    assert m[hole].mean() < 0.05, f"{m[hole].mean():.1%} of the hole filled (IoU {iou(m, it.mask):.3f})"
    assert iou(m, it.mask) >= FAMILY_IOU, round(iou(m, it.mask), 4)


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_a_ring_keeps_its_hole(background):
    # (the hole in shadow: its drop shadow darkens part of it; held strictly, no xfail)
    it, m = _family_mask("ring", background)
    hole = fill_holes(it.mask) & ~it.mask
    assert m[hole].mean() < 0.05, f"{m[hole].mean():.1%} of the hole filled"


@pytest.mark.parametrize("kind,background", list(_family_cases(("light",))))
def test_a_light_product_on_a_light_background(kind, background):
    # white, silver and cream products of low saturation, a few levels off the background
    it, m = _family_mask(kind, background)
    assert iou(m, it.mask) >= FAMILY_IOU, round(iou(m, it.mask), 4)


def test_the_shadow_a_light_part_merged_with_is_peeled_by_its_chroma():
    # one accepted region, 60 px wide: a silver part (rows 0-29, 3.5 levels of chroma off the
    # backdrop) and the drop shadow under it (rows 30-49, the backdrop's chroma), whose bottom
    # rim runs out into the backdrop
    from bggen_assets.core.masking import _shadow_coloured

    labels = np.zeros((60, 80), np.int32)
    labels[5:55, 10:70] = 1
    ok, area = np.array([False, True]), np.array([80 * 60 - 3000, 3000])
    open_ = np.zeros(labels.shape, bool)
    open_[54, 10:70] = True
    chroma = np.full(labels.shape, 0.3, np.float32)
    chroma[5:35, 10:70] = 3.5
    peel = _shadow_coloured(labels, ok, area, open_, chroma)
    assert peel[35:55, 10:70].all() and not peel[5:35].any() and not peel[labels == 0].any()
    # a product of the backdrop's own chroma (a white upper on white) is not peeled at all
    assert not _shadow_coloured(labels, ok, area, open_, np.full(labels.shape, 0.3, np.float32)).any()
    # nor is a shadow that no open rim reaches (a region closed off all round)
    assert not _shadow_coloured(labels, ok, area, np.zeros(labels.shape, bool), chroma).any()
    # nor one that is most of the region (what would be left is under 40% of it)
    chroma[5:45] = 0.3
    chroma[5:15, 10:70] = 3.5
    assert not _shadow_coloured(labels, ok, area, open_, chroma).any()


def test_a_light_part_of_its_own_tint_is_found_and_its_shadow_is_not():
    # a neutral white upper (8 levels darker than a green-tinted backdrop, as light as its drop
    # shadow's fall-off) over a found part (the sole: the mask), with a drop shadow down-right
    from bggen_assets.core.masking import _tinted_parts

    rng = np.random.default_rng(3)
    h, w = 200, 260
    back = np.array([228.0, 240.0, 224.0], np.float32)
    upper = np.zeros((h, w), np.uint8)
    cv2.ellipse(upper, (130, 110), (80, 45), 0, 180, 360, 255, -1)
    upper = upper > 0
    sole = np.zeros((h, w), bool)
    sole[110:122, 50:211] = True
    body = (upper | sole).astype(np.float32)
    shadow = cv2.GaussianBlur(np.roll(body, (8, 6), axis=(0, 1)), (0, 0), 5.0)

    def photo(upper_rgb):
        img = np.broadcast_to(back, (h, w, 3)) * (1.0 - 0.3 * shadow)[:, :, None]
        img = np.where(upper[:, :, None], upper_rgb, img)
        img = np.where(sole[:, :, None], 250.0, img)
        return np.clip(img + rng.normal(0, 1.0, img.shape), 0, 255).astype(np.uint8)

    pred = cv2.cvtColor(np.full((h, w, 3), back.astype(np.uint8)), cv2.COLOR_RGB2LAB).astype(np.float32)
    in_shadow = (shadow > 0.05) & ~cv2.dilate(body.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    got = _tinted_parts(photo(np.array([226.0, 226.0, 223.0])), pred, sole, min_area=200)
    assert got[upper].mean() > 0.9, got[upper].mean()
    assert got[in_shadow].mean() < 0.01, got[in_shadow].mean()
    # the same upper in the backdrop's own tint (its chromaticity, 3% darker) is not found: its
    # colour says nothing a shadow's would not
    assert not _tinted_parts(photo(back * 0.97), pred, sole, min_area=200).any()


@pytest.mark.parametrize("seed", FAMILY_SEEDS)
def test_every_drawn_family_image_reaches_the_image_target(seed):
    # DESIGN.md's per-image target (0.85) on every drawn family case at the benchmark's seeds 0-3:
    # the light-on-light misses are at seeds 1-3 (white sneakers on a tinted gradient, off-white,
    # a printed page, grass, brick: c11 0.02-0.73) and the shadowed bricks in a strap loop at seed 0
    # (c11 0.743); one test per seed, the cases of a seed listed together when they miss
    low = {}
    for kind in FAMILIES:
        for bg in BACKGROUNDS:
            it, m = _family_mask(kind, bg, seed)
            v = iou(m, it.mask)
            if v < TARGET_IMAGE_IOU:
                low[f"{kind} on {bg}"] = round(v, 3)
    assert not low, low


def test_family_misses_name_cases_that_exist():
    assert set(FAMILY_MISSES) <= {(k, b) for k in FAMILIES for b in BACKGROUNDS}


# ----------------------------------------------------------------------------- the resource
@pytest.fixture(scope="module")
def seg_weights(tmp_path_factory) -> Path:
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("yolo") / "yolo11n-seg-random.pt"
    YOLO("yolo11n-seg.yaml").save(str(path))
    return path


def test_yolo_random_weights_fall_back_to_classical(seg_weights):
    from dagster import build_init_resource_context

    from resources.masker import MaskerResource

    m = MaskerResource(method="yolo", yolo_weights=str(seg_weights), imgsz=320)
    m.setup_for_execution(build_init_resource_context())
    it = render_item(1, "white", size=(512, 400), seed=7)
    r = m.mask(it.image)
    assert r.method == "classical"
    assert r.reason.startswith("yolo found no instance above conf 0.25; classical fallback")
    assert iou(r.mask, it.mask) > 0.9


def test_identity_tracks_weights_and_params(seg_weights, tmp_path):
    from ultralytics import YOLO

    from resources.masker import MaskerResource

    a = MaskerResource(method="yolo", yolo_weights=str(seg_weights)).identity()
    assert a == MaskerResource(method="yolo", yolo_weights=str(seg_weights)).identity()
    assert a.startswith("yolo-") and len(a) < 100
    assert a != MaskerResource(method="yolo", yolo_weights=str(seg_weights), confidence=0.5).identity()
    assert a != MaskerResource(method="yolo", yolo_weights=str(seg_weights), classes=[0]).identity()
    other = tmp_path / "other-seg.pt"
    YOLO("yolo11n-seg.yaml").save(str(other))   # new random init: other content, other hash
    assert MaskerResource(method="yolo", yolo_weights=str(other)).identity() != a
    c = MaskerResource().identity()
    assert c.startswith("classical-") and c != MaskerResource(allow_border_touch=True).identity()


def test_yolo_config_errors(seg_weights, tmp_path):
    from ultralytics import YOLO

    from resources.masker import MaskerConfigError, MaskerResource

    img, _ = _scene()
    with pytest.raises(MaskerConfigError, match="file not found"):
        MaskerResource(method="yolo", yolo_weights=str(tmp_path / "yolo11n-seg.pt")).mask(img)
    with pytest.raises(MaskerConfigError, match="needs yolo_weights"):
        MaskerResource(method="yolo").mask(img)
    with pytest.raises(MaskerConfigError, match="'classical', 'yolo', 'onnx' or 'auto'"):
        MaskerResource(method="sam").mask(img)
    det = tmp_path / "detect.pt"
    YOLO("yolo11n.yaml").save(str(det))
    with pytest.raises(MaskerConfigError, match="not a segmentation model"):
        MaskerResource(method="yolo", yolo_weights=str(det)).mask(img)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MaskerConfigError, match="could not be loaded"):
        MaskerResource(method="yolo", yolo_weights=str(bad)).mask(img)


def test_resource_decode_and_classical_rejection():
    import io

    from PIL import Image

    from bggen_assets.core.image_io import ImageDecodeError
    from resources.masker import MaskerResource

    m = MaskerResource(max_pixels=10_000)
    buf = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buf, "PNG")
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        m.decode(buf.getvalue())
    img, _ = _scene(h=300, w=400, box=(0, 0, 400, 90))
    with pytest.raises(MaskRejected, match="touches 3"):
        MaskerResource().mask(img)
    assert MaskerResource(allow_border_touch=True).mask(img).method == "classical"


def test_select_instance_prefers_confident_central_large():
    from bggen_assets.core.yolo_masking import select_instance

    masks = np.zeros((4, 100, 100), bool)
    masks[0, 40:60, 40:60] = True      # central, medium
    masks[1, 0:30, 0:30] = True        # corner
    masks[2, 35:70, 30:70] = True      # central, larger, lower confidence
    masks[3, 0:100, 0:50] = True       # touches 3 borders: never picked
    confs = np.array([0.9, 0.95, 0.6, 0.99])
    idx, score, _ = select_instance(masks, confs)
    assert idx == 2 and score > 0
    idx, _, note = select_instance(masks[3:], confs[3:])
    assert idx is None and "touches 3 borders" in note
