"""Quality gates on raw diffusion output, wired for the generation step: regenerate a canvas with
the next seed while the product grew (object expansion) or its contour leaked into the background
(edge leakage), up to the configured number of attempts; record every attempt."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .core.generation import BackgroundGenerator, GenerationJob
from .core.quality_gates import generate_many_with_gates

if TYPE_CHECKING:
    from resources.generator import GeneratorResource

#: (generator, jobs, raw images) -> per job (kept image, attempts, metrics for the generated_images
#: row, the seed of the kept image)
Gate = Callable[[BackgroundGenerator, Sequence[GenerationJob], Sequence[np.ndarray]],
                list[tuple[np.ndarray, int, dict, int]]]


def gate_for(generator_res: GeneratorResource, log: Callable[[str], None]) -> Gate:
    def gate(generator: BackgroundGenerator, jobs: Sequence[GenerationJob],
             raw: Sequence[np.ndarray]) -> list[tuple[np.ndarray, int, dict, int]]:
        results = generate_many_with_gates(
            generator, jobs, max_expansion=generator_res.max_object_expansion, max_leakage=generator_res.max_edge_leakage,
            max_attempts=generator_res.max_attempts, first_images=raw,
        )
        out = []
        for job, r in zip(jobs, results):
            if not r.passed:
                log(f"theme {job.theme_id} seed {job.seed}: no attempt passed the gates; kept the best ({'; '.join(r.reasons)})")
            metrics = {"passed": r.passed, "attempts": [dict(m) for m in r.metrics], "reasons": list(r.reasons)}
            out.append((r.image, r.attempts, metrics, r.chosen_seed))
        return out

    return gate
