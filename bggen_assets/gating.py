"""Quality gates on raw diffusion output, wired for the generation step: regenerate a canvas with
the next seed while the product grew (object expansion) or its contour leaked into the background
(edge leakage), up to the configured number of attempts; record every attempt."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .core.generation import GenerationJob
from .core.quality_gates import generate_many_with_gates

Gate = Callable[[object, Sequence[GenerationJob], Sequence[np.ndarray]], list[tuple[np.ndarray, int, dict, int]]]


def gate_for(generator_res, log: Callable[[str], None]) -> Gate:
    def gate(generator, jobs, raw):
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
