"""``MaskerResource``: product masking as a Dagster resource.

``method="classical"`` (default): the alpha channel when the image has one, else the classical
border-background masker of :mod:`bggen_assets.core.masking`.

``method="yolo"``: an ultralytics YOLO segmentation model loaded once from ``yolo_weights``
(a local file; nothing is ever downloaded), applied by :func:`bggen_assets.core.yolo_masking.yolo_mask`
(the product instance chosen, its boundary refined; the classical masker when YOLO finds
nothing usable, and the result says so).

``identity()`` names the masker (method, weights content hash, parameters, algorithm
version) so that masks stored under it are recomputed when the masker changes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from bggen_assets.core.image_io import decode_image
from bggen_assets.core.masking import MaskRejected, MaskResult, classical_mask, validate_mask
from bggen_assets.core.yolo_masking import YOLO_VERSION, yolo_mask

__all__ = ["MaskerResource", "MaskerConfigError", "CLASSICAL_VERSION"]

# Bump when the algorithm changes in a way that changes masks: stored masks are re-made.
CLASSICAL_VERSION = "c4"  # c4: edge pixels unmixed; GrabCut keeps what a crisp outline closes off


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
            self._load_yolo()
            res = yolo_mask(image, self._model, confidence=self.confidence, classes=self.classes,
                            imgsz=self.imgsz, device=self.device, max_borders=self._max_borders)
        else:
            res = classical_mask(image)
        try:
            validate_mask(res.mask, max_borders_touched=self._max_borders)
        except MaskRejected as exc:
            raise MaskRejected(f"{exc.reason} [{res.method}: {res.reason}]", result=res) from None
        return res

    @property
    def _max_borders(self) -> int:
        return 4 if self.allow_border_touch else 2
