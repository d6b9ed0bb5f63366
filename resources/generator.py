"""The background generator resource: `template` (CPU, the embedded default) or `diffusion`.

The diffusion settings are nested under `diffusion`, as a Dagster `Config` made from the fields of
`DiffusionConfig` (bggen_assets/core/diffusion_config.py): names, types and defaults are the
dataclass's, so each setting has one default and a new setting needs no edit here.
"""

import dataclasses
import typing
from typing import Optional

from dagster import Config, ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr, create_model

from bggen_assets.core.diffusion_config import DiffusionConfig
from bggen_assets.core.generation import BackgroundGenerator
from bggen_assets.core.template_bg import TemplateGenerator

GENERATOR_KINDS = ("template", "diffusion")
# Jobs per generate() call, for either kind: the resource owns it, not the nested settings.
RESOURCE_FIELDS = ("batch_size",)


class _DiffusionSettings(Config):
    def to_config(self, **resource_fields) -> DiffusionConfig:
        return DiffusionConfig(**self.model_dump(), **resource_fields)


def _settings_from(config_cls: type, exclude: tuple[str, ...]) -> type[_DiffusionSettings]:
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(config_cls) if f.name not in exclude}
    return create_model("DiffusionSettings", __base__=_DiffusionSettings, __module__=__name__,
                        __doc__=config_cls.__doc__, **fields)


DiffusionSettings = _settings_from(DiffusionConfig, exclude=RESOURCE_FIELDS)
_CONFIG_DEFAULTS = DiffusionConfig()


class GeneratorResource(ConfigurableResource):
    kind: str = "template"
    batch_size: int = _CONFIG_DEFAULTS.batch_size
    diffusion: DiffusionSettings = Field(default_factory=DiffusionSettings)  # ignored by the template generator
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

    def diffusion_config(self) -> DiffusionConfig:
        return self.diffusion.to_config(batch_size=self.batch_size)

    def get(self) -> BackgroundGenerator:
        if self._generator is None:
            self.setup_for_execution(None)
        return self._generator

    @property
    def gated(self) -> bool:
        """Quality gates apply to model generations; the template never grows the product."""
        return self.kind == "diffusion"
