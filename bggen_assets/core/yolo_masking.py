"""Product masks from a YOLO segmentation model (ultralytics): running it, choosing the product
among its instances, refining that instance's boundary.

:func:`yolo_mask` masks an image with a loaded model (anything with ultralytics' ``predict``;
loading it from a weights file is ``resources.masker``'s job):

1. an image with a real alpha channel is masked by its alpha, as the classical masker does;
2. the model runs on a copy whose long side is at most ``YOLO_WORK_SIDE`` px;
3. :func:`instances_from_result` turns ultralytics' result into arrays (:class:`Instances`);
4. :func:`select_instance` picks the product: the best confidence × centrality × area among the
   instances that would pass the mask checks;
5. its largest component is refined with GrabCut, holes filled, and brought back to the image
   size. When the model finds nothing usable, the classical masker runs instead and the result's
   ``reason`` says why (``"yolo found no instance above conf 0.25; classical fallback: ..."``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

from bggen_assets.core.masking import (
    MaskResult,
    alpha_mask,
    borders_touched,
    classical_mask,
    fill_holes,
    largest_component,
    mask_bbox,
    refine_with_grabcut,
)

__all__ = [
    "YOLO_VERSION",
    "YOLO_WORK_SIDE",
    "Instances",
    "instances_from_result",
    "select_instance",
    "mask_from_instances",
    "yolo_mask",
]

# Bump when this module changes in a way that changes masks: stored masks are re-made.
YOLO_VERSION = "y1"
YOLO_WORK_SIDE = 1024   # YOLO + refinement run on a copy whose long side is at most this


@dataclass(frozen=True, eq=False)
class Instances:
    """A segmentation model's instances on one image, at the size it was run on."""

    masks: np.ndarray  # bool N×H×W
    confidences: np.ndarray  # float N
    class_ids: np.ndarray  # int N
    class_names: Mapping[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)


def instances_from_result(result: Any, width: int, height: int) -> Instances:
    """An ultralytics ``Results`` (of a segmentation model run with ``retina_masks``) as arrays,
    masks at ``width×height`` (resized, nearest neighbour, when the model returned another size)."""
    if result.masks is None or len(result.masks.data) == 0:
        return Instances(np.zeros((0, height, width), bool), np.zeros(0, np.float32),
                         np.zeros(0, int), dict(result.names or {}))
    masks = result.masks.data.cpu().numpy() > 0.5
    if masks.shape[1:] != (height, width):
        masks = np.stack([cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                          for m in masks]).astype(bool)
    names = result.names if isinstance(result.names, Mapping) else dict(enumerate(result.names or ()))
    return Instances(masks, result.boxes.conf.cpu().numpy(), result.boxes.cls.cpu().numpy().astype(int),
                     dict(names))


def select_instance(masks: np.ndarray, confs: np.ndarray, *, max_borders: int = 2,
                    min_fraction: float = 0.01, max_fraction: float = 0.95
                    ) -> tuple[Optional[int], float, str]:
    """Pick the product among instance masks: best confidence × centrality × area, among
    those that would pass the mask checks.  Returns (index or None, its score, a note)."""
    n, h, w = masks.shape
    cy0, cx0 = (h - 1) / 2.0, (w - 1) / 2.0
    half_diag = float(np.hypot(cy0 + 0.5, cx0 + 0.5))
    best, best_score, rejected = None, -1.0, []
    for i in range(n):
        m = masks[i]
        area = float(m.mean())
        if area < min_fraction or area > max_fraction:
            rejected.append(f"#{i + 1} covers {area:.1%}")
            continue
        if borders_touched(m) > max_borders:
            rejected.append(f"#{i + 1} touches {borders_touched(m)} borders")
            continue
        ys, xs = np.nonzero(m)
        dist = float(np.hypot(ys.mean() - cy0, xs.mean() - cx0)) / half_diag
        centrality = max(0.0, 1.0 - dist)
        score = float(confs[i]) * centrality * area
        if score > best_score:
            best, best_score = i, score
    return best, max(best_score, 0.0), "; ".join(rejected) or "none"


def _classical_fallback(image: np.ndarray, why: str) -> MaskResult:
    res = classical_mask(image)
    return MaskResult(mask=res.mask, bbox=res.bbox, method=res.method, score=res.score,
                      reason=f"{why}; classical fallback: {res.reason}")


def mask_from_instances(image: np.ndarray, work_rgb: np.ndarray, instances: Instances, *,
                        confidence: float, max_borders: int = 2) -> MaskResult:
    """The product's mask at ``image``'s size from the instances found on ``work_rgb`` (the RGB
    copy the model ran on, possibly downscaled); the classical masker when none is usable.
    ``confidence``: the threshold the model ran with, for the reason text."""
    n = len(instances)
    if n == 0:
        return _classical_fallback(image, f"yolo found no instance above conf {confidence:g}")
    pick, sel_score, details = select_instance(instances.masks, instances.confidences,
                                               max_borders=max_borders)
    if pick is None:
        return _classical_fallback(image, f"yolo found {n} instance(s) above conf {confidence:g}, "
                                          f"none usable ({details})")
    m = largest_component(instances.masks[pick])
    gc = refine_with_grabcut(work_rgb, m)
    note = "grabcut refined"
    if gc is not None:
        refined = (m & ~(gc < 0.05)) | (gc > 0.95)
        if refined.any():
            m = fill_holes(largest_component(refined))
        else:
            note = "grabcut emptied the mask; yolo mask kept"
    else:
        note = "no grabcut (mask too small or too large)"
    H, W = image.shape[:2]
    if m.shape != (H, W):
        m = cv2.resize(m.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
    cls = int(instances.class_ids[pick])
    conf = float(instances.confidences[pick])
    reason = (f"yolo instance {pick + 1} of {n}: class {cls} ({instances.class_names.get(cls, str(cls))}), "
              f"conf {conf:.2f}, selection score {sel_score:.3f} (conf x centrality x area); {note}")
    return MaskResult(mask=m, bbox=mask_bbox(m), method="yolo", score=conf, reason=reason)


def yolo_mask(image: np.ndarray, model: Any, *, confidence: float = 0.25,
              classes: Optional[Sequence[int]] = None, imgsz: int = 640, device: str = "cpu",
              max_borders: int = 2) -> MaskResult:
    """Mask the product of ``image`` (H×W×3/4 uint8, or H×W grey) with the segmentation
    ``model`` (an ultralytics ``YOLO``); see the module docstring."""
    a = alpha_mask(image) if image.ndim == 3 and image.shape[2] == 4 else None
    if a is not None:
        return a
    rgb = np.ascontiguousarray(image[:, :, :3]) if image.ndim == 3 else np.repeat(image[:, :, None], 3, 2)
    H, W = rgb.shape[:2]
    s = min(1.0, YOLO_WORK_SIDE / max(H, W))
    ww, wh = max(1, round(W * s)), max(1, round(H * s))
    work = rgb if s == 1.0 else cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA)
    results = model.predict(
        np.ascontiguousarray(work[:, :, ::-1]),   # ultralytics takes numpy images as BGR
        conf=confidence, classes=None if classes is None else list(classes), imgsz=imgsz,
        device=device, retina_masks=True, verbose=False, max_det=50)
    return mask_from_instances(image, work, instances_from_result(results[0], ww, wh),
                               confidence=confidence, max_borders=max_borders)
