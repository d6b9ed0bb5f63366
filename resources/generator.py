"""The background generator resource: `template` (CPU, the embedded default) or `diffusion`."""

from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from bggen_assets.core.generation import BackgroundGenerator
from bggen_assets.core.template_bg import TemplateGenerator

GENERATOR_KINDS = ("template", "diffusion")


class GeneratorResource(ConfigurableResource):
    kind: str = "template"
    batch_size: int = 4
    # diffusion settings (ignored by the template generator)
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    controlnet_model: str = "lllyasviel/sd-controlnet-canny"
    local_files_only: bool = False
    device: str = "auto"
    dtype: str = "auto"
    steps: int = 20
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    scheduler: str = "dpmpp"
    pixel_budget: int = 512 * 512
    max_aspect: float = 2.0
    use_inpaint: bool = False
    contour_thickness: int = 2
    reinforce_contour: bool = True
    channels_last: Optional[bool] = None  # None: on for CUDA, off for CPU
    compile: Optional[bool] = None  # None: torch.compile on CUDA, off on CPU
    # quality gates on the raw generation (diffusion): regenerate with the next seed past these
    max_object_expansion: float = 0.10
    max_edge_leakage: float = 0.25
    max_attempts: int = 3

    _generator = PrivateAttr(default=None)

    def setup_for_execution(self, context: Optional[InitResourceContext] = None) -> None:
        # Load models here so a bad config fails before any partition work starts.
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"generator kind must be one of {GENERATOR_KINDS}, got {self.kind!r}")
        if self.kind == "template":
            self._generator = TemplateGenerator()
        else:
            from bggen_assets.core.diffusion import DiffusionGenerator

            log = context.log.info if context is not None and context.log is not None else None
            generator = DiffusionGenerator(self.diffusion_config(), log=log)
            generator.load()  # missing model dir, wrong model type, CUDA without CUDA: fail here
            self._generator = generator

    def diffusion_config(self):
        from bggen_assets.core.diffusion import DiffusionConfig

        return DiffusionConfig(
            base_model=self.base_model,
            controlnet_model=self.controlnet_model,
            local_files_only=self.local_files_only,
            device=self.device,
            dtype=self.dtype,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            controlnet_conditioning_scale=self.controlnet_conditioning_scale,
            scheduler=self.scheduler,
            pixel_budget=self.pixel_budget,
            max_aspect=self.max_aspect,
            use_inpaint=self.use_inpaint,
            batch_size=self.batch_size,
            contour_thickness=self.contour_thickness,
            reinforce_contour=self.reinforce_contour,
            channels_last=self.channels_last,
            compile=self.compile,
        )

    def get(self) -> BackgroundGenerator:
        if self._generator is None:
            self.setup_for_execution(None)
        return self._generator

    @property
    def gated(self) -> bool:
        """Quality gates apply to model generations; the template never grows the product."""
        return self.kind == "diffusion"
