"""Product masking: classical and alpha masks, rejections, the YOLO resource built offline,
and IoU floors on a fixed part of the labelled set (tests/masking_evalset.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from masking_evalset import BACKGROUNDS, boundary_f, iou, render_item  # noqa: E402

from bggen_assets.core.masking import (  # noqa: E402
    MaskRejected,
    MaskResult,
    borders_touched,
    classical_mask,
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


# ----------------------------------------------------------------------------- IoU floors
# A fixed part of the labelled set (6 items per background type, 512x400, seed 7); floors sit a
# little under the measured values so that a regression fails.  Measured (see docs/masking.md):
# mean IoU 0.955 / 0.988 / 0.921 / 0.963, lowest item 0.593 (a grey product on a gradient).
FLOORS = {"white": 0.93, "offwhite": 0.97, "gradient": 0.90, "textured": 0.94}
ITEM_FLOOR = 0.55


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_iou_floor_on_fixed_evalset(background):
    ious, fs = [], []
    for i in range(6):
        it = render_item(i, background, size=(512, 400), seed=7)
        r = classical_mask(it.image)
        ious.append(iou(r.mask, it.mask))
        fs.append(boundary_f(r.mask, it.mask))
    assert min(ious) >= ITEM_FLOOR, ious
    assert float(np.mean(ious)) >= FLOORS[background], (background, ious)
    assert float(np.mean(fs)) >= FLOORS[background] - 0.1, (background, fs)


# ----------------------------------------------------------------------------- sample catalog
# Every product kind the sample catalog draws, on each opaque background, at 400 px (red, seed 0).
# The demo's failure: the sneaker's light sole (~245,245,242 on pure white, soft floor shadow under
# it) was dropped; it is found now by its outline (crisp step / thin outline closing it off from the
# background) while the soft floor shadow stays out.
CATALOG_BACKGROUNDS = ("white", "offwhite", "gradient", "texture")
CATALOG_IOU = 0.95
# Known misses, measured (see docs/masking.md): none since the boundary is unmixed (the lamp's
# 6 px stem at 400 px was one, at IoU ~0.945).
CATALOG_XFAIL: dict[tuple[str, str], str] = {}


def _catalog_cases():
    from bggen_assets.sample_catalog import PRODUCT_ASPECT

    for kind in PRODUCT_ASPECT:
        for bg in CATALOG_BACKGROUNDS:
            marks = ([pytest.mark.xfail(reason=CATALOG_XFAIL[(kind, bg)], strict=True)]
                     if (kind, bg) in CATALOG_XFAIL else [])
            yield pytest.param(kind, bg, id=f"{kind}-{bg}", marks=marks)


@pytest.mark.parametrize("kind,background", list(_catalog_cases()))
def test_sample_catalog_kinds_iou(kind, background):
    from bggen_assets.sample_catalog import COLOURS, photo

    img, true_mask = photo(kind, COLOURS["red"], background, np.random.default_rng(0), size=(400, 400))
    r = classical_mask(img)
    assert iou(r.mask, true_mask) >= CATALOG_IOU, (kind, background, iou(r.mask, true_mask))


@pytest.mark.parametrize("background", ["white", "offwhite"])
def test_sneaker_sole_kept_and_floor_shadow_excluded(background):
    from bggen_assets.sample_catalog import COLOURS, photo

    img, true_mask = photo("sneaker", COLOURS["red"], background, np.random.default_rng(0))  # 800 px
    r = mask_product(img)
    assert iou(r.mask, true_mask) >= 0.95
    rows = np.nonzero(true_mask.any(axis=1))[0]
    y0, y1 = rows.min(), rows.max() + 1
    sole = true_mask.copy()
    sole[: y1 - int(0.2 * (y1 - y0))] = False          # bottom 20% of the shoe: the sole
    assert (r.mask & sole).sum() >= 0.95 * sole.sum(), "the sole is dropped"
    below = np.zeros_like(true_mask)
    below[y1 + 6:] = True                               # the floor shadow lies under the sole
    assert (r.mask & below).sum() < 0.005 * true_mask.sum(), "the floor shadow is kept"


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
    with pytest.raises(MaskerConfigError, match="'classical' or 'yolo'"):
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
    from resources.masker import select_instance

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
