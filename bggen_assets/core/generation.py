"""The contract between the pipeline and background generators (template, diffusion)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

NEUTRAL_GREY = 127  # background value of the canvas handed to a generator: carries no information


@dataclass(frozen=True)
class GenerationJob:
    canvas_rgb: np.ndarray  # H x W x 3 uint8: the positioned product on a neutral canvas
    product_mask: np.ndarray  # H x W bool: where the product is on the canvas
    prompt: str
    negative_prompt: str
    seed: int
    theme_id: str
    style: str = ""  # template generator's style (studio, marble, outdoor, ...); ignored by diffusion
    palette: tuple[str, ...] = ()  # template generator's colours (#rrggbb); ignored by diffusion


class BackgroundGenerator(Protocol):
    def identity(self) -> str:
        """Names the model and every setting that changes outputs; part of the image key."""

    def generate(self, jobs: Sequence[GenerationJob]) -> list[np.ndarray]:
        """Raw backgrounds (H x W x 3 uint8, one per job, the job's canvas size), before cut-back."""


def derive_seed(*parts: str) -> int:
    """Deterministic 31-bit seed from (product, bucket, prompt): regeneration reproduces the image."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
