"""``MaskerResource``: product masking as a Dagster resource.

``method="classical"`` (default): the alpha channel when the image has one, else the classical
border-background masker of :mod:`bggen_assets.core.masking`.

``method="yolo"``: an ultralytics YOLO segmentation model loaded once from ``yolo_weights``
(a local file; nothing is ever downloaded).  The product instance is the one with the best
confidence × centrality × area among those that pass the mask checks; its boundary is refined
with GrabCut; when YOLO finds nothing usable, the classical masker runs and the result says so
(``method="classical"``, ``reason="yolo found no instance above conf 0.25; classical fallback: ..."``).

``identity()`` names the masker (method, weights content hash, parameters, algorithm
version) so that masks stored under it are recomputed when the masker changes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from bggen_assets.core.image_io import decode_image
from bggen_assets.core.masking import (
    MaskRejected,
    MaskResult,
    alpha_mask,
    borders_touched,
    classical_mask,
    fill_holes,
    largest_component,
    mask_bbox,
    refine_with_grabcut,
    validate_mask,
)

__all__ = ["MaskerResource", "MaskerConfigError", "CLASSICAL_VERSION", "YOLO_VERSION"]

# Bump when the algorithm changes in a way that changes masks: stored masks are re-made.
CLASSICAL_VERSION = "c4"  # c4: edge pixels unmixed; GrabCut keeps what a crisp outline closes off
YOLO_VERSION = "y1"
YOLO_WORK_SIDE = 1024   # YOLO + refinement run on a copy whose long side is at most this


class MaskerConfigError(ValueError):
    """The masker's configuration cannot work (unknown method, missing or wrong weights)."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MaskerResource(ConfigurableResource):
    """Masks products; see the module docstring."""

    method: str = "classical"
    yolo_weights: Optional[str] = None
    confidence: float = 0.25
    classes: Optional[list[int]] = None
    imgsz: int = 640
    device: str = "cpu"
    max_pixels: int = 40_000_000
    allow_border_touch: bool = False

    _model: Any = PrivateAttr(default=None)
    _weights_sha: Optional[str] = PrivateAttr(default=None)

    # ------------------------------------------------------------------ lifecycle
    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._check_config()
        if self.method == "yolo":
            self._load_yolo()

    def _check_config(self) -> None:
        if self.method not in ("classical", "yolo"):
            raise MaskerConfigError(f"masker method must be 'classical' or 'yolo', got {self.method!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise MaskerConfigError(f"masker confidence must be in [0, 1], got {self.confidence}")
        if self.imgsz < 32:
            raise MaskerConfigError(f"masker imgsz must be >= 32, got {self.imgsz}")
        if self.max_pixels <= 0:
            raise MaskerConfigError(f"masker max_pixels must be positive, got {self.max_pixels}")
        if self.method == "yolo" and not self.yolo_weights:
            raise MaskerConfigError("masker method 'yolo' needs yolo_weights (a local .pt file)")

    def _load_yolo(self) -> None:
        if self._model is not None:
            return
        path = Path(os.path.expanduser(str(self.yolo_weights)))
        # A bare name like "yolo11n-seg.pt" that is not a local file would make ultralytics
        # try a download: refuse before it gets the chance.
        if not path.is_file():
            raise MaskerConfigError(
                f"yolo_weights file not found: {str(path)!r} (a local weights file is required; "
                "nothing is downloaded)")
        if path.suffix.lower() in (".yaml", ".yml"):
            raise MaskerConfigError(
                f"yolo_weights must be a trained weights file (.pt), not a model definition: {str(path)!r}")
        os.environ.setdefault("YOLO_OFFLINE", "1")
        try:
            from ultralytics import YOLO
        except ImportError as exc:  # pragma: no cover - ultralytics is a dependency
            raise MaskerConfigError(f"ultralytics is not installed: {exc}") from exc
        try:
            model = YOLO(str(path))
        except Exception as exc:
            raise MaskerConfigError(
                f"yolo_weights {str(path)!r} could not be loaded as an ultralytics model: "
                f"{type(exc).__name__}: {exc}") from exc
        task = getattr(model, "task", None)
        if task != "segment":
            raise MaskerConfigError(
                f"yolo_weights {str(path)!r} is not a segmentation model (task={task!r}); "
                "use a *-seg model")
        self._model = model
        self._weights_sha = _file_sha256(path)

    # ------------------------------------------------------------------ public API
    def identity(self) -> str:
        """Short stable name of the masker (method, weights content hash, parameters)."""
        self._check_config()
        abt = "-abt" if self.allow_border_touch else ""
        if self.method == "classical":
            return f"classical-{CLASSICAL_VERSION}{abt}"
        if self._weights_sha is None:
            path = Path(os.path.expanduser(str(self.yolo_weights)))
            if not path.is_file():
                raise MaskerConfigError(f"yolo_weights file not found: {str(path)!r}")
            self._weights_sha = _file_sha256(path)
        cls = "all" if not self.classes else ",".join(str(int(c)) for c in sorted(self.classes))
        return (f"yolo-{YOLO_VERSION}-{self._weights_sha[:12]}-c{self.confidence:g}-k{cls}"
                f"-i{self.imgsz}+classical-{CLASSICAL_VERSION}{abt}")

    def decode(self, data: bytes) -> np.ndarray:
        """Decode image bytes (raises ``ImageDecodeError``)."""
        return decode_image(data, max_pixels=self.max_pixels)

    def mask(self, image: np.ndarray) -> MaskResult:
        """Mask the product; raises :class:`MaskRejected` (reason attached) when unusable."""
        self._check_config()
        if self.method == "yolo":
            res = self._mask_yolo(image)
        else:
            res = classical_mask(image)
        try:
            validate_mask(res.mask, max_borders_touched=self._max_borders)
        except MaskRejected as exc:
            raise MaskRejected(f"{exc.reason} [{res.method}: {res.reason}]", result=res) from None
        return res

    # ------------------------------------------------------------------ yolo
    @property
    def _max_borders(self) -> int:
        return 4 if self.allow_border_touch else 2

    def _mask_yolo(self, image: np.ndarray) -> MaskResult:
        a = alpha_mask(image) if image.ndim == 3 and image.shape[2] == 4 else None
        if a is not None:
            return a
        self._load_yolo()
        rgb = np.ascontiguousarray(image[:, :, :3]) if image.ndim == 3 else np.repeat(image[:, :, None], 3, 2)
        H, W = rgb.shape[:2]
        s = min(1.0, YOLO_WORK_SIDE / max(H, W))
        ww, wh = max(1, round(W * s)), max(1, round(H * s))
        work = rgb if s == 1.0 else cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA)

        results = self._model.predict(
            np.ascontiguousarray(work[:, :, ::-1]),   # ultralytics takes numpy images as BGR
            conf=self.confidence, classes=self.classes, imgsz=self.imgsz, device=self.device,
            retina_masks=True, verbose=False, max_det=50)
        r = results[0]
        n = 0 if r.masks is None else len(r.masks.data)
        if n == 0:
            return self._fallback(image, f"yolo found no instance above conf {self.confidence:g}")

        masks = r.masks.data.cpu().numpy() > 0.5
        confs = r.boxes.conf.cpu().numpy()
        clss = r.boxes.cls.cpu().numpy().astype(int)
        if masks.shape[1:] != (wh, ww):
            masks = np.stack([cv2.resize(m.astype(np.uint8), (ww, wh), interpolation=cv2.INTER_NEAREST)
                              for m in masks]).astype(bool)
        pick, sel_score, details = select_instance(masks, confs, max_borders=self._max_borders)
        if pick is None:
            return self._fallback(image, f"yolo found {n} instance(s) above conf {self.confidence:g}, "
                                         f"none usable ({details})")
        m = largest_component(masks[pick])
        gc = refine_with_grabcut(work, m)
        note = "grabcut refined"
        if gc is not None:
            refined = (m & ~(gc < 0.05)) | (gc > 0.95)
            if refined.any():
                m = fill_holes(largest_component(refined))
            else:
                note = "grabcut emptied the mask; yolo mask kept"
        else:
            note = "no grabcut (mask too small or too large)"
        if (ww, wh) != (W, H):
            m = cv2.resize(m.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
        name = r.names.get(int(clss[pick]), str(clss[pick])) if isinstance(r.names, dict) else str(clss[pick])
        reason = (f"yolo instance {pick + 1} of {n}: class {int(clss[pick])} ({name}), conf {confs[pick]:.2f}, "
                  f"selection score {sel_score:.3f} (conf x centrality x area); {note}")
        return MaskResult(mask=m, bbox=mask_bbox(m), method="yolo", score=float(confs[pick]), reason=reason)

    def _fallback(self, image: np.ndarray, why: str) -> MaskResult:
        res = classical_mask(image)
        return MaskResult(mask=res.mask, bbox=res.bbox, method=res.method, score=res.score,
                          reason=f"{why}; classical fallback: {res.reason}")


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
