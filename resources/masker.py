"""``MaskerResource``: product masking as a Dagster resource.

``method="classical"`` (default): the alpha channel when the image has one, else the classical
border-background masker of :mod:`bggen_assets.core.masking`.

``method="yolo"``: an ultralytics YOLO segmentation model loaded once from ``yolo_weights``
(a local file; nothing is ever downloaded), applied by :func:`bggen_assets.core.yolo_masking.yolo_mask`
(the product instance chosen, its boundary refined; the classical masker when YOLO finds
nothing usable, and the result says so).

``method="onnx"``: a learned salient-object model (IS-Net / DIS, U²-Net, BiRefNet exported to
ONNX: 1×3×S×S normalised image in, 1×1×S×S saliency map out) loaded once from ``onnx_model``
into an onnxruntime session (CUDA's execution provider when onnxruntime has it, else CPU); the
pre/post-processing is :mod:`bggen_assets.core.saliency_masking`. ``mask_batch`` runs several
images per inference call when the model's batch dimension allows it.

``method="auto"``: the classical masker, and the learned one for the images where the classical
score is below ``auto_min_score``; the result's ``reason`` starts with which was used and why.

``min_confidence``: masks scored below it are held back (docs/masking.md, "Confidence and
hold-back"); it is not part of the identity.

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
from bggen_assets.core.masking import MaskRejected, MaskResult, alpha_mask, classical_mask, validate_mask
from bggen_assets.core.saliency_masking import (
    SALIENCY_VERSION,
    SaliencyModelError,
    SaliencySettings,
    check_model_io,
    mask_from_saliency,
    preprocess_batch,
    saliency_maps,
)
from bggen_assets.core.yolo_masking import YOLO_VERSION, yolo_mask

__all__ = ["MaskerResource", "MaskerConfigError", "CLASSICAL_VERSION"]

# Bump when the algorithm changes in a way that changes masks: stored masks are re-made.
CLASSICAL_VERSION = "c12"  # c12: a product faint in tint all over (a white sneaker on a tinted gradient) found against the backdrop round it, not the frame, a smooth light part on a backdrop textured all over (grass, brick) is product, a blank patch of a printed page is not a brighter part, a shadowed brick cell (or printed patch) is neither promoted for its mortar lines nor a light part; c11: light parts of a tint of their own (chromaticity, which a shadow keeps) are product; c10: a light part merged with its drop shadow leaves the shadow out where it keeps the backdrop's chroma; c9: light parts found from the highest contrast down, a mostly crisp outline may have gaps where the product meets its own shadow; c8: a structured backdrop (brick, print) is not product: its texture raises the tolerance, its shadowed cells are not enclosed parts; c7: light parts brighter than the backdrop (a white upper on off-white); c6: holes open in the product's shadow, light-on-light parts; c5: every part kept (pairs); c4: edge pixels unmixed


def masking_code_version() -> str:
    """The masking algorithms' versions (not the configured weights: those are data): the
    product_masks asset's code_version, so that the UI shows its partitions stale when a new
    version is deployed; remask_sensor re-runs them (sensors/remask.py)."""
    return f"{CLASSICAL_VERSION}-{YOLO_VERSION}-{SALIENCY_VERSION}"


MASKING_CODE_VERSION = masking_code_version()


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
    # learned salient-object masker (method "onnx" or "auto")
    onnx_model: Optional[str] = None
    onnx_input_size: int = 1024
    onnx_mean: list[float] = [0.485, 0.456, 0.406]
    onnx_std: list[float] = [0.229, 0.224, 0.225]
    onnx_output_index: int = 0
    onnx_activation: str = "none"
    onnx_threshold: float = 0.5
    onnx_batch_size: int = 4
    auto_min_score: float = 0.6
    # hold-back: a mask whose confidence (MaskResult.score) is below this is kept out of
    # generation and serving and listed in product_masks' mask_confidence check. Not part of
    # identity(): it decides what is used, not what a mask is (changing it re-masks nothing).
    # 0.5 holds back 4 of the labelled set's 12 masks below IoU 0.85 and none of its 336 good ones
    # (benchmarks/mask_confidence.py; docs/masking.md).
    min_confidence: float = 0.5

    _model: Any = PrivateAttr(default=None)
    _weights_sha: Optional[str] = PrivateAttr(default=None)
    _session: Any = PrivateAttr(default=None)
    _session_batches: bool = PrivateAttr(default=False)
    _onnx_sha: Optional[str] = PrivateAttr(default=None)

    # ------------------------------------------------------------------ lifecycle
    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._check_config()
        if self.method == "yolo":
            self._load_yolo()
        if self.method in ("onnx", "auto"):
            self._load_onnx()

    def _check_config(self) -> None:
        if self.method not in ("classical", "yolo", "onnx", "auto"):
            raise MaskerConfigError(
                f"masker method must be 'classical', 'yolo', 'onnx' or 'auto', got {self.method!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise MaskerConfigError(f"masker confidence must be in [0, 1], got {self.confidence}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise MaskerConfigError(f"masker min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.imgsz < 32:
            raise MaskerConfigError(f"masker imgsz must be >= 32, got {self.imgsz}")
        if self.max_pixels <= 0:
            raise MaskerConfigError(f"masker max_pixels must be positive, got {self.max_pixels}")
        if self.method == "yolo" and not self.yolo_weights:
            raise MaskerConfigError("masker method 'yolo' needs yolo_weights (a local .pt file)")
        if self.method in ("onnx", "auto"):
            if not self.onnx_model:
                raise MaskerConfigError(f"masker method {self.method!r} needs onnx_model (a local .onnx file)")
            if self.onnx_batch_size < 1:
                raise MaskerConfigError(f"masker onnx_batch_size must be >= 1, got {self.onnx_batch_size}")
            if not 0.0 <= self.auto_min_score <= 1.0:
                raise MaskerConfigError(f"masker auto_min_score must be in [0, 1], got {self.auto_min_score}")
            self._saliency_settings()

    def _saliency_settings(self) -> SaliencySettings:
        try:
            return SaliencySettings(
                input_size=self.onnx_input_size, mean=tuple(self.onnx_mean), std=tuple(self.onnx_std),
                output_index=self.onnx_output_index, activation=self.onnx_activation,
                threshold=self.onnx_threshold)
        except ValueError as exc:
            raise MaskerConfigError(str(exc)) from exc

    def _load_onnx(self) -> None:
        if self._session is not None:
            return
        path = Path(os.path.expanduser(str(self.onnx_model)))
        if not path.is_file():
            raise MaskerConfigError(f"onnx_model file not found: {str(path)!r} (a local .onnx file is "
                                    "required; nothing is downloaded)")
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            raise MaskerConfigError(f"onnx_model {str(path)!r} could not be loaded by onnxruntime: "
                                    f"{type(exc).__name__}: {exc}") from exc
        try:
            batches = check_model_io(str(path), [i.shape for i in session.get_inputs()],
                                     [o.shape for o in session.get_outputs()], self._saliency_settings())
        except SaliencyModelError as exc:
            raise MaskerConfigError(str(exc)) from exc
        self._session, self._session_batches = session, batches
        self._onnx_sha = _file_sha256(path)

    def saliency(self, images: list[np.ndarray]) -> np.ndarray:
        """The learned model's N×S×S saliency maps in [0, 1], ``onnx_batch_size`` images per call
        (one when the model's batch dimension is fixed at 1)."""
        self._load_onnx()
        st = self._saliency_settings()
        name = self._session.get_inputs()[0].name
        step = self.onnx_batch_size if self._session_batches else 1
        maps = []
        for i in range(0, len(images), step):
            chunk = images[i:i + step]
            outs = self._session.run(None, {name: preprocess_batch(chunk, st)})
            try:
                maps.append(saliency_maps(outs[st.output_index], len(chunk), st.activation))
            except SaliencyModelError as exc:
                raise SaliencyModelError(f"{self.onnx_model}: {exc}") from None
        s = st.input_size
        return np.concatenate(maps) if maps else np.zeros((0, s, s), np.float32)

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
        if self.method in ("onnx", "auto"):
            if self._onnx_sha is None:
                path = Path(os.path.expanduser(str(self.onnx_model)))
                if not path.is_file():
                    raise MaskerConfigError(f"onnx_model file not found: {str(path)!r}")
                self._onnx_sha = _file_sha256(path)
            mean = ",".join(f"{v:g}" for v in self.onnx_mean)
            std = ",".join(f"{v:g}" for v in self.onnx_std)
            onnx = (f"onnx-{SALIENCY_VERSION}-{self._onnx_sha[:12]}-s{self.onnx_input_size}-m{mean}-d{std}"
                    f"-o{self.onnx_output_index}{self.onnx_activation[0]}-t{self.onnx_threshold:g}")
            if self.method == "onnx":
                return onnx + abt
            return f"auto{self.auto_min_score:g}-{onnx}+classical-{CLASSICAL_VERSION}{abt}"
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
        res = self.mask_batch([image])[0]
        if isinstance(res, MaskRejected):
            raise res
        return res

    def mask_batch(self, images: list[np.ndarray]) -> list[MaskResult | MaskRejected]:
        """Mask several images (the learned model runs on them in batches); per image the
        validated :class:`MaskResult` or the :class:`MaskRejected` saying why it is unusable."""
        self._check_config()
        if self.method == "yolo":
            self._load_yolo()
            results = [yolo_mask(im, self._model, confidence=self.confidence, classes=self.classes,
                                 imgsz=self.imgsz, device=self.device, max_borders=self._max_borders)
                       for im in images]
        elif self.method == "onnx":
            results = self._learned(images, [None] * len(images))
        elif self.method == "auto":
            results = [classical_mask(im) for im in images]
            todo = [i for i, r in enumerate(results)
                    if r.method == "classical" and r.score < self.auto_min_score]
            learned = self._learned([images[i] for i in todo],
                                    [f"auto: classical score {results[i].score:.2f} < {self.auto_min_score:g}"
                                     for i in todo])
            for i, r in zip(todo, learned):
                results[i] = r
            results = [r if k in todo or r.method != "classical" else _with_reason(
                r, f"auto: classical score {r.score:.2f} >= {self.auto_min_score:g}; {r.reason}")
                for k, r in enumerate(results)]
        else:
            results = [classical_mask(im) for im in images]
        out: list[MaskResult | MaskRejected] = []
        for res in results:
            try:
                validate_mask(res.mask, max_borders_touched=self._max_borders)
                out.append(res)
            except MaskRejected as exc:
                out.append(MaskRejected(f"{exc.reason} [{res.method}: {res.reason}]", result=res))
        return out

    def _learned(self, images: list[np.ndarray], whys: list[Optional[str]]) -> list[MaskResult]:
        """Learned masks; an image with a real alpha channel is masked by it without the model."""
        results: list[Optional[MaskResult]] = [alpha_mask(im) if im.ndim == 3 and im.shape[2] == 4 else None
                                               for im in images]
        run = [i for i, r in enumerate(results) if r is None]
        maps = self.saliency([images[i] for i in run]) if run else []
        st = self._saliency_settings()
        for i, sal in zip(run, maps):
            res = mask_from_saliency(images[i], sal, st)
            results[i] = res if whys[i] is None else _with_reason(res, f"{whys[i]}; {res.reason}")
        return results  # type: ignore[return-value]

    @property
    def _max_borders(self) -> int:
        return 4 if self.allow_border_touch else 2


def _with_reason(res: MaskResult, reason: str) -> MaskResult:
    return MaskResult(mask=res.mask, bbox=res.bbox, method=res.method, score=res.score, reason=reason)
