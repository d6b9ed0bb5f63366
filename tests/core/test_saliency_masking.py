"""The learned masker's pre/post-processing (core/saliency_masking.py) on arrays: the tensor the
model is fed, the shape contract it must meet, and the mask made from its saliency map."""
import cv2
import numpy as np
import pytest

from bggen_assets.core.saliency_masking import (
    SaliencyModelError,
    SaliencySettings,
    check_model_io,
    keep_sizeable_parts,
    mask_from_saliency,
    preprocess_batch,
    saliency_maps,
)


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def test_images_become_a_normalised_n_by_3_by_s_by_s_tensor():
    st = SaliencySettings(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    white = np.full((50, 70, 3), 255, np.uint8)
    red = np.zeros((20, 10, 3), np.uint8)
    red[:, :, 0] = 255
    grey = np.full((40, 40), 0, np.uint8)   # 2-D grey is repeated to RGB
    x = preprocess_batch([white, red, grey], st)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 5, 5], [1.0, 2.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(x[1, :, 5, 5], [1.0, -2.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(x[2, :, 5, 5], [-1.0, -2.0, -0.5], atol=1e-6)


def test_the_model_io_contract_is_checked_and_the_error_names_the_model():
    st = SaliencySettings(input_size=320)
    assert check_model_io("u2net.onnx", [["n", 3, 320, 320]], [["n", 1, 320, 320]] * 7, st) is True
    assert check_model_io("isnet.onnx", [[1, 3, 320, 320]], [[1, 1, 320, 320]], st) is False
    bad = [([[1, 1, 320, 320]], [[1, 1, 320, 320]], "N×3×S×S"),
           ([[1, 3, 1024, 1024]], [[1, 1, 1024, 1024]], "input_size is 320"),
           ([[1, 3, 320, 320]], [[1, 2, 320, 320]], "saliency map"),
           ([[1, 3, 320, 320], [1]], [[1, 1, 320, 320]], "2 inputs")]
    for ins, outs, words in bad:
        with pytest.raises(SaliencyModelError, match="^m.onnx: .*" + words):
            check_model_io("m.onnx", ins, outs, st)
    with pytest.raises(SaliencyModelError, match="output_index 3 but the model has 1 outputs"):
        check_model_io("m.onnx", [[1, 3, 320, 320]], [[1, 1, 320, 320]], SaliencySettings(320, output_index=3))


def test_maps_come_out_in_0_1_after_the_configured_activation():
    logits = np.array([[[[-10.0, 0.0], [10.0, 2.0]]]], np.float32)
    np.testing.assert_allclose(saliency_maps(logits, 1, "sigmoid")[0], 1 / (1 + np.exp(-logits[0, 0])), rtol=1e-5)
    np.testing.assert_allclose(saliency_maps(logits, 1, "minmax")[0], [[0.0, 0.5], [1.0, 0.6]], atol=1e-6)
    np.testing.assert_allclose(saliency_maps(logits, 1, "none")[0], [[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(SaliencyModelError, match="batch of 2"):
        saliency_maps(logits, 2)


def test_a_map_of_two_parts_and_a_ring_gives_every_part_and_the_open_hole():
    h, w, s = 300, 400, 128
    truth = np.zeros((h, w), np.uint8)
    cv2.ellipse(truth, (100, 200), (55, 30), 0, 0, 360, 1, -1)        # left shoe
    cv2.ellipse(truth, (230, 200), (55, 30), 0, 0, 360, 1, -1)        # right shoe
    cv2.circle(truth, (330, 90), 45, 1, -1)                            # ring ...
    cv2.circle(truth, (330, 90), 25, 0, -1)                            # ... and its hole
    truth = truth.astype(bool)
    img = np.full((h, w, 3), 245, np.uint8)
    img[truth] = (40, 60, 170)
    sal = cv2.resize(truth.astype(np.float32), (s, s), interpolation=cv2.INTER_AREA)
    res = mask_from_saliency(img, sal, SaliencySettings(input_size=s))
    assert res.method == "onnx" and res.mask.shape == (h, w)
    assert _iou(res.mask, truth) > 0.93, _iou(res.mask, truth)
    n, _ = cv2.connectedComponents(res.mask.astype(np.uint8))
    assert n - 1 == 3, "both shoes and the ring are kept"
    assert not res.mask[90, 330], "the ring's hole is open"
    assert res.score > 0.8 and "saliency map >= 0.5" in res.reason


def test_a_map_with_nothing_above_the_threshold_is_an_empty_mask_with_score_0():
    res = mask_from_saliency(np.full((60, 60, 3), 200, np.uint8), np.full((16, 16), 0.2, np.float32),
                             SaliencySettings(input_size=16))
    assert not res.mask.any() and res.score == 0.0 and "no pixel" in res.reason


def test_specks_are_dropped_but_a_small_real_part_is_kept():
    m = np.zeros((100, 100), bool)
    m[10:50, 10:50] = True      # 1600 px
    m[70:80, 70:80] = True      # 100 px: an earring next to its pair
    m[90, 5] = True             # a speck
    kept = keep_sizeable_parts(m)
    assert kept[75, 75] and kept[20, 20] and not kept[90, 5]
