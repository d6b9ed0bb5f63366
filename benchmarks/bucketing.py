"""How much bucketing cuts generation, on a placement mix like real traffic: the paper's grid and
bucket covers side by side, their resolution cost, the crop error, and hits for unplanned sizes.

Mix: the standard IAB/social sizes, plus responsive variants of each with both sides stretched
independently by up to +-15% (a few thousand distinct sizes), fill ratios {0.6, 0.7, 0.8}, three
anchors (centre, bottom-centre, left-centre), and >= 300 products with bbox aspect ratios spread
log-uniformly over 1:4 .. 4:1. For each r:

* grid: distinct (product, bucket) generations (bucket_for), against the (product, placement)
  requests; cover: canvases of plan_cover per product, under the grid's own worst case on the same
  mix and products as bounds (area ratio and stretch beyond the model's aspect cap), so never worse;
  (plan_product_cover: also never more canvases than the grid for any product);
* the worst and mean area ratio (canvas extent / needed extent, the resolution a crop loses) and
  the worst stretch of each, over every (product, placement);
* the largest crop error in pixels measured on rendered canvases (the product box found in the
  served image vs the placed box), for grid buckets and cover canvases alike;
* planning time per product;
* a stream of placement sizes that were not planned (new responsive variants): the share served
  from a generated canvas by grid lookup (its own bucket) and by containment (any covering canvas).

    .venv/bin/python benchmarks/bucketing.py [--products 300] [--variants 150] [--workers 1] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bggen_assets.core import covers  # noqa: E402
from bggen_assets.core.geometry import (  # noqa: E402
    Bucket, CoverCanvas, Placement, bucket_for, canvas_layout, place_product)

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


class Costs(NamedTuple):
    """Over a product's placements: worst and summed area ratio, worst stretch."""

    worst_area: float
    area_sum: float
    worst_stretch: float

    @classmethod
    def of(cls, area: np.ndarray, stretch: np.ndarray) -> "Costs":
        return cls(float(area.max()), float(area.sum()), float(stretch.max()))


class ProductPlan(NamedTuple):
    grid: set                  # the product's grid buckets, as exponent tuples (t, r, b, l)
    grid_index: covers.CanvasIndex  # the same canvases for containment lookups (CoverCanvas.inside_bucket)
    grid_cost: "Costs"         # of serving each placement from its own bucket's canvas
    index: covers.CanvasIndex  # the cover canvases
    cover_cost: "Costs"        # of serving each placement from its best covering canvas
    grid_s: float
    cover_s: float


def plan_products(args) -> list[ProductPlan]:
    bboxes, placements, r, bounds = args
    out = []
    for bw, bh in bboxes:
        t0 = time.perf_counter()
        exps = covers.grid_exponents(bw, bh, placements, r)
        grid = set(map(tuple, np.unique(exps, axis=0).tolist()))
        t1 = time.perf_counter()
        canvases, _ = covers.plan_product_cover(bw, bh, placements, r, bounds)
        t2 = time.perf_counter()
        points = covers.placement_points(bw, bh, placements)
        index = covers.canvas_index(canvases, points.product_aspect)
        grid_index = covers.canvas_index([CoverCanvas.inside_bucket(Bucket(*e, r)) for e in sorted(grid)], bw / bh)
        chosen = covers.find_covering(index, points, bounds)
        if (chosen < 0).any():
            raise AssertionError(f"product {bw}x{bh}: {int((chosen < 0).sum())} placements left uncovered")
        grid_cost = Costs.of(*covers.grid_costs(covers.grid_canvas_pads(exps, r), points, bounds.max_aspect))
        cover_cost = Costs.of(*covers.cover_costs(index, points, chosen, bounds.max_aspect))
        out.append(ProductPlan(grid, grid_index, grid_cost, index, cover_cost, t1 - t0, t2 - t1))
    return out


def crop_error(bboxes, placements, canvas_for, samples: int, budget: int, seed: int = 2) -> int:
    """Render canvases (product white on black), serve placements, measure the product box.
    canvas_for(product index, placement) -> the grid bucket or cover canvas that serves it."""
    from PIL import Image

    from bggen_assets.core.compositing import crop_placement

    rng = np.random.default_rng(seed)
    worst = 0
    for _ in range(samples):
        i = int(rng.integers(len(bboxes)))
        bw, bh = bboxes[i]
        p = placements[rng.integers(len(placements))]
        placed = place_product(bw, bh, p)
        layout = canvas_layout(canvas_for(i, p), bw, bh, budget)
        canvas = np.zeros((layout.height, layout.width), np.uint8)
        x, y, w, h = layout.product_box
        canvas[y : y + h, x : x + w] = 255
        out = np.asarray(crop_placement(Image.fromarray(canvas), layout, placed))
        ys, xs = np.nonzero(out >= 128)
        got = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        worst = max(worst, out.shape != (p.height, p.width) and 10**9 or 0,
                    *(abs(int(a) - int(b)) for a, b in zip(got, (placed.x, placed.y, placed.w, placed.h))))
    return worst


def unplanned_stream(planned: list[Placement], n: int, spread: float, seed: int) -> list[Placement]:
    """n placements of sizes the mix does not have: standard sizes stretched by up to +-spread,
    with the mix's fills and anchors."""
    rng = np.random.default_rng(seed)
    have = {(p.width, p.height) for p in planned}
    out: list[Placement] = []
    while len(out) < n:
        w, h = STANDARD[rng.integers(len(STANDARD))]
        size = tuple(max(20, round(v * rng.uniform(1 - spread, 1 + spread))) for v in (w, h))
        if size in have:
            continue
        ax, ay = ANCHORS[rng.integers(len(ANCHORS))]
        out.append(Placement(*size, FILLS[rng.integers(len(FILLS))], ax, ay))
    return out


class Hits(NamedTuple):
    grid: float          # % served by grid lookup: the request's own bucket was generated
    grid_contained: float  # % served by containment over the same grid canvases
    cover: float         # % served by containment over the cover canvases
    grid_worst: float    # worst area ratio served, each way
    grid_contained_worst: float
    cover_worst: float
    grid_us: float       # one lookup, from the placement on (place_product included)
    cover_us: float


def hit_rates(bboxes, plans: list[ProductPlan], stream: list[Placement], r: float, bounds: covers.CoverBounds,
              timed: int = 2000, seed: int = 3) -> Hits:
    """Which requests of the stream are served from a generated canvas, and at what area ratio."""
    rng = np.random.default_rng(seed)
    who = rng.integers(len(bboxes), size=len(stream))
    served = {"grid": [], "grid_contained": [], "cover": []}
    for i in np.unique(who):
        ps = [stream[j] for j in np.flatnonzero(who == i)]
        points = covers.placement_points(*bboxes[i], ps)
        exps = covers.grid_exponents(*bboxes[i], ps, r)
        own = np.array([tuple(e) in plans[i].grid for e in exps.tolist()])
        area, _ = covers.grid_costs(covers.grid_canvas_pads(exps, r), points, bounds.max_aspect)
        served["grid"].append(np.where(own, area, np.nan))
        for name, index in (("grid_contained", plans[i].grid_index), ("cover", plans[i].index)):
            k = covers.find_covering(index, points, bounds)
            served[name].append(np.where(k >= 0, index.area[np.maximum(k, 0)] / points.area, np.nan))
    ratio = {name: np.concatenate(v) for name, v in served.items()}
    pct = {name: 100.0 * float(np.isfinite(v).mean()) for name, v in ratio.items()}
    worst = {name: float(np.nanmax(v)) if np.isfinite(v).any() else float("nan") for name, v in ratio.items()}
    sample = list(zip(who[:timed], stream[:timed]))
    t0 = time.perf_counter()
    for i, p in sample:
        _ = tuple(bucket_for(place_product(*bboxes[i], p), r)[:4]) in plans[i].grid
    t1 = time.perf_counter()
    for i, p in sample:
        covers.find_covering_placement(plans[i].index, *bboxes[i], p, bounds)
    t2 = time.perf_counter()
    return Hits(pct["grid"], pct["grid_contained"], pct["cover"], worst["grid"], worst["grid_contained"],
                worst["cover"], (t1 - t0) / len(sample) * 1e6, (t2 - t1) / len(sample) * 1e6)


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
    ap.add_argument("--stream", type=int, default=20_000, help="requests per stream of unplanned sizes")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.products, a.variants, a.samples, a.stream = 60, 40, 300, 4000
    placements = placement_mix(a.variants)
    sizes = len({(p.width, p.height) for p in placements})
    bboxes = products(a.products)
    print(f"mix: {sizes} distinct sizes ({len(STANDARD)} standard + responsive variants +-15%), fills {FILLS}, "
          f"anchors {ANCHORS}: {len(placements)} placements; {len(bboxes)} products, bbox aspect 1:4..4:1")
    requests = len(bboxes) * len(placements)
    streams = {spread: unplanned_stream(placements, a.stream, spread, seed=5) for spread in (0.15, 0.3)}
    print(f"requests: {len(bboxes):,} products x {len(placements):,} placements = {requests:,}; "
          f"cover bounds: the grid's worst case at the same r on this mix (area ratio, stretch beyond "
          f"the {covers.DEFAULT_MAX_ASPECT:g}:1 aspect cap)")
    print(f"{'r':>4} {'canvases':>8} {'count':>9} {'/product':>9} {'reduction':>10} {'worst area':>11} "
          f"{'mean area':>10} {'worst stretch':>14} {'crop err px':>12} {'plan ms/product':>16}")
    summary = {}
    hits = []
    for r in (1.1, 1.2, 1.5):
        bounds = covers.grid_bounds(bboxes, placements, r)
        chunks = [bboxes[i :: a.workers] for i in range(a.workers)]
        if a.workers == 1:
            parts = [plan_products((bboxes, placements, r, bounds))]
        else:
            with ProcessPoolExecutor(a.workers) as pool:
                parts = list(pool.map(plan_products, [(c, placements, r, bounds) for c in chunks]))
        plans: list[ProductPlan] = [None] * len(bboxes)  # type: ignore[list-item]
        for k, part in enumerate(parts):
            plans[k :: a.workers] = part
        grid_n = sum(len(p.grid) for p in plans)
        cover_n = sum(p.index.count for p in plans)
        grid_err = crop_error(bboxes, placements, lambda i, p: bucket_for(place_product(*bboxes[i], p), r),
                              a.samples, a.budget)

        def cover_canvas(i, p):
            k = covers.find_covering_placement(plans[i].index, *bboxes[i], p, bounds)
            if k < 0:
                raise AssertionError(f"planned placement {p} of product {bboxes[i]} is not covered")
            return plans[i].index.canvases[k]

        cover_err = crop_error(bboxes, placements, cover_canvas, a.samples, a.budget)
        rows = (("grid", grid_n, [p.grid_cost for p in plans], grid_err, [p.grid_s for p in plans]),
                ("cover", cover_n, [p.cover_cost for p in plans], cover_err, [p.cover_s for p in plans]))
        worst = {}
        for name, n, costs, err, secs in rows:
            worst[name] = max(c.worst_area for c in costs)
            mean = sum(c.area_sum for c in costs) / requests
            print(f"{r:>4} {name:>8} {n:>9,} {n / len(bboxes):>9.1f} {requests / n:>9.1f}x {worst[name]:>11.4f} "
                  f"{mean:>10.4f} {max(c.worst_stretch for c in costs):>14.4f} {err:>12} "
                  f"{1e3 * np.mean(secs):>16.1f}")
        summary[r] = (grid_n / cover_n, worst["grid"], worst["cover"])
        print(f"{r:>4} cover vs grid: {grid_n / cover_n:.2f}x fewer canvases (bounds: area {bounds.area:.4f}, "
              f"stretch {bounds.stretch:.4f})")
        for spread, stream in streams.items():
            hits.append((r, spread, hit_rates(bboxes, plans, stream, r, bounds)))
    print(f"unplanned sizes ({a.stream:,} requests per stream: standard sizes stretched by up to +-spread, "
          f"none of them planned; the mix's fills and anchors). Hits: grid lookup (own bucket) and containment "
          f"over the grid's canvases, containment over the cover's; the worst area ratio each serves:")
    print(f"{'r':>4} {'plan':>22} {'grid hits':>10} {'grid contained':>15} {'cover contained':>16} "
          f"{'worst area':>24} {'lookup us grid/cover':>21}")

    def hit_row(r, label, h: Hits) -> None:
        print(f"{r:>4} {label:>22} {h.grid:>9.1f}% {h.grid_contained:>14.1f}% {h.cover:>15.1f}% "
              f"{h.grid_worst:>8.3f}/{h.grid_contained_worst:.3f}/{h.cover_worst:.3f} "
              f"{h.grid_us:>12.1f} / {h.cover_us:<6.1f}")

    for r, spread, h in hits:
        hit_row(r, f"mix, sizes +-{spread:.0%}", h)
    # A handful of fixed sizes (the demo's) share few buckets: the reduction comes from many sizes.
    for merchant, fixed in demo_placements().items():
        requests = len(bboxes) * len(fixed)
        bounds = covers.grid_bounds(bboxes, fixed, 1.2)
        demo = plan_products((bboxes, fixed, 1.2, bounds))
        grid_n, cover_n = sum(len(p.grid) for p in demo), sum(p.index.count for p in demo)
        print(f"demo sizes of {merchant} ({len(fixed)} placements), r=1.2: {requests:,} requests, "
              f"{grid_n:,} generations, {requests / grid_n:.2f}x; cover {cover_n:,} canvases, "
              f"{requests / cover_n:.2f}x")
        stream = unplanned_stream(fixed, a.stream, 0.15, seed=6)
        hit_row(1.2, f"{merchant}, sizes +-15%", hit_rates(bboxes, demo, stream, 1.2, bounds))
    fewer, grid_worst, cover_worst = summary[1.2]
    print(f"cover vs grid at r=1.2: {fewer:.2f}x fewer canvases; worst area ratio grid {grid_worst:.4f}, "
          f"cover {cover_worst:.4f}")


if __name__ == "__main__":
    main()
