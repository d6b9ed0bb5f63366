"""Background generation with Stable Diffusion + ControlNet-canny (diffusers).

``DiffusionGenerator`` implements the ``BackgroundGenerator`` contract of
``bggen_assets.core.generation``: for each ``GenerationJob`` (the positioned product on its bucket
canvas, its mask, the theme prompt, a seed) it returns the raw generated RGB image at the canvas
size, *before* the original product is cut back on top.

How a job is generated:

1. the canvas is resized to the model's *generation size* (:func:`generation_size`: the pixel
   budget, multiples of 8, aspect ratio capped);
2. the control image is the Canny map of the positioned product at that size
   (:func:`bggen_assets.core.edges.control_edges`, contour reinforced from the mask);
3. the prompt runs with classifier-free guidance against the negative prompt; the initial noise
   comes from a ``torch.Generator`` seeded with ``job.seed`` alone, one per job, so a job's image
   does not depend on the jobs it is batched with; prompt embeddings are computed per distinct
   prompt, not per batch, for the same reason;
4. with ``use_inpaint`` the product is also conditioned on directly: the ControlNet *inpainting*
   pipeline regenerates only the background region (the inverse of the mask) and keeps the
   product's latents, which reduces the product "growing" into the background;
5. the output is resized back to the canvas size.

Jobs are grouped by generation size and run ``batch_size`` at a time. On CUDA the pipeline runs in
float16 with PyTorch's SDPA attention, channels-last weights, fused QKV projections and (by
default) ``torch.compile`` of the UNet and ControlNet; on a CPU, float32.

Nothing is downloaded at run time unless ``local_files_only=False`` is set: models are a local
diffusers directory or a hub id already in the local Hugging Face cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import cv2
import numpy as np

from bggen_assets.core.edges import control_edges

if TYPE_CHECKING:  # pragma: no cover
    from bggen_assets.core.generation import GenerationJob

__all__ = [
    "DiffusionConfig",
    "DiffusionConfigError",
    "ModelNotFoundError",
    "WrongModelTypeError",
    "DeviceUnavailableError",
    "ModelLoadError",
    "DiffusionGenerator",
    "generation_size",
    "job_control_image",
    "load_pipeline",
    "model_identity",
    "SCHEDULERS",
]

DEFAULT_NEGATIVE_PROMPT = (
    "text, watermark, logo, letters, signature, low quality, blurry, jpeg artifacts, distorted, "
    "deformed, duplicate product, extra objects, people, hands"
)

SCHEDULERS = ("dpmpp", "unipc", "euler_a", "ddim")

# Pipelines whose components are those of SD 1.x/2.x (one CLIP text encoder, a 2D conditional UNet).
_SD_PIPELINE_CLASSES = {
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline",
}
_SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# --------------------------------------------------------------------------------------- errors
class DiffusionConfigError(ValueError):
    """The diffusion configuration cannot work (bad field, missing model, wrong model, device)."""


class ModelNotFoundError(DiffusionConfigError):
    """A model directory does not exist, or a hub id is not in the local cache."""


class WrongModelTypeError(DiffusionConfigError):
    """A model location holds something else than what the field expects."""


class DeviceUnavailableError(DiffusionConfigError):
    """The requested device (e.g. ``cuda``) is not available on this machine."""


class ModelLoadError(DiffusionConfigError):
    """diffusers/transformers failed to load a model that passed the checks."""


# --------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of the diffusion background generator.

    Model fields take a local diffusers directory or a Hugging Face hub id. With
    ``local_files_only`` (the default) a hub id must already be in the local HF cache.
    ``None`` for ``channels_last``/``compile``/``fuse_qkv`` means "on for CUDA, off for CPU".
    """

    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    controlnet_model: str = "lllyasviel/sd-controlnet-canny"
    base_revision: str | None = None
    controlnet_revision: str | None = None
    local_files_only: bool = True
    cache_dir: str | None = None  # Hugging Face cache for hub ids (None: HF_HUB_CACHE / default)
    device: str = "auto"  # "auto" | "cuda" | "cuda:N" | "cpu"
    dtype: str = "auto"  # "auto" (float16 on CUDA, float32 on CPU) | "float16" | "float32"
    steps: int = 20
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    scheduler: str = "dpmpp"  # "dpmpp" | "unipc" | "euler_a" | "ddim"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # used when a job's negative prompt is empty
    pixel_budget: int = 512 * 512
    max_aspect: float = 2.0
    use_inpaint: bool = False
    inpaint_strength: float = 1.0
    edge_low: int = 100
    edge_high: int = 200
    contour_thickness: int = 2
    reinforce_contour: bool = True
    batch_size: int = 4
    channels_last: bool | None = None
    compile: bool | None = None
    compile_mode: str | None = None  # torch.compile mode; None = torch's default
    compile_dynamic: bool = False  # False: one static graph per (batch, size) shape, no dynamic shapes
    fuse_qkv: bool | None = None
    safety_checker: bool = False
    prompt_cache_size: int = 256

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DiffusionConfigError:
            return DiffusionConfigError(f"DiffusionConfig.{name}={getattr(self, name)!r}: {why}")

        if not self.base_model:
            raise bad("base_model", "must name a diffusers directory or a hub id")
        if not self.controlnet_model:
            raise bad("controlnet_model", "must name a ControlNetModel directory or a hub id")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise bad("device", "expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.dtype not in ("auto", "float16", "float32", "bfloat16"):
            raise bad("dtype", "expected 'auto', 'float16', 'bfloat16' or 'float32'")
        if self.scheduler not in SCHEDULERS:
            raise bad("scheduler", f"expected one of {SCHEDULERS}")
        if int(self.steps) < 1:
            raise bad("steps", "must be >= 1")
        if self.guidance_scale < 0:
            raise bad("guidance_scale", "must be >= 0")
        if self.pixel_budget < 64 * 64:
            raise bad("pixel_budget", "must be at least 64*64")
        if self.max_aspect < 1:
            raise bad("max_aspect", "must be >= 1")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if not (0 < self.inpaint_strength <= 1):
            raise bad("inpaint_strength", "must be in (0, 1]")
        if not (0 <= self.edge_low <= self.edge_high):
            raise bad("edge_low", f"need 0 <= edge_low <= edge_high ({self.edge_high})")
        if self.contour_thickness < 0:
            raise bad("contour_thickness", "must be >= 0")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "DiffusionConfig":
        """Build from a plain mapping (YAML/Dagster config); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise DiffusionConfigError(f"unknown DiffusionConfig field(s): {', '.join(unknown)}")
        return cls(**values)


# ------------------------------------------------------------------------------ generation size
def generation_size(
    canvas_w: int, canvas_h: int, pixel_budget: int = 512 * 512, max_aspect: float = 2.0,
    multiple: int = 8,
) -> tuple[int, int]:
    """The size ``(gw, gh)`` a canvas is generated at: both multiples of ``multiple`` (8), area
    about ``pixel_budget``, aspect ratio ``gw/gh`` that of the canvas capped to
    ``[1/max_aspect, max_aspect]``. A canvas more elongated than the cap is generated at the cap
    and stretched back to the canvas afterwards."""
    if canvas_w <= 0 or canvas_h <= 0:
        raise ValueError(f"canvas size must be positive, got {canvas_w}x{canvas_h}")
    if pixel_budget < multiple * multiple:
        raise ValueError(f"pixel_budget {pixel_budget} is below one {multiple}x{multiple} tile")
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    a = min(max(canvas_w / canvas_h, 1.0 / max_aspect), max_aspect)
    gh = math.sqrt(pixel_budget / a)
    gw = gh * a
    gw_i = max(multiple, int(round(gw / multiple)) * multiple)
    gh_i = max(multiple, int(round(gh / multiple)) * multiple)
    # rounding must not push the aspect ratio past the cap
    while gw_i / gh_i > max_aspect + 1e-9 and gw_i > multiple:
        gw_i -= multiple
    while gh_i / gw_i > max_aspect + 1e-9 and gh_i > multiple:
        gh_i -= multiple
    return gw_i, gh_i


# ----------------------------------------------------------------------- model location & identity
@dataclass(frozen=True)
class _ModelRef:
    field: str  # the config field, for messages
    name: str  # as configured
    location: str  # local directory or hub id, as handed to from_pretrained
    is_local: bool
    revision: str | None
    identity: str
    config: dict = field(hash=False, compare=False)  # model_index.json or config.json


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") != 1
        or os.path.exists(name)
    )


_HASH_CACHE: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def _loaded_files(folder: Path) -> list[Path]:
    """The files diffusers/transformers load from one model folder: configs, tokenizer files and
    the default weights (``*.safetensors`` if any, else ``*.bin``; no ``.fp16``-style variants)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin") and p.name.count(".") == 1]
    if any(p.suffix == ".safetensors" for p in weights):
        weights = [p for p in weights if p.suffix == ".safetensors"]
    other = [p for p in files if p.suffix not in (".safetensors", ".bin", ".ckpt", ".pt", ".onnx",
                                                   ".msgpack", ".h5", ".pb")]
    return other + weights


def _model_files(root: Path, kind: str, config: dict) -> list[Path]:
    if kind == "pipeline":
        files = [root / "model_index.json"]
        for comp, spec in sorted(config.items()):
            if not comp.startswith("_") and isinstance(spec, list) and spec and spec[0]:
                files += _loaded_files(root / comp)
    else:
        files = _loaded_files(root)
    return sorted(set(files)) or sorted(p for p in root.rglob("*") if p.is_file())


def _dir_content_hash(root: Path, files: list[Path]) -> str:
    """sha256 over (relative path, sha256 of content) of ``files`` under ``root``. Computed once
    per process for a given listing of (path, size, mtime)."""
    listing = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), listing)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    h = hashlib.sha256()
    for p, (rel, _, _) in zip(files, listing):
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                fh.update(chunk)
        h.update(rel.encode() + b"\0" + fh.hexdigest().encode() + b"\n")
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
    return digest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WrongModelTypeError(f"{path} is not a readable JSON config: {e}") from e


def _hub_file(repo: str, filename: str, revision: str | None, local_files_only: bool,
              field_name: str, cache_dir: str | None = None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only))
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, offline mode...
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        hint = (
            " (offline: local_files_only/HF_HUB_OFFLINE; download it beforehand with "
            f"`huggingface-cli download {repo}` or point {field_name} at a local directory)"
            if offline else ""
        )
        raise ModelNotFoundError(
            f"{field_name}={repo!r}: no such local directory, and as a hub id its {filename} is not "
            f"in the local cache nor downloadable{hint}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _resolve(field_name: str, name: str, revision: str | None, local_files_only: bool,
             kind: str, cache_dir: str | None = None) -> _ModelRef:
    """Locate a model and check it is of ``kind`` ("pipeline" or "controlnet") without loading
    weights. Raises ModelNotFoundError / WrongModelTypeError."""
    cfg_file = "model_index.json" if kind == "pipeline" else "config.json"
    other = "config.json" if kind == "pipeline" else "model_index.json"
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        root = p
        if not (root / cfg_file).is_file():
            what = ""
            if (root / other).is_file():
                cls = _read_json(root / other).get("_class_name", "?")
                what = f" (it holds a {cls} {other})"
            need = "a diffusers pipeline directory (model_index.json)" if kind == "pipeline" \
                else "a ControlNetModel directory (config.json)"
            raise WrongModelTypeError(f"{field_name}={name!r} is not {need}{what}")
        config = _read_json(root / cfg_file)
        location, is_local = str(root), True
    elif _looks_like_path(name):
        raise ModelNotFoundError(f"{field_name}={name!r}: directory does not exist")
    else:
        try:
            cfg_path = _hub_file(name, cfg_file, revision, local_files_only, field_name, cache_dir)
        except ModelNotFoundError as missing:
            try:  # is it there, but of the other kind?
                other_path = _hub_file(name, other, revision, local_files_only, field_name, cache_dir)
            except ModelNotFoundError:
                raise missing from None
            cls = _read_json(other_path).get("_class_name", "?")
            need = "a diffusers pipeline (model_index.json)" if kind == "pipeline" \
                else "a ControlNetModel (config.json)"
            raise WrongModelTypeError(
                f"{field_name}={name!r} is not {need}: the repository holds a {cls} {other}"
            ) from None
        config = _read_json(cfg_path)
        root = cfg_path.parent
        location, is_local = name, False

    cls = config.get("_class_name")
    if kind == "pipeline":
        if cls not in _SD_PIPELINE_CLASSES:
            raise WrongModelTypeError(
                f"{field_name}={name!r} holds a {cls} pipeline; a Stable Diffusion 1.x/2.x pipeline "
                f"is needed (one of {sorted(_SD_PIPELINE_CLASSES)})"
            )
        missing = [c for c in _SD_COMPONENTS if not (config.get(c) or [None])[0]]
        if missing:
            raise WrongModelTypeError(f"{field_name}={name!r}: model_index.json lacks {missing}")
    elif cls != "ControlNetModel":
        raise WrongModelTypeError(
            f"{field_name}={name!r} holds a {cls}; a ControlNetModel (e.g. "
            "lllyasviel/sd-controlnet-canny) is needed"
        )

    if is_local:
        identity = "local-sha256:" + _dir_content_hash(root, _model_files(root, kind, config))
    else:
        # hub cache layout: .../models--org--name/snapshots/<commit>/<file>
        commit = root.name if re.fullmatch(r"[0-9a-f]{40}", root.name) else (revision or "unknown")
        identity = f"{name}@{commit}"
    return _ModelRef(field_name, name, location, is_local, revision, identity, config)


def model_identity(name: str, revision: str | None = None, *, local_files_only: bool = True,
                   kind: str = "pipeline", cache_dir: str | None = None) -> str:
    """Identity of a model: ``hub_id@commit`` for a hub model (the cached snapshot's commit), or
    ``local-sha256:<hash of the paths and contents of the files a load reads>`` for a local
    directory (configs, tokenizer files, default weights; not single-file checkpoints or
    fp16/ema variants lying beside them)."""
    return _resolve(kind, name, revision, local_files_only, kind, cache_dir).identity


def _resolve_both(cfg: "DiffusionConfig") -> tuple[_ModelRef, _ModelRef]:
    return (
        _resolve("base_model", cfg.base_model, cfg.base_revision, cfg.local_files_only, "pipeline",
                 cfg.cache_dir),
        _resolve("controlnet_model", cfg.controlnet_model, cfg.controlnet_revision,
                 cfg.local_files_only, "controlnet", cfg.cache_dir),
    )


def _unet_cross_attention_dim(ref: _ModelRef, local_files_only: bool, cache_dir: str | None) -> Any:
    if ref.is_local:
        path = Path(ref.location) / "unet" / "config.json"
    else:
        path = _hub_file(ref.location, "unet/config.json", ref.revision, local_files_only, ref.field,
                         cache_dir)
    return _read_json(path).get("cross_attention_dim") if path.is_file() else None


# ------------------------------------------------------------------------------- device & loading
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"DiffusionConfig.device={device!r} but CUDA is not available here "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use 'auto' or 'cpu'"
            )
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"DiffusionConfig.device={device!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def make_scheduler(name: str, base_config: Any):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    cls = {
        "dpmpp": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
        "ddim": DDIMScheduler,
    }[name]
    return cls.from_config(base_config)


def _dtype_kwarg() -> str:
    """diffusers >= 0.36 takes ``dtype`` (``torch_dtype`` is deprecated); older ones ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _auto(flag: bool | None, device: str) -> bool:
    return device.startswith("cuda") if flag is None else bool(flag)


def load_pipeline(cfg: DiffusionConfig, log: Callable[[str], None] | None = None):
    """Check the configured models and device, then load the diffusers pipeline
    (``StableDiffusionControlNetPipeline``, or ``StableDiffusionControlNetInpaintPipeline`` with
    ``use_inpaint``) on the device, with the configured scheduler and speed-ups.

    Raises (all ``DiffusionConfigError``): ``DeviceUnavailableError`` for CUDA without CUDA,
    ``ModelNotFoundError`` for a missing directory or uncached hub id, ``WrongModelTypeError``
    for a directory of the wrong kind, ``ModelLoadError`` when diffusers fails anyway."""
    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetInpaintPipeline,
        StableDiffusionControlNetPipeline,
    )

    log = log or (lambda _m: None)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    base, cn = _resolve_both(cfg)
    unet_dim = _unet_cross_attention_dim(base, cfg.local_files_only, cfg.cache_dir)
    cn_dim = cn.config.get("cross_attention_dim")
    if unet_dim is not None and cn_dim is not None and unet_dim != cn_dim:
        raise WrongModelTypeError(
            f"controlnet_model={cfg.controlnet_model!r} (cross_attention_dim={cn_dim}) does not fit "
            f"base_model={cfg.base_model!r} (cross_attention_dim={unet_dim}): a ControlNet trained "
            "for another Stable Diffusion version"
        )

    t0 = time.perf_counter()
    common: dict[str, Any] = {_dtype_kwarg(): dtype, "local_files_only": cfg.local_files_only,
                              "cache_dir": cfg.cache_dir}
    if importlib.util.find_spec("accelerate") is None:
        common["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus the warning
    try:
        controlnet = ControlNetModel.from_pretrained(cn.location, revision=cn.revision, **common)
    except Exception as e:
        raise ModelLoadError(f"controlnet_model={cfg.controlnet_model!r} failed to load: {e}") from e
    cls = StableDiffusionControlNetInpaintPipeline if cfg.use_inpaint else StableDiffusionControlNetPipeline
    extra: dict[str, Any] = {}
    if not cfg.safety_checker:
        extra.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(base.location, controlnet=controlnet, revision=base.revision,
                                   **common, **extra)
    except Exception as e:
        raise ModelLoadError(f"base_model={cfg.base_model!r} failed to load as {cls.__name__}: {e}") from e
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)

    applied = []
    if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        applied.append("sdpa")  # diffusers' default AttnProcessor2_0 on torch 2
    if _auto(cfg.fuse_qkv, device):
        pipe.fuse_qkv_projections(unet=True, vae=True)
        applied.append("fused-qkv")
    if _auto(cfg.channels_last, device):
        for m in (pipe.unet, pipe.controlnet, pipe.vae):
            m.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if _auto(cfg.compile, device):
        kw: dict[str, Any] = {"dynamic": cfg.compile_dynamic}
        if cfg.compile_mode:
            kw["mode"] = cfg.compile_mode
        # static graphs: one per (batch size, generation size); allow enough of them
        dyn_cfg = torch._dynamo.config
        name = "recompile_limit" if hasattr(dyn_cfg, "recompile_limit") else "cache_size_limit"
        setattr(dyn_cfg, name, max(getattr(dyn_cfg, name), 64))
        pipe.unet = torch.compile(pipe.unet, **kw)
        pipe.controlnet = torch.compile(pipe.controlnet, **kw)
        applied.append("torch.compile" + (f"({cfg.compile_mode})" if cfg.compile_mode else ""))
    log(
        f"diffusion: loaded {cls.__name__} base={base.identity} controlnet={cn.identity} on "
        f"{device}/{str(dtype).replace('torch.', '')} scheduler={cfg.scheduler} "
        f"[{', '.join(applied)}] in {time.perf_counter() - t0:.1f}s"
    )
    pipe._bggen_refs = (base, cn)  # identities, for DiffusionGenerator.identity()
    return pipe


# ------------------------------------------------------------------------------------- generator
def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w * h < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _resize_mask(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    if mask.shape == (h, w):
        return mask.astype(bool)
    m = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA)
    return m >= 128


def job_control_image(cfg: DiffusionConfig, job: Any, gw: int, gh: int) -> np.ndarray:
    """The Canny control map of a job at generation size ``gw×gh``: canvas and mask resized,
    then :func:`~bggen_assets.core.edges.control_edges` with the config's edge settings."""
    canvas = _resize(np.asarray(job.canvas_rgb), gw, gh)
    mask = _resize_mask(np.asarray(job.product_mask), gw, gh)
    return control_edges(canvas, mask, low=cfg.edge_low, high=cfg.edge_high,
                         contour_thickness=cfg.contour_thickness,
                         reinforce_contour=cfg.reinforce_contour)


class DiffusionGenerator:
    """Stable Diffusion + ControlNet background generator (the ``BackgroundGenerator`` contract).

    The pipeline is loaded on first use (or by :meth:`load`, which is where configuration errors
    surface). ``log`` receives progress lines."""

    def __init__(self, config: DiffusionConfig | None = None, *,
                 log: Callable[[str], None] | None = None, pipeline: Any = None) -> None:
        self.config = config or DiffusionConfig()
        self._log = log or (lambda _m: None)
        self._pipe = pipeline
        self._identity: str | None = None
        self._prompt_cache: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    # -- contract
    def identity(self) -> str:
        """``diffusion-v1-<hash>``: a hash over the models' identities (hub id + commit, or a
        content hash of a local directory) and every setting that changes the pixels (steps,
        guidance, ControlNet scale, scheduler, pipeline kind, generation size rule, edge settings,
        default negative prompt). Device, dtype, batch size and the speed-ups are left out: they
        change pixels only within floating-point tolerance."""
        if self._identity is None:
            self._identity = "diffusion-v1-" + hashlib.sha256(
                json.dumps(self.identity_details(), sort_keys=True).encode()
            ).hexdigest()[:32]
        return self._identity

    def identity_details(self) -> dict[str, Any]:
        c = self.config
        refs = getattr(self._pipe, "_bggen_refs", None)
        if refs is None:
            refs = _resolve_both(c)
        d: dict[str, Any] = {
            "base_model": refs[0].identity,
            "controlnet_model": refs[1].identity,
            "pipeline": "controlnet-inpaint" if c.use_inpaint else "controlnet",
            "steps": c.steps,
            "guidance_scale": c.guidance_scale,
            "controlnet_conditioning_scale": c.controlnet_conditioning_scale,
            "scheduler": c.scheduler,
            "pixel_budget": c.pixel_budget,
            "max_aspect": c.max_aspect,
            "edges": [c.edge_low, c.edge_high, c.contour_thickness, c.reinforce_contour],
            "default_negative_prompt": c.negative_prompt,
        }
        if c.use_inpaint:
            d["inpaint_strength"] = c.inpaint_strength
        return d

    def generate(self, jobs: Sequence["GenerationJob"]) -> list[np.ndarray]:
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            self._check_job(i, job)
        if not jobs:
            return []
        pipe = self.load()
        c = self.config
        groups: dict[tuple[int, int], list[int]] = {}
        for i, job in enumerate(jobs):
            h, w = job.canvas_rgb.shape[:2]
            groups.setdefault(generation_size(w, h, c.pixel_budget, c.max_aspect), []).append(i)
        chunks = [
            (size, idxs[k:k + c.batch_size])
            for size, idxs in groups.items()
            for k in range(0, len(idxs), c.batch_size)
        ]
        out: list[np.ndarray | None] = [None] * len(jobs)
        t_all = time.perf_counter()
        for n, ((gw, gh), idxs) in enumerate(chunks, 1):
            t0 = time.perf_counter()
            with self._lock:
                images = self._run_batch(pipe, [jobs[i] for i in idxs], gw, gh)
            for i, img in zip(idxs, images):
                h, w = jobs[i].canvas_rgb.shape[:2]
                out[i] = _resize(img, w, h)
            self._log(
                f"diffusion: batch {n}/{len(chunks)}: {len(idxs)} image(s) at {gw}x{gh} in "
                f"{time.perf_counter() - t0:.2f}s"
            )
        self._log(f"diffusion: {len(jobs)} image(s) in {len(chunks)} batch(es), "
                  f"{time.perf_counter() - t_all:.2f}s")
        return out  # type: ignore[return-value]

    # -- helpers
    def load(self):
        """Load the pipeline now (idempotent); configuration errors are raised here."""
        if self._pipe is None:
            self._pipe = load_pipeline(self.config, self._log)
        return self._pipe

    @staticmethod
    def _check_job(i: int, job: Any) -> None:
        img = np.asarray(job.canvas_rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"job {i}: canvas_rgb must be H×W×3 uint8, got {img.shape} {img.dtype}")
        if np.asarray(job.product_mask).shape != img.shape[:2]:
            raise ValueError(
                f"job {i}: product_mask shape {np.asarray(job.product_mask).shape} != canvas {img.shape[:2]}"
            )

    def _embeddings(self, pipe, prompt: str, negative: str):
        """Prompt embeddings per distinct (prompt, negative prompt), computed alone (not in a
        batch) so that they are the same whatever the batch, and cached (themes repeat)."""
        import torch

        key = (prompt, negative)
        hit = self._prompt_cache.get(key)
        if hit is not None:
            self._prompt_cache.move_to_end(key)
            return hit
        with torch.inference_mode():
            pos, neg = pipe.encode_prompt(
                prompt, pipe.device, 1, self.config.guidance_scale > 1, negative_prompt=negative
            )
        self._prompt_cache[key] = (pos, neg)
        while len(self._prompt_cache) > self.config.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        return pos, neg

    def control_image(self, job: Any, gw: int, gh: int) -> np.ndarray:
        """The Canny control map of a job at generation size ``gw×gh``."""
        return job_control_image(self.config, job, gw, gh)

    def _run_batch(self, pipe, jobs: list[Any], gw: int, gh: int) -> list[np.ndarray]:
        import torch
        from PIL import Image

        c = self.config
        cfg_on = c.guidance_scale > 1
        pos, neg = [], []
        for job in jobs:
            p, n = self._embeddings(pipe, job.prompt, job.negative_prompt or c.negative_prompt)
            pos.append(p)
            neg.append(n)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=torch.cat(pos),
            negative_prompt_embeds=torch.cat(neg) if cfg_on else None,
            height=gh,
            width=gw,
            num_inference_steps=c.steps,
            guidance_scale=c.guidance_scale,
            controlnet_conditioning_scale=c.controlnet_conditioning_scale,
            # CPU generators: the same seed gives the same noise on every device
            generator=[torch.Generator("cpu").manual_seed(int(j.seed) % (1 << 64)) for j in jobs],
            output_type="np",
        )
        controls = [Image.fromarray(self.control_image(j, gw, gh)) for j in jobs]
        if c.use_inpaint:
            kwargs["image"] = [Image.fromarray(_resize(np.asarray(j.canvas_rgb), gw, gh)) for j in jobs]
            kwargs["mask_image"] = [
                Image.fromarray((~_resize_mask(np.asarray(j.product_mask), gw, gh)).astype(np.uint8) * 255)
                for j in jobs
            ]
            kwargs["control_image"] = controls
            kwargs["strength"] = c.inpaint_strength
        else:
            kwargs["image"] = controls
        with torch.inference_mode():
            result = pipe(**kwargs)
        imgs = np.asarray(result.images, dtype=np.float32)
        return [np.clip(np.rint(im * 255.0), 0, 255).astype(np.uint8) for im in imgs]
