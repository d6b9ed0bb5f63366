"""Quality gates on constructed generated images: object expansion, edge leakage, seed retries."""
import numpy as np
import pytest

from bggen_assets.core.generation import GenerationJob
from bggen_assets.core.masking import classical_mask
from bggen_assets.core.quality_gates import (
    GateInputError,
    edge_leakage,
    generate_many_with_gates,
    generate_with_gates,
    object_expansion,
)
from gate_scenes import MASK, bottle_mask, halo, left_half_halo, scene


def segment(img):
    return classical_mask(img).mask


# ------------------------------------------------------------------------------- object expansion
def test_clean_generation_has_no_object_expansion():
    assert object_expansion(scene(), MASK, segment) < 0.03


def test_artificially_extended_product_fails_object_expansion():
    extended = scene(bottle_mask(extend_down=25))
    e = object_expansion(extended, MASK, segment)
    expected = (bottle_mask(25) & ~MASK).sum() / MASK.sum()
    assert e > 0.1 and abs(e - expected) < 0.1, (e, expected)


def test_expansion_counts_only_what_is_attached_to_the_product():
    img = scene()
    seg = MASK.copy()
    seg[10:40, 10:60] = True  # a separate object elsewhere in the background
    assert object_expansion(img, MASK, lambda _: seg) == 0.0
    seg2 = MASK | bottle_mask(40)  # attached growth
    assert object_expansion(img, MASK, lambda _: seg2) > 0.2


def test_expansion_accepts_a_mask_result_and_checks_shapes():
    img = scene()
    assert object_expansion(img, MASK, classical_mask) < 0.03
    with pytest.raises(GateInputError, match="segmenter returned"):
        object_expansion(img, MASK, lambda _: MASK[:-1])
    with pytest.raises(GateInputError, match="input_mask shape"):
        object_expansion(img, MASK[:-1], segment)


# ----------------------------------------------------------------------------------- edge leakage
@pytest.mark.parametrize("bg", ["plain", "busy"])
def test_clean_contour_does_not_leak(bg):
    assert edge_leakage(scene(bg=bg), MASK) == 0.0


@pytest.mark.parametrize("offset", [2, 3, 4])
@pytest.mark.parametrize("bg, floor", [("plain", 0.9), ("busy", 0.6)])
def test_contour_continuing_ring_fails_leakage(offset, bg, floor):
    # floors from benchmarks/diffusion.py's gate figures (plain 0.929-0.952, busy 0.683-0.841)
    assert edge_leakage(halo(scene(bg=bg), offset=offset), MASK) > floor


def test_ring_beyond_the_band_is_not_leakage():
    assert edge_leakage(halo(scene(), offset=12), MASK) == 0.0


def test_partial_halo_measures_its_share_of_the_contour():
    assert 0.3 < edge_leakage(left_half_halo(offset=3), MASK) < 0.7


# ---------------------------------------------------------------------------------------- retries
class ConstructedGenerator:
    """Returns constructed images by seed (a test double for quality cases, not a diffusion
    mock): seeds in ``bad`` give an extended product or a halo, others a clean generation."""

    def __init__(self, bad: dict[int, str]):
        self.bad = bad
        self.calls: list[list[int]] = []

    def identity(self) -> str:
        return "constructed"

    def generate(self, jobs):
        self.calls.append([j.seed for j in jobs])
        out = []
        for j in jobs:
            kind = self.bad.get(j.seed)
            if kind == "extended":
                out.append(scene(bottle_mask(extend_down=25)))
            elif kind == "halo":
                out.append(halo(scene()))
            else:
                out.append(scene())
        return out


def _job(seed):
    return GenerationJob(canvas_rgb=scene(), product_mask=MASK, prompt="studio", negative_prompt="",
                         seed=seed, theme_id="t")


def test_retry_takes_the_next_seed_until_the_gates_pass():
    gen = ConstructedGenerator({100: "extended", 101: "halo"})
    r = generate_with_gates(gen, _job(100), max_expansion=0.1, max_leakage=0.25, max_attempts=4,
                            segment=segment)
    assert r.passed and r.attempts == 3
    assert r.seeds_tried == (100, 101, 102) and r.chosen_seed == 102
    assert [m["passed"] for m in r.metrics] == [False, False, True]
    assert r.metrics[0]["object_expansion"] > 0.1 and r.metrics[1]["edge_leakage"] > 0.25
    assert np.array_equal(r.image, scene())
    assert any("object expansion" in s for s in r.reasons) and any("edge leakage" in s for s in r.reasons)


def test_attempts_run_out_and_the_failure_is_recorded():
    gen = ConstructedGenerator({7: "extended", 8: "extended", 9: "halo"})
    r = generate_with_gates(gen, _job(7), max_attempts=3, segment=segment)
    assert not r.passed and r.attempts == 3 and r.seeds_tried == (7, 8, 9)
    assert len(r.metrics) == 3 and not any(m["passed"] for m in r.metrics)


def test_first_pass_needs_one_generation():
    gen = ConstructedGenerator({})
    r = generate_with_gates(gen, _job(5), segment=segment)
    assert r.passed and r.attempts == 1 and gen.calls == [[5]]


def test_many_jobs_retry_only_the_failures_in_one_call_per_round():
    gen = ConstructedGenerator({1: "extended", 20: "halo", 21: "halo"})
    rs = generate_many_with_gates(gen, [_job(1), _job(10), _job(20)], max_attempts=3, segment=segment)
    assert gen.calls == [[1, 10, 20], [2, 21], [22]]
    assert [r.seeds_tried for r in rs] == [(1, 2), (10,), (20, 21, 22)]
    assert all(r.passed for r in rs)


def test_an_already_generated_first_image_is_gated_not_regenerated():
    gen = ConstructedGenerator({})
    r = generate_with_gates(gen, _job(40), segment=segment, first_image=halo(scene()))
    assert r.passed and r.seeds_tried == (40, 41) and gen.calls == [[41]]
    assert not r.metrics[0]["passed"]
