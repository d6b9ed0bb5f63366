"""Positioning, bucketing and crop geometry (the paper's formula, DESIGN.md "Geometry and bucketing").

Everything here is integer pixel geometry plus one float crop box, so that a placement served from
its bucket canvas has exactly the placement's size and the product exactly at its placed box:

* `place_product` scales the product bbox into the placement (s = f * min(W/w, H/h)) and splits the
  free space by the anchor, in whole pixels.
* `bucket_for` maps the paddings to per-side exponents B_D = ceil(log_r((P_D + D) / D)).
* `canvas_layout` renders a bucket for one product at a pixel budget: the product at (pw, ph) px and
  a padding of at least (r^B_D - 1) * extent on each side, so every placement of the bucket fits.
* `crop_box` is the float source box in the canvas that maps onto the placement when resized to
  W x H: the product's canvas box lands exactly on the placed box (x and y scaled separately,
  by pw/sw and ph/sh, so rounding never shifts the product by a pixel).
* `CoverCanvas` is a canvas chosen freely instead of on the grid (core/covers.py): per-side padding
  in thousandths of the product's extent. `canvas_layout` renders it in integer arithmetic, so a
  placement it dominates is an exact crop as well; `canvas_from_id` reads either kind of id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np

MAX_SIDE = 8192


class GeometryError(ValueError):
    """A placement or bbox that cannot be positioned."""


@dataclass(frozen=True, order=True)
class Placement:
    """An ad slot: W x H pixels, the fraction of the limiting side the product fills, and an anchor."""

    width: int
    height: int
    fill: float = 0.8
    anchor_x: float = 0.5
    anchor_y: float = 0.5

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
                raise GeometryError(f"placement {name} must be an integer in [1, {MAX_SIDE}], got {value!r}")
        if not (isinstance(self.fill, (int, float)) and 0.0 < self.fill <= 1.0):
            raise GeometryError(f"placement fill must be in (0, 1], got {self.fill!r}")
        for name in ("anchor_x", "anchor_y"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise GeometryError(f"placement {name} must be in [0, 1], got {value!r}")

    @property
    def id(self) -> str:
        return f"{self.width}x{self.height}-f{self.fill:g}-a{self.anchor_x:g},{self.anchor_y:g}"


class PlacedBox(NamedTuple):
    """The product's box inside a W x H placement, in whole pixels."""

    x: int
    y: int
    w: int
    h: int
    canvas_w: int
    canvas_h: int

    @property
    def pad_left(self) -> int:
        return self.x

    @property
    def pad_top(self) -> int:
        return self.y

    @property
    def pad_right(self) -> int:
        return self.canvas_w - self.x - self.w

    @property
    def pad_bottom(self) -> int:
        return self.canvas_h - self.y - self.h


class Bucket(NamedTuple):
    """Per-side padding exponents (top, right, bottom, left) at ratio r."""

    top: int
    right: int
    bottom: int
    left: int
    r: float

    @property
    def id(self) -> str:
        return f"r{self.r:g}-t{self.top}-r{self.right}-b{self.bottom}-l{self.left}"

    @classmethod
    def from_id(cls, bucket_id: str) -> "Bucket":
        try:
            r_part, t, rr, b, l = bucket_id.split("-")
            if not (r_part[0] == "r" and t[0] == "t" and rr[0] == "r" and b[0] == "b" and l[0] == "l"):
                raise ValueError
            return cls(int(t[1:]), int(rr[1:]), int(b[1:]), int(l[1:]), float(r_part[1:]))
        except (ValueError, IndexError):
            raise GeometryError(f"not a bucket id: {bucket_id!r}") from None


class CanvasLayout(NamedTuple):
    """A bucket rendered for one product: canvas size and the product's box on it (pixels)."""

    width: int
    height: int
    product_x: int
    product_y: int
    product_w: int
    product_h: int

    @property
    def product_box(self) -> tuple[int, int, int, int]:
        return (self.product_x, self.product_y, self.product_w, self.product_h)


def _check_bbox(bbox_w: int, bbox_h: int) -> None:
    if bbox_w < 1 or bbox_h < 1:
        raise GeometryError(f"product bbox must be at least 1x1 px, got {bbox_w}x{bbox_h}")


def place_product(bbox_w: int, bbox_h: int, placement: Placement) -> PlacedBox:
    """Scale s = f * min(W/w, H/h); paddings split by the anchor (DESIGN.md), rounded to pixels."""
    _check_bbox(bbox_w, bbox_h)
    W, H = placement.width, placement.height
    s = placement.fill * min(W / bbox_w, H / bbox_h)
    sw = min(W, max(1, round(s * bbox_w)))
    sh = min(H, max(1, round(s * bbox_h)))
    x = round(placement.anchor_x * (W - sw))
    y = round(placement.anchor_y * (H - sh))
    return PlacedBox(x, y, sw, sh, W, H)


def bucket_exponent(pad: int, extent: int, r: float) -> int:
    """Smallest B >= 0 with r**B >= (pad + extent) / extent, i.e. ceil(log_r((P + D) / D)).

    log() alone can land one off on exact powers, so the result is corrected against r**B.
    """
    if pad <= 0:
        return 0
    ratio = (pad + extent) / extent
    b = max(0, math.ceil(math.log(ratio) / math.log(r)))
    while r**b < ratio:
        b += 1
    while b > 0 and r ** (b - 1) >= ratio:
        b -= 1
    return b


def bucket_for(placed: PlacedBox, r: float = 1.2) -> Bucket:
    if not r > 1.0:
        raise GeometryError(f"bucket ratio r must be > 1, got {r!r}")
    return Bucket(
        top=bucket_exponent(placed.pad_top, placed.h, r),
        right=bucket_exponent(placed.pad_right, placed.w, r),
        bottom=bucket_exponent(placed.pad_bottom, placed.h, r),
        left=bucket_exponent(placed.pad_left, placed.w, r),
        r=r,
    )


def _pad_px(exponent: int, r: float, extent_px: int) -> int:
    # ceil with a hair of slack: (r^B - 1) * extent is often an exact integer computed a ulp high.
    return max(0, math.ceil((r**exponent - 1.0) * extent_px - 1e-9))


def canvas_layout(bucket: "Bucket | CoverCanvas", bbox_w: int, bbox_h: int, pixel_budget: int) -> CanvasLayout:
    """Canvas for `bucket` (a grid bucket or a cover canvas) and a product of bbox aspect w:h, with
    about `pixel_budget` pixels."""
    _check_bbox(bbox_w, bbox_h)
    if pixel_budget < 64:
        raise GeometryError(f"pixel budget too small: {pixel_budget}")
    if isinstance(bucket, CoverCanvas):
        return _cover_layout(bucket, bbox_w, bbox_h, pixel_budget)
    r = bucket.r
    units_w = r**bucket.left + r**bucket.right - 1.0
    units_h = r**bucket.top + r**bucket.bottom - 1.0
    k = math.sqrt(pixel_budget / (bbox_w * units_w * bbox_h * units_h))
    pw, ph = max(1, round(k * bbox_w)), max(1, round(k * bbox_h))
    left, right = _pad_px(bucket.left, r, pw), _pad_px(bucket.right, r, pw)
    top, bottom = _pad_px(bucket.top, r, ph), _pad_px(bucket.bottom, r, ph)
    return CanvasLayout(left + pw + right, top + ph + bottom, left, top, pw, ph)


def crop_box(layout: CanvasLayout, placed: PlacedBox) -> tuple[float, float, float, float]:
    """Float (x0, y0, x1, y1) box of the canvas that, resized to the placement, puts the product's
    canvas box exactly on the placed box."""
    tx = layout.product_w / placed.w
    ty = layout.product_h / placed.h
    x0 = layout.product_x - placed.x * tx
    y0 = layout.product_y - placed.y * ty
    x1 = x0 + placed.canvas_w * tx
    y1 = y0 + placed.canvas_h * ty
    eps = 1e-6
    if x0 < -eps or y0 < -eps or x1 > layout.width + eps or y1 > layout.height + eps:
        raise GeometryError(f"placement {placed} does not fit canvas {layout}: box {(x0, y0, x1, y1)}")
    return (max(0.0, x0), max(0.0, y0), min(float(layout.width), x1), min(float(layout.height), y1))


def plan_buckets(bbox_w: int, bbox_h: int, placements, r: float = 1.2) -> dict[Bucket, list[Placement]]:
    """Group placements by bucket for one product: one generation per bucket serves them all."""
    groups: dict[Bucket, list[Placement]] = {}
    for placement in placements:
        groups.setdefault(bucket_for(place_product(bbox_w, bbox_h, placement), r), []).append(placement)
    return groups


# -- cover canvases (beyond the paper's grid) ------------------------------------------------------
COVER_PAD_SCALE = 1000  # a cover canvas's paddings are integers in thousandths of the product's extent
MAX_COVER_PAD = MAX_SIDE * COVER_PAD_SCALE  # a 1 px product in an 8192 px placement


class CoverCanvas(NamedTuple):
    """A canvas chosen freely (core/covers.py): padding per side (top, right, bottom, left) in
    thousandths of the product's extent on that axis (sh for top/bottom, sw for left/right).

    Integers, so the id round-trips exactly, and a placement needing P_D px of padding beside a
    D px product fits when the side's value v satisfies v * D >= 1000 * P_D: an exact test."""

    top: int
    right: int
    bottom: int
    left: int

    @property
    def id(self) -> str:
        return f"c-t{self.top}-r{self.right}-b{self.bottom}-l{self.left}"

    @classmethod
    def from_id(cls, canvas_id: str) -> "CoverCanvas":
        """Only canonical ids (what `.id` writes) are accepted, so one canvas has one id."""
        try:
            c, *sides = canvas_id.split("-")
            if c != "c" or [v[:1] for v in sides] != ["t", "r", "b", "l"] or not all(v[1:].isdigit() for v in sides):
                raise ValueError
            canvas = cls(*(int(v[1:]) for v in sides))
            if canvas.id != canvas_id or max(canvas) > MAX_COVER_PAD:
                raise ValueError
            return canvas
        except (ValueError, IndexError):
            raise GeometryError(f"not a cover canvas id: {canvas_id!r}") from None

    @property
    def units_w(self) -> float:
        """Canvas width in units of the product's width."""
        return 1.0 + (self.left + self.right) / COVER_PAD_SCALE

    @property
    def units_h(self) -> float:
        return 1.0 + (self.top + self.bottom) / COVER_PAD_SCALE

    @classmethod
    def inside_bucket(cls, bucket: Bucket) -> "CoverCanvas":
        """The largest cover canvas inside a grid bucket's canvas on every side: a placement it
        dominates is an exact crop of the generated grid canvas too (containment over grid canvases)."""
        return cls(*(math.floor((bucket.r**e - 1.0) * COVER_PAD_SCALE + 1e-9)
                     for e in (bucket.top, bucket.right, bucket.bottom, bucket.left)))


CanvasSpec = Union[Bucket, CoverCanvas]


def canvas_from_id(canvas_id: str) -> CanvasSpec:
    """A grid bucket id (`r1.2-t1-r7-b1-l7`) or a cover canvas id (`c-t125-r3400-b125-l3400`)."""
    if canvas_id.startswith("c-"):
        return CoverCanvas.from_id(canvas_id)
    try:
        return Bucket.from_id(canvas_id)
    except GeometryError:
        raise GeometryError(f"not a bucket or cover canvas id: {canvas_id!r}") from None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _cover_layout(canvas: CoverCanvas, bbox_w: int, bbox_h: int, pixel_budget: int) -> CanvasLayout:
    # The same sizing as the grid's; the paddings in integers: ceil(v * extent / 1000) px >= the
    # padding of every placement the canvas dominates, with no float rounding to slip through.
    k = math.sqrt(pixel_budget / (bbox_w * canvas.units_w * bbox_h * canvas.units_h))
    pw, ph = max(1, round(k * bbox_w)), max(1, round(k * bbox_h))
    s = COVER_PAD_SCALE
    left, right = _ceil_div(canvas.left * pw, s), _ceil_div(canvas.right * pw, s)
    top, bottom = _ceil_div(canvas.top * ph, s), _ceil_div(canvas.bottom * ph, s)
    return CanvasLayout(left + pw + right, top + ph + bottom, left, top, pw, ph)


# -- the same geometry over many placements at once (numpy) -------------------------------------
class PlacedBoxes(NamedTuple):
    """`place_product` for an array of placements: int64 arrays x, y, w, h, W, H (one per placement)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    canvas_w: np.ndarray
    canvas_h: np.ndarray

    def sides(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) padding and (N, 4) product extent per side (top, right, bottom, left), in px."""
        pad = np.stack([self.y, self.canvas_w - self.x - self.w, self.canvas_h - self.y - self.h, self.x], axis=1)
        return pad, np.stack([self.h, self.w, self.h, self.w], axis=1)


def place_product_array(bbox_w: int, bbox_h: int, placements) -> PlacedBoxes:
    """`place_product` for many placements, the same IEEE operations in the same order (numpy's
    rint rounds half to even like Python's round), so the boxes are identical, pixel for pixel."""
    _check_bbox(bbox_w, bbox_h)
    ps = list(placements)
    W = np.array([p.width for p in ps], np.int64)
    H = np.array([p.height for p in ps], np.int64)
    fill = np.array([p.fill for p in ps], np.float64)
    ax = np.array([p.anchor_x for p in ps], np.float64)
    ay = np.array([p.anchor_y for p in ps], np.float64)
    s = fill * np.minimum(W / bbox_w, H / bbox_h)
    sw = np.minimum(W, np.maximum(1, np.rint(s * bbox_w).astype(np.int64)))
    sh = np.minimum(H, np.maximum(1, np.rint(s * bbox_h).astype(np.int64)))
    x = np.rint(ax * (W - sw)).astype(np.int64)
    y = np.rint(ay * (H - sh)).astype(np.int64)
    return PlacedBoxes(x, y, sw, sh, W, H)


def bucket_exponent_array(pad: np.ndarray, extent: np.ndarray, r: float) -> np.ndarray:
    """`bucket_exponent` elementwise. The powers come from Python's own r**B (a table), and the
    log estimate is corrected against them exactly as there, so the exponents are identical."""
    pad = np.asarray(pad, np.int64)
    ratio = (pad + np.asarray(extent, np.int64)) / np.asarray(extent, np.int64)
    b = np.maximum(0, np.ceil(np.log(ratio) / math.log(r))).astype(np.int64)
    powers = np.array([r**e for e in range(int(b.max(initial=0)) + 3)])
    while True:  # the estimate is off by at most one or two either way
        up = powers[b] < ratio
        down = (b > 0) & (powers[np.maximum(b - 1, 0)] >= ratio)
        if not (up.any() or down.any()):
            break
        b = b + up - down
        if int(b.max(initial=0)) + 1 >= len(powers):
            powers = np.array([r**e for e in range(int(b.max()) + 3)])
    return np.where(pad <= 0, 0, b)
