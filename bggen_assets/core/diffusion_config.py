"""Settings of the diffusion background generator and the errors a bad setting raises.

Its own module so that model loading (:mod:`bggen_assets.core.diffusion_models`) and the
generator (:mod:`bggen_assets.core.diffusion`, which re-exports everything here) both use it
without importing each other.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "SCHEDULERS",
    "DiffusionConfig",
    "DiffusionConfigError",
    "ModelNotFoundError",
    "WrongModelTypeError",
    "DeviceUnavailableError",
    "ModelLoadError",
]

DEFAULT_NEGATIVE_PROMPT = (
    "text, watermark, logo, letters, signature, low quality, blurry, jpeg artifacts, distorted, "
    "deformed, duplicate product, extra objects, people, hands"
)

# lcm: for an LCM-LoRA (4-8 steps, guidance ~1); tcd: for Hyper-SD / TCD LoRAs (1-8 steps)
SCHEDULERS = ("dpmpp", "unipc", "euler_a", "ddim", "lcm", "tcd")


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
    # with use_inpaint: an inpainting ControlNet (conditioned on the canvas with the background
    # masked out) instead of controlnet_model; None keeps controlnet_model (canny) there too
    inpaint_controlnet_model: str | None = None
    inpaint_controlnet_revision: str | None = None
    # few-step generation: LoRA weights (a local file or directory, or a hub id) loaded into the
    # base model and fused, e.g. latent-consistency/lcm-lora-sdv1-5 with scheduler "lcm", steps 4-8,
    # guidance_scale 1-2; lora_weight_name picks the file where the repository holds several
    lora: str | None = None
    lora_weight_name: str | None = None
    lora_revision: str | None = None
    lora_scale: float = 1.0
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
    shape_multiple: int = 64  # generation sizes snap to a few shapes, multiples of this (8: no snapping)
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
        if self.shape_multiple < 8 or self.shape_multiple % 8:
            raise bad("shape_multiple", "must be a multiple of 8 (the latent scale), at least 8")
        if self.lora is not None and not self.lora:
            raise bad("lora", "must name LoRA weights (a file, a directory or a hub id), or be None")
        if self.inpaint_controlnet_model is not None and not self.inpaint_controlnet_model:
            raise bad("inpaint_controlnet_model", "must name a ControlNetModel directory or hub id, or be None")
        if not (0 < self.lora_scale <= 4):
            raise bad("lora_scale", "must be in (0, 4]")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if not (0 < self.inpaint_strength <= 1):
            raise bad("inpaint_strength", "must be in (0, 1]")
        if not (0 <= self.edge_low <= self.edge_high):
            raise bad("edge_low", f"need 0 <= edge_low <= edge_high ({self.edge_high})")
        if self.contour_thickness < 0:
            raise bad("contour_thickness", "must be >= 0")

    @property
    def active_controlnet(self) -> tuple[str, str, str | None]:
        """(field name, model, revision) of the ControlNet the pipeline loads."""
        if self.use_inpaint and self.inpaint_controlnet_model:
            return "inpaint_controlnet_model", self.inpaint_controlnet_model, self.inpaint_controlnet_revision
        return "controlnet_model", self.controlnet_model, self.controlnet_revision

    @property
    def inpaint_conditioned(self) -> bool:
        """The ControlNet is an inpainting one: its control image is the masked canvas, not edges."""
        return self.use_inpaint and bool(self.inpaint_controlnet_model)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "DiffusionConfig":
        """Build from a plain mapping (YAML/Dagster config); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise DiffusionConfigError(f"unknown DiffusionConfig field(s): {', '.join(unknown)}")
        return cls(**values)
