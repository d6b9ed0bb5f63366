"""How much bucketing cuts generation, on a placement mix like real traffic, and the crop error.

Mix: the standard IAB/social sizes, plus responsive variants of each with both sides stretched
independently by up to +-15% (a few thousand distinct sizes), fill ratios {0.6, 0.7, 0.8}, three
anchors (centre, bottom-centre, left-centre), and >= 300 products with bbox aspect ratios spread
log-uniformly over 1:4 .. 4:1. For each r it prints distinct (product, placement) requests,
distinct (product, bucket) generations, their ratio, and the largest crop error in pixels measured
on rendered canvases (the product box found in the served image vs the placed box).

    .venv/bin/python benchmarks/bucketing.py [--products 300] [--variants 200] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bggen_assets.core.geometry import Placement, bucket_for, canvas_layout, place_product  # noqa: E402

STANDARD = [(300, 250), (728, 90), (160, 600), (300, 600), (320, 50), (970, 250), (336, 280), (468, 60), (250, 250),
            (120, 600), (1200, 628), (1080, 1080), (1080, 1920), (320, 100), (200, 200), (300, 50), (970, 90),
            (240, 400), (980, 120), (1080, 1350)]
FILLS = (0.6, 0.7, 0.8)
ANCHORS = ((0.5, 0.5), (0.5, 0.85), (0.15, 0.5))


def placement_mix(variants: int, seed: int = 0) -> list[Placement]:
    rng = np.random.default_rng(seed)
    sizes = set(STANDARD)
    for w, h in STANDARD:
        for _ in range(variants):
            sizes.add((max(20, round(w * rng.uniform(0.85, 1.15))), max(20, round(h * rng.uniform(0.85, 1.15)))))
    return [Placement(w, h, f, ax, ay) for (w, h) in sorted(sizes) for f in FILLS for ax, ay in ANCHORS]


def products(n: int, seed: int = 1) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    aspect = np.exp(rng.uniform(np.log(0.25), np.log(4.0), n))
    area = rng.uniform(150_000, 600_000, n)
    return [(max(8, round(np.sqrt(a * r))), max(8, round(np.sqrt(a / r)))) for a, r in zip(area, aspect)]


def _buckets_for_products(args):
    bboxes, placements, r = args
    out = []
    for bw, bh in bboxes:
        out.append(len({bucket_for(place_product(bw, bh, p), r) for p in placements}))
    return out


def crop_error(bboxes, placements, r, samples: int, budget: int, seed: int = 2) -> int:
    """Render canvases (product white on black), serve placements, measure the product box."""
    from PIL import Image

    from bggen_assets.core.compositing import crop_placement

    rng = np.random.default_rng(seed)
    worst = 0
    for _ in range(samples):
        bw, bh = bboxes[rng.integers(len(bboxes))]
        p = placements[rng.integers(len(placements))]
        placed = place_product(bw, bh, p)
        layout = canvas_layout(bucket_for(placed, r), bw, bh, budget)
        canvas = np.zeros((layout.height, layout.width), np.uint8)
        x, y, w, h = layout.product_box
        canvas[y : y + h, x : x + w] = 255
        out = np.asarray(crop_placement(Image.fromarray(canvas), layout, placed))
        ys, xs = np.nonzero(out >= 128)
        got = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        worst = max(worst, out.shape != (p.height, p.width) and 10**9 or 0,
                    *(abs(int(a) - int(b)) for a, b in zip(got, (placed.x, placed.y, placed.w, placed.h))))
    return worst


def demo_placements() -> dict[str, list[Placement]]:
    """The sample catalog's placements per merchant (the sizes `make demo` plans for)."""
    from bggen_assets.core.feeds import parse_placements
    from bggen_assets.sample_catalog import placements_doc

    doc = parse_placements(placements_doc(np.random.default_rng(0)), "sample placements")
    return {m: ps for m, ps in doc.items() if m != "default"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=300)
    ap.add_argument("--variants", type=int, default=150, help="responsive variants per standard size")
    ap.add_argument("--samples", type=int, default=1500, help="rendered crops for the crop-error measurement")
    ap.add_argument("--budget", type=int, default=1_000_000, help="canvas pixel budget for the crop-error renders")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.products, a.variants, a.samples = 60, 40, 300
    placements = placement_mix(a.variants)
    sizes = len({(p.width, p.height) for p in placements})
    bboxes = products(a.products)
    print(f"mix: {sizes} distinct sizes ({len(STANDARD)} standard + responsive variants +-15%), fills {FILLS}, "
          f"anchors {ANCHORS}: {len(placements)} placements; {len(bboxes)} products, bbox aspect 1:4..4:1")
    print(f"{'r':>5} {'requests':>12} {'generations':>12} {'ratio':>8} {'buckets/product':>16} {'crop err px':>12} {'s':>6}")
    for r in (1.1, 1.2, 1.5):
        t = time.perf_counter()
        chunks = [bboxes[i :: a.workers] for i in range(a.workers)]
        with ProcessPoolExecutor(a.workers) as pool:
            counts = [c for part in pool.map(_buckets_for_products, [(c, placements, r) for c in chunks]) for c in part]
        generations = sum(counts)
        requests = len(bboxes) * len(placements)
        err = crop_error(bboxes, placements, r, a.samples, a.budget)
        print(f"{r:>5} {requests:>12,} {generations:>12,} {requests / generations:>7.1f}x {generations / len(bboxes):>16.1f} "
              f"{err:>12} {time.perf_counter() - t:>6.1f}")
    # A handful of fixed sizes (the demo's) share few buckets: the reduction comes from many sizes.
    for merchant, fixed in demo_placements().items():
        requests = len(bboxes) * len(fixed)
        generations = sum(_buckets_for_products((bboxes, fixed, 1.2)))
        print(f"demo sizes of {merchant} ({len(fixed)} placements), r=1.2: {requests:,} requests, "
              f"{generations:,} generations, {requests / generations:.2f}x")


if __name__ == "__main__":
    main()
