"""The learned masker end to end (resources/masker.py, method "onnx" and "auto"): a tiny ONNX
model built here from a torch network (no weights ship) is loaded into onnxruntime, fed batches,
and its maps become masks; a model of the wrong shape fails naming its file."""
import warnings

import cv2
import numpy as np
import pytest
import torch

from bggen_assets.core.masking import MaskRejected
from resources.masker import MaskerConfigError, MaskerResource

SIZE = 192   # the tiny model's input size (real ones: 320 or 1024)


class FarFromWhite(torch.nn.Module):
    """A hand-weighted salient-object network for products on a white studio background: the
    saliency of a pixel is how far its colour is from white (1×1 conv), smoothed (3×3 conv),
    squashed (sigmoid). Input normalised with mean = std = 0.5, so white is (1, 1, 1)."""

    def __init__(self, out_channels: int = 1):
        super().__init__()
        self.distance = torch.nn.Conv2d(3, out_channels, 1)
        self.smooth = torch.nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False,
                                      groups=out_channels)
        with torch.no_grad():
            # 10 × (1 - r - g - b): > 0 where the colour is far from white (a mean level below
            # ~170 of 255), halfway between this file's products (about -0.9) and white (3)
            self.distance.weight.fill_(-10.0)
            self.distance.bias.fill_(10.0)
            self.smooth.weight.fill_(1.0 / 9.0)

    def forward(self, x):
        return torch.sigmoid(self.smooth(self.distance(x)))


def _export(module, path, *, size=SIZE, in_channels=3, dynamic_batch=True):
    kw = dict(dynamic_axes={"input": {0: "n"}, "map": {0: "n"}}) if dynamic_batch else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(1, in_channels, size, size), str(path),
                          input_names=["input"], output_names=["map"], dynamo=False, **kw)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {
        "good": _export(FarFromWhite(), d / "far_from_white.onnx"),
        "batch1": _export(FarFromWhite(), d / "far_from_white_b1.onnx", dynamic_batch=False),
        "two_channel_out": _export(FarFromWhite(out_channels=2), d / "two_maps.onnx"),
        "grey_in": _export(torch.nn.Conv2d(1, 1, 1), d / "grey_in.onnx", in_channels=1),
    }


def _masker(path, **kw):
    kw = {"method": "onnx", "onnx_input_size": SIZE, "onnx_mean": [0.5, 0.5, 0.5],
          "onnx_std": [0.5, 0.5, 0.5], **kw}
    return MaskerResource(onnx_model=path, **kw)


def _scene(kind: str, h=480, w=640):
    """A product on a near-white background, drawn without anti-aliasing (the mask is exact)."""
    truth = np.zeros((h, w), np.uint8)
    if kind == "pair":        # a pair of shoes: two parts
        cv2.ellipse(truth, (220, 260), (90, 45), 10, 0, 360, 1, -1)
        cv2.ellipse(truth, (430, 260), (90, 45), -10, 0, 360, 1, -1)
        colour = (170, 40, 45)
    elif kind == "ring":      # a ring: its inside shows the background
        cv2.circle(truth, (320, 240), 130, 1, -1)
        cv2.circle(truth, (320, 240), 80, 0, -1)
        colour = (150, 110, 30)
    else:                     # a bottle
        cv2.rectangle(truth, (270, 120), (370, 400), 1, -1)
        colour = (30, 80, 160)
    truth = truth.astype(bool)
    rng = np.random.default_rng(len(kind))
    img = np.clip(rng.normal(247, 1.5, (h, w, 3)), 0, 255).astype(np.uint8)
    img[truth] = colour
    return img, truth


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def test_the_tiny_model_masks_a_batch_end_to_end(models):
    scenes = [_scene(k) for k in ("pair", "ring", "bottle")]
    masker = _masker(models["good"], onnx_batch_size=2)
    results = masker.mask_batch([im for im, _ in scenes])
    for (im, truth), res in zip(scenes, results):
        assert not isinstance(res, MaskRejected), res
        assert res.method == "onnx" and res.mask.shape == truth.shape
        assert _iou(res.mask, truth) > 0.97, _iou(res.mask, truth)
        assert res.reason.startswith("onnx: saliency map >= 0.5") and res.score > 0.9
    pair, ring = results[0].mask, results[1].mask
    assert cv2.connectedComponents(pair.astype(np.uint8))[0] - 1 == 2, "both shoes are kept"
    assert not ring[240, 320], "the ring's hole is open"
    # batched (2 per call) and one image at a time agree
    single = masker.mask(scenes[2][0])
    assert np.array_equal(single.mask, results[2].mask)


def test_a_model_with_a_fixed_batch_of_one_is_run_image_by_image(models):
    scenes = [_scene(k) for k in ("pair", "bottle", "ring")]
    masker = _masker(models["batch1"], onnx_batch_size=8)
    maps = masker.saliency([im for im, _ in scenes])
    assert maps.shape == (3, SIZE, SIZE) and maps.min() >= 0.0 and maps.max() <= 1.0
    good = _masker(models["good"]).saliency([im for im, _ in scenes])
    np.testing.assert_allclose(maps, good, atol=1e-5)


@pytest.mark.parametrize("which, words", [
    ("two_channel_out", r"two_maps\.onnx: output 0 must be a N×1×S×S saliency map"),
    ("grey_in", r"grey_in\.onnx: input must be N×3×S×S"),
])
def test_a_model_of_the_wrong_shape_fails_naming_its_file(models, which, words):
    with pytest.raises(MaskerConfigError, match=words):
        _masker(models[which]).mask(_scene("bottle")[0])


def test_an_input_size_the_model_does_not_take_and_a_missing_file_fail_clearly(models, tmp_path):
    with pytest.raises(MaskerConfigError, match=r"far_from_white\.onnx: input is .*input_size is 256"):
        _masker(models["good"], onnx_input_size=256).mask(_scene("bottle")[0])
    with pytest.raises(MaskerConfigError, match="onnx_model file not found"):
        _masker(str(tmp_path / "nope.onnx")).mask(_scene("bottle")[0])
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(MaskerConfigError, match=r"junk\.onnx.* could not be loaded by onnxruntime"):
        _masker(str(not_onnx)).mask(_scene("bottle")[0])
    with pytest.raises(MaskerConfigError, match="needs onnx_model"):
        MaskerResource(method="onnx").mask(_scene("bottle")[0])
    with pytest.raises(MaskerConfigError, match="activation"):
        _masker(models["good"], onnx_activation="softmax").mask(_scene("bottle")[0])


def test_auto_uses_the_learned_map_only_where_the_classical_score_is_low_and_says_so(models):
    img, truth = _scene("pair")
    classical = MaskerResource().mask(img)
    trusting = _masker(models["good"], method="auto", auto_min_score=0.0).mask(img)
    assert trusting.method == "classical" and np.array_equal(trusting.mask, classical.mask)
    assert trusting.reason.startswith(f"auto: classical score {classical.score:.2f} >= 0")
    doubting = _masker(models["good"], method="auto", auto_min_score=1.0).mask(img)
    assert doubting.method == "onnx" and _iou(doubting.mask, truth) > 0.97
    assert doubting.reason.startswith(f"auto: classical score {classical.score:.2f} < 1; onnx: saliency map")
    # mixed batch: the low-score images alone go to the model
    ring = _scene("ring")[0]
    scores = [classical.score, MaskerResource().mask(ring).score]
    assert scores[0] != scores[1]
    mid = _masker(models["good"], method="auto", auto_min_score=sum(scores) / 2)
    res = mid.mask_batch([img, ring])
    assert [r.method for r in res] == [("classical" if s > sum(scores) / 2 else "onnx") for s in scores]


def test_the_masker_identity_names_the_model_content_and_its_settings(models, tmp_path):
    a = _masker(models["good"]).identity()
    assert a.startswith("onnx-s1-") and "-s192-" in a
    assert _masker(models["good"], onnx_threshold=0.4).identity() != a
    assert _masker(models["two_channel_out"]).identity() != a    # other weights, other masks
    auto = _masker(models["good"], method="auto").identity()
    assert auto.startswith("auto0.6-onnx-s1-") and "+classical-" in auto
