"""Bucket covers (hypothesis): every placement is covered within the bounds by a canvas of its plan
and is an exact crop of it; containment lookups agree with a brute-force search; plans are stable."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bggen_assets.core import covers
from bggen_assets.core.compositing import canvas_pyramid, crop_placement
from bggen_assets.core.geometry import CoverCanvas, Placement, canvas_layout, crop_box, place_product
from test_geometry import bboxes, placements, ratios  # the same placements and products as the grid's tests

placement_lists = st.lists(placements, min_size=1, max_size=40)
quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dense_mix(n_sizes: int, seed: int = 0) -> list[Placement]:
    """Responsive variants of a few standard sizes, 3 fills x 3 anchors: the benchmark's kind of mix."""
    rng = np.random.default_rng(seed)
    base = [(300, 250), (728, 90), (160, 600), (1080, 1080), (1200, 628), (320, 50)]
    sizes = {(max(20, round(w * rng.uniform(0.85, 1.15))), max(20, round(h * rng.uniform(0.85, 1.15))))
             for _ in range(n_sizes) for w, h in [base[rng.integers(len(base))]]}
    return [Placement(w, h, f, ax, ay) for w, h in sorted(sizes) for f in (0.6, 0.7, 0.8)
            for ax, ay in ((0.5, 0.5), (0.5, 0.85), (0.15, 0.5))]


def needed_units(bbox, placement):
    placed = place_product(*bbox, placement)
    return placed, placed.canvas_w / placed.w, placed.canvas_h / placed.h


def served_box(canvas_spec, bbox, placed, budget):
    """Render the canvas with the product white on black, serve the placement, find the product."""
    layout = canvas_layout(canvas_spec, *bbox, budget)
    canvas = np.zeros((layout.height, layout.width), np.uint8)
    x, y, w, h = layout.product_box
    canvas[y : y + h, x : x + w] = 255
    out = np.asarray(crop_placement(canvas_pyramid(Image.fromarray(canvas)), layout, placed))
    ys, xs = np.nonzero(out >= 128)
    return out.shape, (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


@quick
@given(bbox=bboxes, ps=placement_lists, r=ratios, budget=st.sampled_from([60_000, 250_000, 1_000_000]))
def test_every_placement_is_covered_within_the_bounds_and_an_exact_crop(bbox, ps, r, budget):
    canvases, bounds = covers.plan_product_cover(*bbox, ps, r)
    grid = covers.grid_bounds([bbox], ps, r)
    assert bounds == grid  # by default: the grid's own worst case on these placements
    grid_buckets = {tuple(e) for e in covers.grid_exponents(*bbox, ps, r).tolist()}
    assert len(set(canvases)) == len(canvases) <= len(grid_buckets)  # never more canvases than the grid
    index = covers.canvas_index(canvases, bbox[0] / bbox[1])
    chosen = covers.find_covering(index, covers.placement_points(*bbox, ps), bounds)
    assert (chosen >= 0).all()
    for p, k in zip(ps, chosen.tolist()):
        c = index.canvases[k]
        placed, need_w, need_h = needed_units(bbox, p)
        # dominance, from the pixels: the canvas's padding per side is at least the placement's
        for v, pad, extent in zip(c, (placed.pad_top, placed.pad_right, placed.pad_bottom, placed.pad_left),
                                  (placed.h, placed.w, placed.h, placed.w)):
            assert v / 1000 >= pad / extent
        # area ratio within the bound (or within the rounding of the placement's own canvas)
        own = covers.request_canvas(*bbox, p)
        own_ratio = own.units_w * own.units_h / (need_w * need_h)
        assert c.units_w * c.units_h / (need_w * need_h) <= max(bounds.area, own_ratio) * (1 + 1e-12)
        # the crop maps the canvas's product box onto the placed box (analytically, any resolution)
        layout = canvas_layout(c, *bbox, budget)
        x0, y0, x1, y1 = crop_box(layout, placed)
        sx, sy = p.width / (x1 - x0), p.height / (y1 - y0)
        assert abs((layout.product_x - x0) * sx - placed.x) < 1e-6
        assert abs((layout.product_y - y0) * sy - placed.y) < 1e-6
        assert abs(layout.product_w * sx - placed.w) < 1e-6 and abs(layout.product_h * sy - placed.h) < 1e-6
    # rendered: where the canvas has the placement's resolution, the product lands on its box exactly
    for p, k in list(zip(ps, chosen.tolist()))[:4]:
        placed = place_product(*bbox, p)
        layout = canvas_layout(index.canvases[k], *bbox, budget)
        if layout.product_w >= placed.w and layout.product_h >= placed.h:
            shape, box = served_box(index.canvases[k], bbox, placed, budget)
            assert shape == (p.height, p.width)
            assert box == (placed.x, placed.y, placed.w, placed.h)


@quick
@given(bbox=bboxes, ps=placement_lists, r=ratios)
def test_the_cover_is_never_worse_than_the_grid_and_respects_the_aspect_cap(bbox, ps, r):
    canvases, bounds = covers.plan_product_cover(*bbox, ps, r)
    points = covers.placement_points(*bbox, ps)
    index = covers.canvas_index(canvases, points.product_aspect)
    chosen = covers.find_covering(index, points, bounds)
    area, stretch = covers.cover_costs(index, points, chosen, bounds.max_aspect)
    grid_area, grid_stretch = covers.grid_costs(covers.grid_canvas_pads(covers.grid_exponents(*bbox, ps, r), r), points)
    slack = 1.0021  # the placement's own canvas, rounded up to thousandths per side
    assert area.max() <= grid_area.max() * slack and stretch.max() <= grid_stretch.max() * slack
    # the cap, from the sizes: a canvas is more elongated than max(cap, what the placement needs) by
    # no more than the grid's worst overshoot on these placements (both with the product drawn at
    # its bbox aspect, as canvas_layout draws it)
    for p, k in zip(ps, chosen.tolist()):
        c = index.canvases[k]
        _, need_w, need_h = needed_units(bbox, p)
        aspect, needed = bbox[0] * c.units_w / (bbox[1] * c.units_h), bbox[0] * need_w / (bbox[1] * need_h)
        allowed = grid_stretch.max() * slack
        assert aspect <= max(bounds.max_aspect, needed) * allowed
        assert 1 / aspect <= max(bounds.max_aspect, 1 / needed) * allowed


def test_strict_stretch_keeps_canvases_within_the_cap_for_placements_within_it():
    bbox = (400, 400)
    ps = [Placement(w, h, 0.8) for w in range(200, 420, 20) for h in range(200, 420, 20)]  # aspects 0.5 .. 2.1
    bounds = covers.CoverBounds(area=2.0, stretch=1.0, max_aspect=1.5)
    canvases = covers.plan_cover(covers.placement_points(*bbox, ps), bounds)
    points = covers.placement_points(*bbox, ps)
    index = covers.canvas_index(canvases, 1.0)
    chosen = covers.find_covering(index, points, bounds)
    assert (chosen >= 0).all()
    for p, k in zip(ps, chosen.tolist()):
        if 1 / 1.5 <= p.width / p.height <= 1.5:
            assert 1 / (1.5 * 1.003) <= index.aspect[k] <= 1.5 * 1.003, (p, index.canvases[k])


def test_at_least_half_the_grid_canvases_on_a_dense_mix():
    ps = dense_mix(120)
    for bbox in ((600, 500), (300, 900), (1000, 260)):
        canvases, bounds = covers.plan_product_cover(*bbox, ps, 1.2)
        grid = len({tuple(e) for e in covers.grid_exponents(*bbox, ps, 1.2).tolist()})
        assert 2 * len(canvases) <= grid, (bbox, len(canvases), grid)


@quick
@given(bbox=bboxes, base=placement_lists, extra=st.lists(placements, min_size=1, max_size=20), r=ratios)
def test_adding_placements_keeps_every_canvas_that_still_covers(bbox, base, extra, r):
    bounds = covers.grid_bounds([bbox], base + extra, r)
    before = covers.plan_cover(covers.placement_points(*bbox, base), bounds)
    points = covers.placement_points(*bbox, base + extra)
    after = covers.plan_cover(points, bounds, existing=before)
    assert after[: len(before)] == before  # every old canvas covers its old placements, still
    old_cover = covers.coverage(covers.canvas_index(before, points.product_aspect), points, bounds).any(axis=0)
    new_index = covers.canvas_index(after[len(before):], points.product_aspect)
    new_cover = covers.coverage(new_index, points, bounds)
    assert new_cover.any(axis=0)[~old_cover].all()  # what the old plan misses is covered now
    assert all(row[~old_cover].any() for row in new_cover)  # each new canvas is there for a missed placement
    assert covers.plan_cover(points, bounds, existing=after) == after  # planning again changes nothing


def test_existing_canvases_that_cover_nothing_are_dropped():
    bbox, ps = (300, 300), [Placement(300, 250, 0.8)]
    bounds = covers.grid_bounds([bbox], ps, 1.2)
    useless = CoverCanvas(5000, 5000, 5000, 5000)
    plan = covers.plan_cover(covers.placement_points(*bbox, ps), bounds, existing=[useless])
    assert useless not in plan and len(plan) == 1


canvas_values = st.tuples(*[st.integers(0, 4000)] * 4).map(lambda v: CoverCanvas(*v))


@settings(max_examples=150, deadline=None)
@given(bbox=bboxes, ps=placement_lists, canvases=st.lists(canvas_values, max_size=30), r=ratios,
       area=st.floats(1.0, 3.0), stretch=st.floats(1.0, 2.0), cap=st.sampled_from([1.0, 2.0, 3.0]),
       planned=st.booleans())
def test_containment_lookup_agrees_with_brute_force(bbox, ps, canvases, r, area, stretch, cap, planned):
    bounds = covers.CoverBounds(area, stretch, cap)
    if planned:  # canvases that do cover the placements, plus the random ones
        canvases = covers.plan_cover(covers.placement_points(*bbox, ps[::2]), bounds) + canvases
    index = covers.canvas_index(canvases, bbox[0] / bbox[1])
    vectorised = covers.find_covering(index, covers.placement_points(*bbox, ps), bounds).tolist()
    for p, k in zip(ps, vectorised):
        assert covers.find_covering_placement(index, *bbox, p, bounds) == k
        brute = covers.find_covering_brute_force(canvases, *bbox, p, bounds)
        assert (k, brute) == (-1, -1) or index.canvases[k] == canvases[brute]


def test_lookup_prefers_the_sharpest_covering_canvas_and_misses_clearly():
    bbox, p = (400, 300), Placement(600, 300, 0.8)
    own = covers.request_canvas(*bbox, p)
    bigger = CoverCanvas(*(v + 100 for v in own))
    bounds = covers.CoverBounds(1.8, 1.0)
    index = covers.canvas_index([bigger, own], 4 / 3)
    assert index.canvases[covers.find_covering_placement(index, *bbox, p, bounds)] == own
    assert covers.find_covering_brute_force([bigger, own], *bbox, p, bounds) == 1
    assert covers.find_covering_placement(covers.canvas_index([bigger], 4 / 3), *bbox, p, bounds) == 0
    smaller = CoverCanvas(own.top, own.right - 1, own.bottom, own.left)
    assert covers.find_covering_placement(covers.canvas_index([smaller], 4 / 3), *bbox, p, bounds) == -1
    assert covers.find_covering_placement(covers.canvas_index([], 4 / 3), *bbox, p, bounds) == -1
    huge = CoverCanvas(*(v + 3000 for v in own))  # dominates, but far over the area bound
    assert covers.find_covering_placement(covers.canvas_index([huge], 4 / 3), *bbox, p, bounds) == -1


def test_queued_misses_plan_like_their_placements():
    bbox, ps = (500, 400), dense_mix(10, seed=3)
    bounds = covers.grid_bounds([bbox], ps, 1.2)
    misses = [covers.request_canvas(*bbox, p) for p in ps[:5]]
    points = covers.join_points(covers.placement_points(*bbox, ps[5:]), covers.canvas_points(misses, 1.25))
    canvases = covers.plan_cover(points, bounds)
    index = covers.canvas_index(canvases, 1.25)
    assert all(covers.find_covering_placement(index, *bbox, p, bounds) >= 0 for p in ps)
    with pytest.raises(covers.CoverError, match="different products"):
        covers.join_points(covers.placement_points(*bbox, ps), covers.placement_points(100, 400, ps))


def test_grid_exponents_are_bucket_for():
    from bggen_assets.core.geometry import bucket_for

    ps = dense_mix(40, seed=1)
    for bbox in ((31, 700), (640, 480)):
        for r in (1.1, 1.2, 1.5):
            exps = covers.grid_exponents(*bbox, ps, r).tolist()
            assert exps == [list(bucket_for(place_product(*bbox, p), r)[:4]) for p in ps]


def test_bad_bounds_are_refused():
    with pytest.raises(covers.CoverError, match="bounds"):
        covers.plan_cover(covers.placement_points(100, 100, [Placement(200, 200)]), covers.CoverBounds(0.9, 1.0))
    with pytest.raises(covers.CoverError, match="r must be > 1"):
        covers.grid_exponents(100, 100, [Placement(200, 200)], 1.0)
    assert math.isfinite(covers.grid_bounds([(100, 100)], [], 1.2).area)


def test_one_canvas_per_grid_bucket_is_the_fallback_and_fits_the_bounds():
    """Where the greedy cover would need more canvases than the grid, the plan has one per grid
    bucket instead: each the join of its placements, inside the bucket's canvas, so within bounds."""
    bbox, ps, r = (8, 8), [Placement(20, 20, 0.5, 0.0, 0.0), Placement(31, 110, 0.6, 0.2, 0.0),
                           Placement(70, 254, 0.6, 0.2, 0.0)], 1.1
    bounds = covers.grid_bounds([bbox], ps, r)
    points = covers.placement_points(*bbox, ps)
    exps = covers.grid_exponents(*bbox, ps, r)
    groups = np.unique(exps, axis=0, return_inverse=True)[1].reshape(-1)
    per_group = covers._one_per_group(covers._Problem(points, *covers._own_limits(points, bounds), bounds.max_aspect),
                                      np.arange(len(ps)), groups)
    assert per_group is not None and len(per_group) == len(set(map(tuple, exps.tolist()))) == 2
    canvases, _ = covers.plan_product_cover(*bbox, ps, r)
    assert len(canvases) <= 2
    assert (covers.find_covering(covers.canvas_index(canvases, 1.0), points, bounds) >= 0).all()
