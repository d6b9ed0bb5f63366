"""Product masks from a learned salient-object model (background removal: IS-Net / DIS, U²-Net,
BiRefNet in ONNX form): the pre- and post-processing around one inference call.

Running the model is ``resources.masker``'s job (an onnxruntime session); everything here is
pure numpy/OpenCV so it is tested without one:

1. :func:`check_model_io` checks the model's declared input/output shapes against the
   configuration (1×3×S×S in, 1×1×S×S out, batch and spatial dims may be symbolic);
2. :func:`preprocess_batch` turns RGB images into the N×3×S×S float32 tensor the model takes
   (resize to S×S, /255, (x - mean) / std per channel);
3. :func:`saliency_maps` turns the model's output into N maps in [0, 1] (optionally after a
   sigmoid or a min-max stretch: exports differ in which they need);
4. :func:`mask_from_saliency` thresholds one map at the image's working size and cleans it up
   as the classical masker does (specks dropped, gaps closed, every sizeable part kept, holes
   filled unless they look like the map's background, GrabCut at the boundary), then brings
   the mask to the image size with the sub-pixel boundary of the upsampled map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from bggen_assets.core.masking import MaskResult, alpha_mask, fill_holes, mask_bbox, refine_with_grabcut

__all__ = [
    "SALIENCY_VERSION",
    "SaliencySettings",
    "SaliencyModelError",
    "check_model_io",
    "preprocess_batch",
    "saliency_maps",
    "mask_from_saliency",
    "keep_sizeable_parts",
]

# Bump when this module changes in a way that changes masks: stored masks are re-made.
SALIENCY_VERSION = "s1"
SALIENCY_WORK_SIDE = 512   # the map is thresholded and cleaned up at most at this long side
ACTIVATIONS = ("none", "sigmoid", "minmax")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SaliencyModelError(ValueError):
    """The model's inputs/outputs do not fit the configured 1×3×S×S → 1×1×S×S contract."""


@dataclass(frozen=True)
class SaliencySettings:
    """How to feed a salient-object model and read its map.

    Defaults fit BiRefNet's and U²-Net's exports (ImageNet mean/std); IS-Net / DIS wants
    ``mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0)``; U²-Net's ``input_size`` is 320.
    """

    input_size: int = 1024
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    output_index: int = 0          # which of the model's outputs is the final map
    activation: str = "none"       # "sigmoid" for exports that return logits; "minmax" stretches
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ValueError(f"saliency input_size must be >= 8, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"saliency mean/std need 3 values each, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"saliency std must be positive, got {self.std}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"saliency activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"saliency threshold must be in (0, 1), got {self.threshold}")
        if self.output_index < 0:
            raise ValueError(f"saliency output_index must be >= 0, got {self.output_index}")


def _fixed(d: Any) -> Optional[int]:
    """A declared dimension as an int, None when symbolic (a name, or unknown)."""
    return int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None


def check_model_io(model_name: str, input_shapes: Sequence[Sequence[Any]],
                   output_shapes: Sequence[Sequence[Any]], settings: SaliencySettings) -> bool:
    """Raise :class:`SaliencyModelError` (naming ``model_name``) unless the model takes one
    N×3×S×S image and its output ``settings.output_index`` is N×1×S'×S' (or N×S'×S').
    Returns whether the model accepts a batch larger than one (a symbolic or >1 batch dim)."""
    if len(input_shapes) != 1:
        raise SaliencyModelError(f"{model_name}: a salient-object model takes one image input, "
                                 f"this one has {len(input_shapes)} inputs")
    ins = list(input_shapes[0])
    if len(ins) != 4 or _fixed(ins[1]) not in (3, None):
        raise SaliencyModelError(f"{model_name}: input must be N×3×S×S (normalised RGB), got {ins}")
    for d in ins[2:]:
        if _fixed(d) is not None and _fixed(d) != settings.input_size:
            raise SaliencyModelError(f"{model_name}: input is {ins}, but input_size is "
                                     f"{settings.input_size}: set input_size to the model's")
    if settings.output_index >= len(output_shapes):
        raise SaliencyModelError(f"{model_name}: output_index {settings.output_index} but the "
                                 f"model has {len(output_shapes)} outputs")
    out = list(output_shapes[settings.output_index])
    if not (len(out) == 4 and _fixed(out[1]) in (1, None)) and len(out) != 3:
        raise SaliencyModelError(f"{model_name}: output {settings.output_index} must be a "
                                 f"N×1×S×S saliency map, got {out}")
    batch = _fixed(ins[0])
    return batch is None or batch > 1


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def preprocess_batch(images: Sequence[np.ndarray], settings: SaliencySettings) -> np.ndarray:
    """N RGB(A)/grey uint8 images → float32 N×3×S×S, resized to S×S and normalised."""
    s = settings.input_size
    mean = np.asarray(settings.mean, np.float32)
    std = np.asarray(settings.std, np.float32)
    out = np.empty((len(images), 3, s, s), np.float32)
    for i, im in enumerate(images):
        rgb = _rgb(im)
        h, w = rgb.shape[:2]
        interp = cv2.INTER_AREA if max(h, w) > s else cv2.INTER_LINEAR
        x = cv2.resize(rgb, (s, s), interpolation=interp).astype(np.float32) / 255.0
        out[i] = ((x - mean) / std).transpose(2, 0, 1)
    return out


def saliency_maps(output: np.ndarray, n: int, activation: str = "none") -> np.ndarray:
    """The model's output (N×1×S×S or N×S×S) as float32 N×S×S maps in [0, 1]."""
    a = np.asarray(output, dtype=np.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] != n:
        raise SaliencyModelError(f"the model returned shape {tuple(np.shape(output))} for a batch "
                                 f"of {n}: expected {n}×1×S×S")
    if activation == "sigmoid":
        a = 1.0 / (1.0 + np.exp(-a))
    elif activation == "minmax":
        lo = a.min(axis=(1, 2), keepdims=True)
        hi = a.max(axis=(1, 2), keepdims=True)
        a = (a - lo) / np.maximum(hi - lo, 1e-6)
    return np.clip(a, 0.0, 1.0)


def keep_sizeable_parts(mask: np.ndarray, *, min_rel: float = 0.05, min_area: int = 8) -> np.ndarray:
    """Every 8-connected part at least ``min_rel`` of the largest one (and ``min_area`` px):
    a pair of shoes is two parts; specks are not product."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    area = stats[:, cv2.CC_STAT_AREA]
    keep = area >= max(min_area, min_rel * area[1:].max())
    keep[0] = False
    return keep[labels]


def mask_from_saliency(image: np.ndarray, saliency: np.ndarray, settings: SaliencySettings, *,
                       refine: bool = True) -> MaskResult:
    """The product's mask at ``image``'s size from one S×S saliency map in [0, 1]."""
    a = alpha_mask(image) if image.ndim == 3 and image.shape[2] == 4 else None
    if a is not None:
        return a
    rgb = _rgb(image)
    H, W = rgb.shape[:2]
    s = min(1.0, SALIENCY_WORK_SIDE / max(H, W))
    ww, wh = max(1, round(W * s)), max(1, round(H * s))
    work = rgb if s == 1.0 else cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA)
    sal = cv2.resize(saliency.astype(np.float32), (ww, wh), interpolation=cv2.INTER_LINEAR)
    thr = settings.threshold
    m = sal >= thr
    if not m.any():
        empty = np.zeros((H, W), bool)
        return MaskResult(mask=empty, bbox=(0, 0, 0, 0), method="onnx", score=0.0,
                          reason=f"onnx: no pixel of the saliency map reaches {thr:g}")
    r = max(1, round(min(ww, wh) / 256))
    m = keep_sizeable_parts(m, min_area=max(8, int(2e-4 * ww * wh)))
    m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_CLOSE,
                         cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 3, 2 * r + 3))).astype(bool)
    # a hole the model calls background (a ring's inside) stays open; the holes of a
    # thresholded map are otherwise noise in the product's interior
    evidence = sal / thr
    m = fill_holes(m, evidence=evidence, keep_open_max_evidence=0.5)
    note = "no grabcut (mask too small or too large)"
    if refine:
        gc = refine_with_grabcut(work, m)
        if gc is not None:
            # as in the classical path, GrabCut flips only pixels it is sure of, and here only
            # where the map is unsure: a confident map is the model's answer
            unsure = np.abs(sal - thr) < 0.25
            refined = (m & ~(unsure & (gc < 0.05))) | (unsure & (gc > 0.95))
            if refined.any():
                flipped = int((refined != m).sum())
                m = fill_holes(keep_sizeable_parts(refined), evidence=evidence, keep_open_max_evidence=0.5)
                note = f"grabcut flipped {flipped} unsure px"
            else:
                note = "grabcut emptied the mask; thresholded map kept"
    if m.shape != (H, W):
        # sub-pixel boundary: along the upscaled mask's edge, where the upsampled map crosses
        # the threshold (the map is finer than the working copy)
        up = cv2.resize(m.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
        sal_full = cv2.resize(saliency.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
        edge = (up > 0.0) & (up < 1.0)
        m = np.where(edge, sal_full >= thr, up >= 0.5)
    inside = float(sal[_resize_bool(m, ww, wh)].mean()) if m.any() else 0.0
    outside_px = ~_resize_bool(m, ww, wh)
    outside = float(sal[outside_px].mean()) if outside_px.any() else 1.0
    score = float(np.clip(inside - outside, 0.0, 1.0))
    reason = (f"onnx: saliency map >= {thr:g} (mean {inside:.2f} inside, {outside:.2f} outside); {note}")
    return MaskResult(mask=m, bbox=mask_bbox(m), method="onnx", score=score, reason=reason)


def _resize_bool(m: np.ndarray, w: int, h: int) -> np.ndarray:
    if m.shape == (h, w):
        return m
    return cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
