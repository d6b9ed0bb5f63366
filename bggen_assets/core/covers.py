"""Bucket covers: fewer canvases than the paper's grid at no worse resolution (DESIGN.md "Bucket covers").

A canvas is generated at a fixed pixel budget, so a placement cropped from a canvas larger than it
needs loses resolution by the **area ratio**: canvas extent / the placement's needed extent, width x
height, in units of the product's size. Each placement of a product is a **point**: its four needed
paddings (top, right, bottom, left), each over the product's extent on that axis (P_D / D, the
paper's quantity). A `CoverCanvas` (four paddings) **covers** a point when it

* dominates it: at least the needed padding on every side (so the placement is an exact crop, the
  product on its placed box to the pixel: geometry.canvas_layout / crop_box),
* within the **area bound**: canvas area / needed area <= `CoverBounds.area`, and
* within the **stretch bound**: the generator renders at most `max_aspect` elongated and stretches
  the rest (diffusion.generation_size), so a canvas may be more elongated than the model's cap only
  as far as the placement needs itself, times `CoverBounds.stretch`.

Both bounds default to the paper's grid's own worst case on the same placements (`grid_bounds`),
so a cover is never worse than the grid there; choosing the canvases is then a set cover, solved
greedily (`plan_cover`): seed on the uncovered point with the smallest needed area (it limits the
canvas most), try the component-wise maxima of the seed with its neighbours as canvases (widened or
heightened where the join is more elongated than the stretch bound allows), grow the best one while
it covers more, repeat; then drop the canvases others make redundant. `plan_product_cover` also
caps the count at the grid's: one canvas per grid bucket, where the greedy cover would need more.

Serving asks the other way round (`find_covering_placement`, `find_covering` for many): which
canvas of this product covers this request, and the one with the smallest area ratio (the sharpest
crop), over a `CanvasIndex`, a few small arrays per product sorted by area.

Pipeline use: bounds once per partition (`grid_bounds` over its products and placements at r), per
product `plan_product_cover(..., bounds=, existing=the previous plan's canvases)`; a miss queues
`request_canvas(...).id`, and planning turns queued ids back into points (`canvas_points`,
`join_points`). Canvas ids are `CoverCanvas.id` (`c-t125-r3400-b125-l3400`), read back with
geometry.canvas_from_id next to grid bucket ids; geometry.canvas_layout renders either.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from .diffusion_config import DiffusionConfig
from .geometry import (
    COVER_PAD_SCALE,
    CoverCanvas,
    GeometryError,
    PlacedBox,
    Placement,
    bucket_exponent_array,
    place_product,
    place_product_array,
)

DEFAULT_MAX_ASPECT = DiffusionConfig.max_aspect  # the most elongated shape the generator renders
_CANDIDATES = 256  # candidate canvases tried per greedy step (an even sample of the distinct ones)
_GROW_STEPS = 4  # rounds of growing the best candidate towards the points it misses


class CoverError(GeometryError):
    """Bounds or inputs a cover cannot be planned for."""


class CoverBounds(NamedTuple):
    """What a covering canvas may cost a placement: area ratio and stretch beyond the aspect cap."""

    area: float
    stretch: float
    max_aspect: float = DEFAULT_MAX_ASPECT

    def check(self) -> "CoverBounds":
        if not (self.area >= 1.0 and self.stretch >= 1.0 and self.max_aspect >= 1.0):
            raise CoverError(f"cover bounds must all be >= 1, got {self}")
        return self


class PlacementPoints(NamedTuple):
    """A product's placements as points (one row each, in the order given).

    pads: float64 (N, 4) needed padding / product extent, sides (top, right, bottom, left);
    need: int64 (N, 4) the smallest cover-canvas value per side that fits (ceil(1000 * P / D), exact);
    area: float64 (N,) needed extent area in product units, (1 + l + r) * (1 + t + b) = W/sw * H/sh;
    aspect: float64 (N,) the placement's aspect as the units give it: product aspect * units_w / units_h
    (W/H up to the rounding of the placed box)."""

    pads: np.ndarray
    need: np.ndarray
    area: np.ndarray
    aspect: np.ndarray
    product_aspect: float

    @property
    def count(self) -> int:
        return len(self.area)


class CanvasIndex(NamedTuple):
    """A product's canvases as arrays, for containment lookups, sorted by area (the first that
    covers a request is its sharpest crop): value (K, 4) int64 paddings in thousandths (CoverCanvas
    order), area (K,), aspect (K,) as for points and its inverse; canvases in the same order."""

    value: np.ndarray
    area: np.ndarray
    aspect: np.ndarray
    inverse_aspect: np.ndarray
    canvases: tuple[CoverCanvas, ...]

    @property
    def count(self) -> int:
        return len(self.canvases)


# The arithmetic below is written once and used by planning, lookup and the brute-force reference
# alike (the same float operations in the same order), so they agree even on a tie with a bound.
def _point_units(pads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 1.0 + pads[..., 1] + pads[..., 3], 1.0 + pads[..., 0] + pads[..., 2]


def _canvas_units(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = COVER_PAD_SCALE
    return 1.0 + (value[..., 1] + value[..., 3]) / s, 1.0 + (value[..., 0] + value[..., 2]) / s


def _stretch(canvas_aspect, point_aspect, max_aspect: float):
    """How much more elongated the canvas is than max(the model's cap, the placement's own aspect), >= 1."""
    return np.maximum(1.0, np.maximum(canvas_aspect / np.maximum(max_aspect, point_aspect),
                                      (1.0 / canvas_aspect) / np.maximum(max_aspect, 1.0 / point_aspect)))


def placement_points(bbox_w: int, bbox_h: int, placements: Sequence[Placement]) -> PlacementPoints:
    """The placements of a bbox_w x bbox_h product as points (geometry.place_product, vectorised)."""
    pad_px, extent = place_product_array(bbox_w, bbox_h, placements).sides()
    pads = pad_px / extent
    need = -(-COVER_PAD_SCALE * pad_px // extent)  # exact ceil: the smallest v with v * D >= 1000 * P
    product_aspect = bbox_w / bbox_h
    uw, uh = _point_units(pads)
    return PlacementPoints(pads, need, uw * uh, product_aspect * uw / uh, product_aspect)


def request_canvas(bbox_w: int, bbox_h: int, placement: Placement) -> CoverCanvas:
    """The smallest cover canvas a placement fits: what a miss asks for (its id can be queued like
    a grid bucket id; canvas_points turns it back into a point for planning)."""
    return CoverCanvas(*(int(v) for v in placement_points(bbox_w, bbox_h, [placement]).need[0]))


def canvas_points(canvases: Sequence[CoverCanvas], product_aspect: float) -> PlacementPoints:
    """Canvases as points needing exactly their paddings (queued misses, see request_canvas)."""
    need = np.array([tuple(c) for c in canvases], np.int64).reshape(-1, 4)
    pads = need / COVER_PAD_SCALE
    uw, uh = _point_units(pads)
    return PlacementPoints(pads, need, uw * uh, product_aspect * uw / uh, product_aspect)


def join_points(*parts: PlacementPoints) -> PlacementPoints:
    """One product's points from several sources (its placements, its queued misses), in order."""
    if len({p.product_aspect for p in parts}) != 1:
        raise CoverError("points of different products cannot be joined")
    fields = ("pads", "need", "area", "aspect")
    return PlacementPoints(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields), parts[0].product_aspect)


def _canvas_arrays(value: np.ndarray, product_aspect: float) -> tuple[np.ndarray, np.ndarray]:
    uw, uh = _canvas_units(value)
    return uw * uh, product_aspect * uw / uh


def canvas_index(canvases: Sequence[CoverCanvas], product_aspect: float) -> CanvasIndex:
    """The arrays `find_covering` searches, for one product (its bbox aspect w/h); equal areas keep
    the order given."""
    value = np.array([tuple(c) for c in canvases], np.int64).reshape(-1, 4)
    area, aspect = _canvas_arrays(value, product_aspect)
    order = np.argsort(area, kind="stable")
    return CanvasIndex(np.ascontiguousarray(value[order]), area[order], aspect[order], 1.0 / aspect[order],
                       tuple(canvases[i] for i in order.tolist()))


def _own_limits(points: PlacementPoints, bounds: CoverBounds) -> tuple[np.ndarray, np.ndarray]:
    """Per point: the area ratio and the stretch a covering canvas may reach. Never below what the
    point's own smallest canvas costs (rounding up to thousandths adds at most 0.1% per side), so a
    point can always be covered by its own canvas."""
    own_area, own_aspect = _canvas_arrays(points.need, points.product_aspect)
    area_lim = np.maximum(bounds.area, own_area / points.area)
    stretch_lim = np.maximum(bounds.stretch, _stretch(own_aspect, points.aspect, bounds.max_aspect))
    return area_lim, stretch_lim


def _covers(value, area, aspect, need, p_area, p_aspect, area_lim, stretch_lim, max_aspect: float) -> np.ndarray:
    """(K, N) bool: canvas k (value, area, aspect) covers point n (need, p_area, p_aspect, limits)."""
    ok = area[:, None] / p_area[None, :] <= area_lim[None, :]
    for side in range(4):
        ok &= value[:, None, side] >= need[None, :, side]
    # _stretch(...) <= limit, one term at a time (max is exact, so this is the same test)
    ok &= aspect[:, None] / np.maximum(max_aspect, p_aspect)[None, :] <= stretch_lim[None, :]
    ok &= (1.0 / aspect)[:, None] / np.maximum(max_aspect, 1.0 / p_aspect)[None, :] <= stretch_lim[None, :]
    return ok  # and 1 <= stretch_lim, which _own_limits guarantees


def coverage(index: CanvasIndex, points: PlacementPoints, bounds: CoverBounds) -> np.ndarray:
    """(K, N) bool: which canvas covers which point."""
    area_lim, stretch_lim = _own_limits(points, bounds.check())
    return _covers(index.value, index.area, index.aspect, points.need, points.area, points.aspect,
                   area_lim, stretch_lim, bounds.max_aspect)


# -- the grid's side of the comparison -------------------------------------------------------------
def grid_exponents(bbox_w: int, bbox_h: int, placements: Sequence[Placement], r: float) -> np.ndarray:
    """(N, 4) int64 each placement's grid bucket exponents (top, right, bottom, left): bucket_for's."""
    if not r > 1.0:
        raise CoverError(f"bucket ratio r must be > 1, got {r!r}")
    pad_px, extent = place_product_array(bbox_w, bbox_h, placements).sides()
    return bucket_exponent_array(pad_px, extent, r)


def grid_canvas_pads(exponents: np.ndarray, r: float) -> np.ndarray:
    """(N, 4) the paddings r^B - 1 of grid bucket canvases (per product extent, as for points)."""
    powers = np.array([r**e for e in range(int(exponents.max(initial=0)) + 1)])
    return powers[exponents] - 1.0


def grid_costs(grid_pads: np.ndarray, points: PlacementPoints, max_aspect: float = DEFAULT_MAX_ASPECT):
    """Per placement: (area ratio, stretch) of serving it from its own grid bucket's canvas."""
    uw, uh = _point_units(grid_pads)
    return uw * uh / points.area, _stretch(points.product_aspect * uw / uh, points.aspect, max_aspect)


def cover_costs(index: CanvasIndex, points: PlacementPoints, chosen: np.ndarray,
                max_aspect: float = DEFAULT_MAX_ASPECT):
    """Per placement: (area ratio, stretch) of serving it from canvas `chosen` (find_covering)."""
    return index.area[chosen] / points.area, _stretch(index.aspect[chosen], points.aspect, max_aspect)


def grid_bounds(products: Sequence[tuple[int, int]], placements: Sequence[Placement], r: float,
                max_aspect: float = DEFAULT_MAX_ASPECT) -> CoverBounds:
    """The grid's worst case over these products and placements: the bounds under which a cover is
    never worse than the paper's grid on them."""
    area, stretch = 1.0, 1.0
    for bw, bh in products:
        pts = placement_points(bw, bh, placements)
        a, s = grid_costs(grid_canvas_pads(grid_exponents(bw, bh, placements, r), r), pts, max_aspect)
        area, stretch = max(area, float(a.max(initial=1.0))), max(stretch, float(s.max(initial=1.0)))
    return CoverBounds(area, stretch, max_aspect)


# -- planning --------------------------------------------------------------------------------------
def _distinct_sample(rows: np.ndarray, k: int) -> np.ndarray:
    """At most k of the distinct rows, evenly spread over them in a fixed order (deterministic).
    Rows are told apart by a 64-bit hash of their four values: a collision only loses a candidate."""
    key = rows @ np.array([0x9E3779B97F4A7C15 - (1 << 64), 0xC2B2AE3D27D4EB4F - (1 << 64), 0x165667B19E3779F9,
                           0x27D4EB2F165667C5], np.int64)
    _, first = np.unique(key, return_index=True)
    if len(first) > k:
        first = first[np.linspace(0, len(first) - 1, k).round().astype(np.int64)]
    return rows[first]


class _Problem(NamedTuple):
    points: PlacementPoints
    area_lim: np.ndarray
    stretch_lim: np.ndarray
    max_aspect: float

    def covers(self, value: np.ndarray, pool: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(K, len(pool)) bool: canvases `value` (K, 4) against the points of `pool`."""
        p = self.points
        area, aspect = _canvas_arrays(value, p.product_aspect)
        return _covers(value, area, aspect, p.need[pool], p.area[pool], p.aspect[pool],
                       self.area_lim[pool], self.stretch_lim[pool], self.max_aspect)

    def fits(self, value: np.ndarray, point: int) -> np.ndarray:
        """(K,) bool: canvases `value` within point's area and stretch limits (dominance aside)."""
        p = self.points
        area, aspect = _canvas_arrays(value, p.product_aspect)
        return ((area / p.area[point] <= self.area_lim[point])
                & (_stretch(aspect, p.aspect[point], self.max_aspect) <= self.stretch_lim[point]))

    def reshape(self, value: np.ndarray, points: np.ndarray | int) -> np.ndarray:
        """Canvases `value` made just wide (or tall) enough for the stretch limits of `points`.

        The join of points can be more elongated than a canvas that covers them all (the grid's,
        which is larger on every side): widening the join to the aspect they allow keeps it inside
        such a canvas, so within their area limits too. The extra padding is split between the two
        sides in proportion to what they have."""
        p = self.points
        cap = self.max_aspect
        lim = np.atleast_1d(self.stretch_lim[points])
        aspect = np.atleast_1d(p.aspect[points])
        lo = float(np.max(1.0 / (lim * np.maximum(cap, 1.0 / aspect))))  # the aspect allowed: [lo, hi]
        hi = float(np.min(lim * np.maximum(cap, aspect)))
        uw, uh = _canvas_units(value)
        a = p.product_aspect * uw / uh
        out = value.copy()
        scale = COVER_PAD_SCALE
        for (first, second), rows in (((1, 3), np.flatnonzero(a < lo)), ((0, 2), np.flatnonzero(a > hi))):
            if len(rows) == 0:
                continue
            if first == 1:  # too tall: widen to units_w = units_h * lo / product aspect
                want = np.ceil(scale * (uh[rows] * lo / p.product_aspect - 1.0)).astype(np.int64) + 1
            else:  # too wide: heighten to units_h = units_w * product aspect / hi
                want = np.ceil(scale * (uw[rows] * p.product_aspect / hi - 1.0)).astype(np.int64) + 1
            have = out[rows, first] + out[rows, second]
            extra = np.maximum(0, want - have)
            to_first = (extra * (out[rows, first] + 1)) // (have + 2)
            out[rows, first] += to_first
            out[rows, second] += extra - to_first
        return out


def _greedy(problem: _Problem, uncovered: np.ndarray) -> list[np.ndarray]:
    need, area = problem.points.need, problem.points.area
    order = np.argsort(area, kind="stable")
    uncovered = uncovered.copy()
    chosen: list[np.ndarray] = []
    for seed in order:
        if not uncovered[seed]:
            continue
        open_idx = np.flatnonzero(uncovered)
        # A canvas through the seed that covers point q contains max(seed, q), so q is in the pool:
        # the open points whose join with the seed is within the seed's area limit.
        joined = np.maximum(need[seed], need[open_idx])
        pool = open_idx[_canvas_arrays(joined, 1.0)[0] / area[seed] <= problem.area_lim[seed]]
        cands = problem.reshape(np.maximum(need[seed], need[pool]), seed)
        cands = _distinct_sample(cands[problem.fits(cands, seed)], _CANDIDATES)
        best, best_count = need[seed], 0
        for _ in range(_GROW_STEPS + 1):  # grow the best canvas towards the pool points it misses
            if len(cands) == 0:
                break
            cov = problem.covers(cands, pool)
            counts = cov.sum(axis=1)
            i = int(counts.argmax())
            if counts[i] <= best_count:
                break
            best, best_count = cands[i], int(counts[i])
            missed = pool[~cov[i]]
            if len(missed) == 0:
                break
            cands = problem.reshape(np.maximum(best, need[missed]), seed)
            cands = _distinct_sample(cands[problem.fits(cands, seed)], _CANDIDATES)
        chosen.append(best)
        uncovered[pool[problem.covers(best[None], pool)[0]]] = False
        if uncovered[seed]:  # cannot happen: the seed's own canvas covers it (_own_limits)
            raise CoverError(f"internal: canvas {best} does not cover its seed point {need[seed]}")
    return chosen


def _drop_redundant(cov: np.ndarray, removable: np.ndarray) -> np.ndarray:
    """Keep-mask over canvases: drop each removable one (latest first) whose points all have
    another kept canvas."""
    keep = np.ones(len(cov), bool)
    counts = cov.sum(axis=0)
    for k in reversed(np.flatnonzero(removable)):
        mine = cov[k]
        if (counts[mine] >= 2).all():
            keep[k] = False
            counts -= mine
    return keep


def _one_per_group(problem: _Problem, todo: np.ndarray, groups: np.ndarray) -> list[np.ndarray] | None:
    """One canvas per group of the points in `todo` (their grid buckets): the join of its points,
    reshaped for their stretch limits; None unless every group's canvas covers all its points."""
    out = []
    labels, inverse = np.unique(groups[todo], return_inverse=True)
    for g in range(len(labels)):
        members = todo[inverse == g]
        canvas = problem.reshape(problem.points.need[members].max(axis=0)[None], members)
        if not problem.covers(canvas, members).all():
            return None
        out.append(canvas[0])
    return out


def plan_cover(points: PlacementPoints, bounds: CoverBounds, existing: Sequence[CoverCanvas] = (),
               groups: np.ndarray | None = None) -> list[CoverCanvas]:
    """Canvases covering every point under the bounds: the existing ones that still cover a point
    (all kept, in their order), then new ones for the points they leave uncovered.

    Stable: planning again with more placements keeps every canvas of the previous plan that still
    covers one of them, and adds canvases only for the points none of them covers.

    `groups` (one label per point, e.g. its grid bucket: plan_product_cover) caps the new canvases
    at one per group of uncovered points: where the greedy cover needs more than that, one canvas
    per group is planned instead (it always fits the bounds when they are the groups' own worst
    case, up to the rounding to thousandths)."""
    bounds = bounds.check()
    problem = _Problem(points, *_own_limits(points, bounds), bounds.max_aspect)
    kept = list(dict.fromkeys(existing))
    old_value = np.array([tuple(c) for c in kept], np.int64).reshape(-1, 4)
    old_cov = problem.covers(old_value)
    kept = [c for c, row in zip(kept, old_cov) if row.any()]
    old_cov = old_cov[old_cov.any(axis=1)]
    uncovered = ~old_cov.any(axis=0)
    new = _greedy(problem, uncovered)
    if not new:
        return kept
    new_value = np.array(new, np.int64)
    cov = np.concatenate([old_cov, problem.covers(new_value)])
    keep = _drop_redundant(cov, np.arange(len(cov)) >= len(kept))[len(kept):]
    new_value = new_value[keep]
    if groups is not None and len(new_value) > len(np.unique(groups[uncovered])):
        per_group = _one_per_group(problem, np.flatnonzero(uncovered), np.asarray(groups))
        if per_group is not None and len(per_group) < len(new_value):
            new_value = np.array(per_group, np.int64)
    return kept + [CoverCanvas(*(int(v) for v in row)) for row in new_value]


def plan_product_cover(bbox_w: int, bbox_h: int, placements: Sequence[Placement], r: float = 1.2,
                       bounds: CoverBounds | None = None, existing: Sequence[CoverCanvas] = (),
                       max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[list[CoverCanvas], CoverBounds]:
    """`plan_cover` for one product's placements, never more new canvases than the grid at r would
    generate for them; bounds default to the grid's worst case at r on these placements (the
    pipeline should rather compute them once per partition: grid_bounds)."""
    if bounds is None:
        bounds = grid_bounds([(bbox_w, bbox_h)], placements, r, max_aspect)
    exps = grid_exponents(bbox_w, bbox_h, placements, r)
    groups = np.unique(exps, axis=0, return_inverse=True)[1].reshape(-1) if len(exps) else None
    return plan_cover(placement_points(bbox_w, bbox_h, placements), bounds, existing, groups), bounds


# -- lookup ----------------------------------------------------------------------------------------
def find_covering(index: CanvasIndex, points: PlacementPoints, bounds: CoverBounds) -> np.ndarray:
    """Per point: the position in `index` (index.canvases) of the covering canvas with the smallest
    area ratio (the sharpest crop; the first of equals), or -1 where none covers."""
    cov = coverage(index, points, bounds)
    if index.count == 0:
        return np.full(points.count, -1, np.int64)
    first = cov.argmax(axis=0)  # the index is sorted by area
    return np.where(cov[first, np.arange(points.count)], first, -1)


class _Request(NamedTuple):
    need: tuple[int, int, int, int]
    area: float
    aspect: float
    area_lim: float
    stretch_lim: float


def _scalar_stretch(canvas_aspect: float, point_aspect: float, max_aspect: float) -> float:
    return max(1.0, canvas_aspect / max(max_aspect, point_aspect),
               (1.0 / canvas_aspect) / max(max_aspect, 1.0 / point_aspect))


def _sides(placed: PlacedBox) -> tuple[tuple[int, int], ...]:
    """(padding px, product extent px) per side, top, right, bottom, left."""
    return ((placed.pad_top, placed.h), (placed.pad_right, placed.w), (placed.pad_bottom, placed.h),
            (placed.pad_left, placed.w))


def _request(bbox_w: int, bbox_h: int, placement: Placement, bounds: CoverBounds) -> _Request:
    """One placement as a point, in Python scalars (the float operations of placement_points and
    _own_limits, in the same order)."""
    sides = _sides(place_product(bbox_w, bbox_h, placement))
    t, r, b, l = (p / d for p, d in sides)
    uw, uh = 1.0 + r + l, 1.0 + t + b
    area, aspect = uw * uh, bbox_w / bbox_h * uw / uh
    own = CoverCanvas(*(-(-COVER_PAD_SCALE * p // d) for p, d in sides))
    own_area = own.units_w * own.units_h
    own_stretch = _scalar_stretch(bbox_w / bbox_h * own.units_w / own.units_h, aspect, bounds.max_aspect)
    return _Request(tuple(own), area, aspect, max(bounds.area, own_area / area), max(bounds.stretch, own_stretch))


def find_covering_placement(index: CanvasIndex, bbox_w: int, bbox_h: int, placement: Placement,
                            bounds: CoverBounds) -> int:
    """`find_covering` for one request (the serving path): the position of the covering canvas with
    the smallest area ratio (the first of equals), or -1. The request in Python scalars, then a few
    array operations over the product's K canvases."""
    q = _request(bbox_w, bbox_h, placement, bounds)
    if index.count == 0:
        return -1
    cap = bounds.max_aspect
    # the terms of _stretch(...) <= limit one at a time, as in _covers (the same float operations)
    ok = ((index.value >= np.array(q.need)).all(axis=1) & (index.area / q.area <= q.area_lim)
          & (index.aspect / max(cap, q.aspect) <= q.stretch_lim)
          & (index.inverse_aspect / max(cap, 1.0 / q.aspect) <= q.stretch_lim))
    first = int(ok.argmax())  # the index is sorted by area
    return first if ok[first] else -1


def find_covering_brute_force(canvases: Sequence[CoverCanvas], bbox_w: int, bbox_h: int, placement: Placement,
                              bounds: CoverBounds) -> int:
    """The reference for the lookups: one canvas at a time, from the definitions (tests)."""
    q = _request(bbox_w, bbox_h, placement, bounds)
    sides = _sides(place_product(bbox_w, bbox_h, placement))
    best, best_area = -1, math.inf
    for k, c in enumerate(canvases):
        fits = all(v * extent >= COVER_PAD_SCALE * pad for v, (pad, extent) in zip(c, sides))
        area = c.units_w * c.units_h
        stretch = _scalar_stretch(bbox_w / bbox_h * c.units_w / c.units_h, q.aspect, bounds.max_aspect)
        if fits and area / q.area <= q.area_lim and stretch <= q.stretch_lim and area < best_area:
            best, best_area = k, area
    return best
