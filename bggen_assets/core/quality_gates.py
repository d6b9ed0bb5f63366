"""Quality gates on a raw generated image (before cut-back), and regeneration until they pass.

Two failure modes of ControlNet background generation are measured:

* **Object expansion** (the metric of Yahoo's salient-object-aware background generation work):
  the model "grows" the product, drawing more of it (a longer bottle, a second handle, a base)
  beyond the real silhouette; after cut-back the extension remains as a ghost attached to the
  product. Measured by segmenting the product in the generated image with the project's masker
  and counting what the segmented object gained outside the input mask, over the product area.
* **Edge leakage**: the contour fed to ControlNet is repeated just outside the product as a halo,
  an outline or an oversized silhouette. Measured as the fraction of the product's contour along
  which the generated image has strong edges, parallel to the contour, in a thin ring just
  outside the mask (runs along the contour, so background texture does not count).

:func:`generate_with_gates` regenerates a job with the next seeds (seed+1, seed+2, ...) until both
gates pass or the attempts run out, and records every attempt.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cv2
import numpy as np

__all__ = [
    "GateInputError",
    "GatedResult",
    "object_expansion",
    "edge_leakage",
    "gate_metrics",
    "generate_with_gates",
    "generate_many_with_gates",
    "default_segment",
]

Segmenter = Callable[[np.ndarray], Any]  # image -> bool mask (or an object with a .mask)


class GateInputError(ValueError):
    """The image or mask given to a quality gate is not usable."""


def _check(generated_rgb: np.ndarray, input_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(generated_rgb)
    mask = np.asarray(input_mask)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise GateInputError(f"generated_rgb must be H×W×3 uint8, got {img.shape} {img.dtype}")
    if mask.shape != img.shape[:2]:
        raise GateInputError(f"input_mask shape {mask.shape} does not match image {img.shape[:2]}")
    return img, mask.astype(bool)


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def default_segment(image: np.ndarray) -> np.ndarray:
    """The project's classical masker (``bggen_assets.core.masking.classical_mask``)."""
    from bggen_assets.core.masking import classical_mask

    return classical_mask(image).mask


def _as_mask(result: Any, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(getattr(result, "mask", result))
    if m.shape != shape:
        raise GateInputError(f"segmenter returned a mask of shape {m.shape}, expected {shape}")
    return m.astype(bool)


# ------------------------------------------------------------------------------ object expansion
def object_expansion(
    generated_rgb: np.ndarray,
    input_mask: np.ndarray,
    segment: Segmenter | None = None,
    *,
    tolerance_px: int = 3,
) -> float:
    """How much the product grew in the generated image, as a fraction of the product's area.

    ``segment`` segments the product in the raw generated image (default: the classical masker;
    it may return a bool mask or a ``MaskResult``). Of the segmented connected components, those
    touching the product (the input mask) are the product as generated; their pixels outside the
    input mask dilated by ``tolerance_px`` are the expansion. Returns expansion area / mask area
    (0 for an empty mask)."""
    img, mask = _check(generated_rgb, input_mask)
    area = int(mask.sum())
    if area == 0:
        return 0.0
    seg = _as_mask((segment or default_segment)(img), mask.shape)
    n, labels = cv2.connectedComponents(seg.astype(np.uint8), connectivity=8)
    touching = np.unique(labels[mask & seg])
    touching = touching[touching > 0]
    if touching.size == 0:
        return 0.0
    obj = np.isin(labels, touching)
    allowed = cv2.dilate(mask.astype(np.uint8), _disk(tolerance_px)).astype(bool) if tolerance_px > 0 else mask
    return float((obj & ~allowed).sum()) / area


# --------------------------------------------------------------------------------- edge leakage
def _runs_at_least(hits: np.ndarray, min_run: int) -> np.ndarray:
    """Keep the True runs of a cyclic 1-D boolean array that are at least ``min_run`` long."""
    n = hits.size
    if n == 0 or min_run <= 1:
        return hits.copy()
    if hits.all():
        return hits.copy() if n >= min_run else np.zeros_like(hits)
    start = int(np.argmin(hits))  # rotate so the sequence starts on a False: no run wraps
    h = np.roll(hits, -start)
    keep = np.zeros(n, bool)
    d = np.diff(np.concatenate(([0], h.astype(np.int8), [0])))
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        if b - a >= min_run:
            keep[a:b] = True
    return np.roll(keep, start)


def edge_leakage(
    generated_rgb: np.ndarray,
    input_mask: np.ndarray,
    ring_px: int = 4,
    *,
    gap_px: int = 1,
    low: int = 50,
    high: int = 150,
    max_angle_deg: float = 30.0,
    min_run_px: int = 8,
) -> float:
    """Fraction of the product's contour length along which the generated image continues the
    contour just outside the product.

    For each point of the mask's outer contour, the outward normal is sampled at distances
    ``gap_px+1 .. gap_px+ring_px`` (the first ``gap_px`` pixels are the product's own boundary,
    where an edge is expected). A point *leaks* when one of those samples is a Canny edge
    (``low``/``high``) whose gradient is within ``max_angle_deg`` of the normal, i.e. an edge line
    parallel to the contour. Only runs of at least ``min_run_px`` consecutive leaking contour
    points count, so scattered texture edges do not. Returns leaking length / contour length."""
    img, mask = _check(generated_rgb, input_mask)
    if not mask.any():
        return 0.0
    h, w = mask.shape
    gray = cv2.GaussianBlur(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY), (3, 3), 0)
    edges = cv2.Canny(gray, low, high) > 0
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    gnorm = np.hypot(gx, gy) + 1e-6
    cos_min = math.cos(math.radians(max_angle_deg))

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    total = 0
    leaking = 0
    for c in contours:
        pts = c[:, 0, :].astype(np.float32)  # (N, 2) as (x, y), ordered along the contour
        n = len(pts)
        total += n
        if n < max(3, min_run_px):
            continue
        k = min(3, n // 3)
        tangent = np.roll(pts, -k, axis=0) - np.roll(pts, k, axis=0)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
        # orient outwards: a step of 2 px along the normal must leave the mask
        probe = np.rint(pts + 2 * normal).astype(int)
        px, py = np.clip(probe[:, 0], 0, w - 1), np.clip(probe[:, 1], 0, h - 1)
        normal[mask[py, px]] *= -1
        hits = np.zeros(n, bool)
        for d in range(gap_px + 1, gap_px + ring_px + 1):
            q = np.rint(pts + d * normal).astype(int)
            qx, qy = q[:, 0], q[:, 1]
            inside = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
            qx, qy = np.clip(qx, 0, w - 1), np.clip(qy, 0, h - 1)
            cos = np.abs(gx[qy, qx] * normal[:, 0] + gy[qy, qx] * normal[:, 1]) / gnorm[qy, qx]
            hits |= inside & ~mask[qy, qx] & edges[qy, qx] & (cos >= cos_min)
        leaking += int(_runs_at_least(hits, min_run_px).sum())
    return leaking / total if total else 0.0


# ------------------------------------------------------------------------------------ the gates
@dataclass(frozen=True)
class GatedResult:
    """The kept image and the record of the attempts that produced it.

    ``image``: the first attempt that passed both gates, else the attempt with the lowest
    gate score (max of metric/limit). ``metrics``: one dict per attempt, in order
    (``seed``, ``object_expansion``, ``edge_leakage``, ``passed``)."""

    image: np.ndarray
    attempts: int
    seeds_tried: tuple[int, ...]
    metrics: tuple[dict, ...]
    passed: bool
    chosen_seed: int = 0
    reasons: tuple[str, ...] = field(default_factory=tuple)


def gate_metrics(image: np.ndarray, mask: np.ndarray, *, segment: Segmenter | None = None,
                 ring_px: int = 4) -> dict[str, float]:
    return {
        "object_expansion": object_expansion(image, mask, segment),
        "edge_leakage": edge_leakage(image, mask, ring_px),
    }


def generate_many_with_gates(
    generator: Any,
    jobs: Sequence[Any],
    *,
    max_expansion: float = 0.1,
    max_leakage: float = 0.25,
    max_attempts: int = 3,
    segment: Segmenter | None = None,
    ring_px: int = 4,
    first_images: Sequence[np.ndarray] | None = None,
) -> list[GatedResult]:
    """:func:`generate_with_gates` for many jobs: each round is one ``generator.generate`` call
    over the jobs still failing (so a batching generator keeps batching), with seed+1, seed+2...
    ``first_images``: the jobs' already generated first attempts (at their own seeds), if any."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    jobs = list(jobs)
    if first_images is not None and len(first_images) != len(jobs):
        raise ValueError(f"{len(first_images)} first_images for {len(jobs)} jobs")
    records: list[list[tuple[int, dict, np.ndarray]]] = [[] for _ in jobs]
    pending = list(range(len(jobs)))
    for attempt in range(max_attempts):
        if not pending:
            break
        tries = [dataclasses.replace(jobs[i], seed=int(jobs[i].seed) + attempt) for i in pending]
        if attempt == 0 and first_images is not None:
            images = list(first_images)
        else:
            images = generator.generate(tries)
        still = []
        for i, job, img in zip(pending, tries, images):
            m = gate_metrics(img, job.product_mask, segment=segment, ring_px=ring_px)
            m["passed"] = m["object_expansion"] <= max_expansion and m["edge_leakage"] <= max_leakage
            m["seed"] = job.seed
            records[i].append((job.seed, m, img))
            if not m["passed"]:
                still.append(i)
        pending = still

    def score(m: dict) -> float:
        return max(m["object_expansion"] / max(max_expansion, 1e-9),
                   m["edge_leakage"] / max(max_leakage, 1e-9))

    out = []
    for rec in records:
        passed = [r for r in rec if r[1]["passed"]]
        seed, m, img = passed[0] if passed else min(rec, key=lambda r: score(r[1]))
        reasons = []
        for s, mm, _ in rec:
            if mm["object_expansion"] > max_expansion:
                reasons.append(f"seed {s}: object expansion {mm['object_expansion']:.3f} > {max_expansion}")
            if mm["edge_leakage"] > max_leakage:
                reasons.append(f"seed {s}: edge leakage {mm['edge_leakage']:.3f} > {max_leakage}")
        out.append(GatedResult(
            image=img, attempts=len(rec), seeds_tried=tuple(r[0] for r in rec),
            metrics=tuple(r[1] for r in rec), passed=bool(passed), chosen_seed=seed,
            reasons=tuple(reasons),
        ))
    return out


def generate_with_gates(
    generator: Any,
    job: Any,
    *,
    max_expansion: float = 0.1,
    max_leakage: float = 0.25,
    max_attempts: int = 3,
    segment: Segmenter | None = None,
    ring_px: int = 4,
    first_image: np.ndarray | None = None,
) -> GatedResult:
    """Generate ``job``; while object expansion > ``max_expansion`` or edge leakage >
    ``max_leakage``, regenerate with the next seed (seed+1, seed+2, ...), at most
    ``max_attempts`` generations in all. ``passed`` says whether the kept image passed.
    ``first_image``: the job's image already generated at ``job.seed`` (it is gated first,
    not generated again)."""
    return generate_many_with_gates(
        generator, [job], max_expansion=max_expansion, max_leakage=max_leakage,
        max_attempts=max_attempts, segment=segment, ring_px=ring_px,
        first_images=None if first_image is None else [first_image],
    )[0]
