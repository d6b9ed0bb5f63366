"""Product masking: the alpha channel when there is one, else a classical masker for catalog
photos (product on a plain, gradient or lightly textured studio background), plus the checks
that reject masks the pipeline must not use.

Classical masker, step by step (all on a working copy whose long side is at most
``WORK_SIDE`` px; the mask is brought back to the input size at the end, with a sub-pixel
boundary taken from the upsampled evidence map):

1. **Background model from the border.**  The outer strip of the image is sampled; a
   quadratic surface in (x, y) is fitted per CIELAB channel with iterative outlier rejection
   (so a product that touches one border, or a shadow reaching the border, does not bend it).
   Uniform backgrounds and smooth linear/radial gradients are both predicted per pixel.
2. **Adaptive tolerance.**  The robust noise of the border residuals (1.4826 × MAD) sets the
   lightness and chroma tolerances (floors keep clean renders from over-segmenting).
3. **Evidence map.**  Chroma distance, brightening and *strong* darkening count as product.
   Mild, low-saturation darkening is what a soft shadow looks like and does not count unless
   the region has texture/edges (local gradient above the background's own gradient noise).
4. **Morphology** (open, close), **the product's parts** (the largest, crisp-outlined component
   and every other one that is product evidence too: see :func:`_select_parts`), **holes filled** (a hole
   stays open when it looks like plain background, or like the background in the product's own
   shadow: see :func:`fill_holes` and :func:`_shadowed_background`).
5. **Light parts closed off by an outline** (a white sole on white): regions the background
   flood from the image border cannot reach, with the mask and crisp step edges as walls, are
   added unless they look like plain background (see :func:`_add_enclosed`); so are **light
   parts** a few levels off the background that a crisp outline closes off once a shadow's
   fall-off is taken out (a white sneaker on white: see :func:`_light_parts`), parts clearly
   brighter than the background (:func:`_brighter_parts`) and parts of a tint of their own,
   which a shadow never has (:func:`_tinted_parts`, and :func:`_tint_plateau` for a product
   whose tint is faint all over); on a backdrop textured all over, a smooth region next to the
   mask much larger than the texture's own smooth cells (:func:`_smooth_parts`).  GrabCut below
   may not remove any of them.
6. **GrabCut refinement** at reduced resolution on the object's bounding box: sure foreground =
   eroded mask, sure background = outside the dilated mask, the band between is "probable"
   (shadow-like pixels start as probable background).  GrabCut may flip pixels only where it is
   confident (away from its own, coarser boundary); the fine boundary stays the evidence map's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "MaskResult",
    "MaskRejected",
    "classical_mask",
    "alpha_mask",
    "validate_mask",
    "mask_product",
    "mask_bbox",
    "borders_touched",
    "refine_with_grabcut",
    "largest_component",
    "fill_holes",
    "WORK_SIDE",
]

WORK_SIDE = 512          # long side of the working copy for the evidence map
GRABCUT_SIDE = 128       # long side of the GrabCut crop (GrabCut costs ~1.5 µs/pixel/iteration)
GRABCUT_ITERS = 2
MIN_WORK_SIDE = 48       # tiny images are upsampled to at least this short side


@dataclass(frozen=True, eq=False)
class MaskResult:
    """A product mask and how it was obtained."""

    mask: np.ndarray                      # bool H×W, same size as the image
    bbox: tuple[int, int, int, int]       # tight (x, y, w, h) of the mask
    method: str                           # "alpha" | "classical" | "yolo"
    score: float                          # confidence in [0, 1]
    reason: str                           # why this method / result


class MaskRejected(ValueError):
    """The mask cannot be used; ``reason`` says why (also the exception message)."""

    def __init__(self, reason: str, *, result: MaskResult | None = None):
        super().__init__(reason)
        self.reason = reason
        self.result = result


# ----------------------------------------------------------------------------- helpers
def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x, y, w, h) of a boolean mask; (0, 0, 0, 0) when empty."""
    if not mask.any():
        return (0, 0, 0, 0)
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return (int(x), int(y), int(w), int(h))


def borders_touched(mask: np.ndarray) -> int:
    """How many of the four image borders (outermost row/column) the mask reaches."""
    if mask.size == 0:
        return 0
    return int(mask[0, :].any()) + int(mask[-1, :].any()) + int(mask[:, 0].any()) + int(mask[:, -1].any())


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component."""
    m = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k


def fill_holes(mask: np.ndarray, *, evidence: np.ndarray | None = None,
               keep_open_min_frac: float = 0.004, keep_open_max_evidence: float = 0.5,
               residual: np.ndarray | None = None, offset_tol: float = 3.0,
               texture: np.ndarray | None = None, texture_low: float = -np.inf,
               plain_evidence: np.ndarray | None = None,
               fine_texture: tuple[np.ndarray, float, float] | None = None,
               own_evidence: np.ndarray | None = None) -> np.ndarray:
    """Fill background regions not connected to the image border.

    With ``evidence`` (foreground evidence, >1 = product), a hole that is sizeable
    (>= ``keep_open_min_frac`` of the mask area) and looks like the background stays open as a
    see-through hole (a handle, the gap between legs); everything else is filled.  "Looks like
    the background": mean evidence below ``keep_open_max_evidence``, under 1.5% of its pixels
    with strong evidence (> 2: a watch's hands on a dial are product detail, a see-through
    hole shows only plain background) and, with ``residual`` (H×W×C difference from the
    background model), a mean residual within ``offset_tol`` (a label or dial a few levels
    off the background is a surface of the product, even when no single pixel is) and,
    with ``texture`` (local high-pass energy), a mean texture of at least ``texture_low``
    (a smooth patch in a textured background is a product surface).

    With ``plain_evidence`` (the evidence map in which shadow-like darkening does not count) and
    ``residual``, a hole that fails that test still opens when it is the background *in shadow*
    (the product's drop shadow falls into its own ring or handle): see :func:`_shadowed_background`;
    ``fine_texture`` = (map, low, high) is its texture test (:func:`_fine_texture`: blind to the
    smooth ramp of a shadow, which the high-pass ``texture`` is not).  With ``own_evidence``
    (the pixels that are product by their own colour, not shadow-like darkening promoted by
    texture or a crisp rim), only a hole that those pixels enclose can open so: a light sole
    between a shoe's upper and the shadow under it is enclosed only with the shadow's help.
    """
    h, w = mask.shape
    m = np.zeros((h + 2, w + 2), np.uint8)
    m[1:-1, 1:-1] = mask.astype(np.uint8)
    ff = m.copy()
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(ff, flood, (0, 0), 2)
    filled = ff[1:-1, 1:-1] != 2
    if evidence is None:
        return filled
    holes = (filled & ~mask.astype(bool)).astype(np.uint8)
    if not holes.any():
        return filled
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    min_area = max(16.0, keep_open_min_frac * float(filled.sum()))
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not big:
        return filled
    # the per-hole statistics on the holes' box (7 px wider, the erosions' reach): the same sums
    # over the same pixels in the same order, without a pass over the whole image per statistic
    box = _box_around(holes, 7)
    labels_c, holes_c = labels[box], holes[box]
    crop = lambda a: None if a is None else a[box]   # noqa: E731
    open_ = _background_like(labels_c, n, evidence[box], crop(residual), offset_tol,
                             max_evidence=keep_open_max_evidence, texture=crop(texture),
                             texture_low=texture_low,
                             core=None if texture is None else cv2.erode(holes_c, _disk(7)).astype(bool))
    if plain_evidence is not None and residual is not None:
        ft, lo, hi, smooth = fine_texture if fine_texture is not None else (None, -np.inf, np.inf, -np.inf)
        allowed = np.ones(n, bool)
        if own_evidence is not None:
            own = own_evidence & mask.astype(bool)
            # (closed first: a thin grey part crossing the outline, a buckle over a strap, is all
            # edge and looks textured; a sole between an upper and its shadow is wider)
            own = cv2.morphologyEx(own.astype(np.uint8), cv2.MORPH_CLOSE, _disk(4)).astype(bool)
            inside = (fill_holes(own) & ~own)[box]
            enclosed_px = np.bincount(labels_c[inside & (labels_c > 0)], minlength=n)
            allowed = enclosed_px >= 0.95 * np.bincount(labels_c.ravel(), minlength=n)
        open_ |= allowed & _shadowed_background(labels_c, n, plain_evidence[box], residual[box], offset_tol,
                                                texture=crop(ft), texture_low=lo, texture_high=hi,
                                                smooth_low=smooth,
                                                core=None if ft is None else cv2.erode(holes_c, _disk(3)).astype(bool))
    reopen = open_[labels_c] & (labels_c > 0) & np.isin(labels_c, big)
    filled[box] &= ~reopen
    return filled


def _box_around(region: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Slices of the bounding box of ``region``'s nonzero pixels, ``pad`` px wider (clipped)."""
    x, y, bw, bh = cv2.boundingRect(region.astype(np.uint8))
    h, w = region.shape[:2]
    return slice(max(0, y - pad), min(h, y + bh + pad)), slice(max(0, x - pad), min(w, x + bw + pad))


def _shadowed_background(labels: np.ndarray, n: int, ev: np.ndarray, residual: np.ndarray,
                         offset_tol: float, *, texture: np.ndarray | None = None,
                         texture_low: float = -np.inf, texture_high: float = np.inf,
                         core: np.ndarray | None = None, lit_share: float = 0.2,
                         smooth_low: float = -np.inf) -> np.ndarray:
    """Per labelled region (holes the product encloses): True when it is the background, parts of
    it in the product's own shadow.  A drop shadow darkens what shows through a ring or a handle
    without changing its chroma or adding texture, and it fades out: part of the hole still shows
    the background as it is (or nearly: a small handle's hole may lie in the shadow's fall-off).
    So: under 1.5% of pixels with evidence > 2 and a mean evidence below
    0.5 where shadow-like darkening does not count (``ev``); the mean chroma residual within
    ``offset_tol``; the lit part (the brightest ``lit_share`` of the hole) within 1.5x
    ``offset_tol`` of the fitted background (a model of a gradient
    interpolated under a large product is a few levels off; a light surface of the product, a
    grey stripe on a white shoe, is darker all over); the texture within the background's
    (``texture_low`` .. ``texture_high``), measured on each region's ``core`` where it has one
    (the product's edge and the shadow's blur reach a few px into a small hole); and, when no part
    of it is in shadow (its darkest 20% within ``offset_tol``), a texture of at least
    ``smooth_low`` (a plain label on a bottle, on paper, is smoother than the paper)."""
    flat = labels.ravel()
    px = np.bincount(flat, minlength=n)
    cnt = np.maximum(px, 1).astype(np.float64)
    e = ev.ravel()
    mean_ev = np.bincount(flat, weights=np.minimum(e, 2.0), minlength=n) / cnt
    detail = np.bincount(flat, weights=(e > 2.0).astype(np.float64), minlength=n) / cnt
    r = residual.reshape(-1, residual.shape[-1])
    chroma = np.sqrt(sum((np.bincount(flat, weights=r[:, c].astype(np.float64), minlength=n) / cnt) ** 2
                         for c in (1, 2)))
    # (a label with no pixels here, outside the crop a caller passes, is not asked)
    like = (mean_ev < 0.5) & (detail < 0.015) & (chroma <= offset_tol) & (px > 0)
    like[0] = False
    if texture is not None:
        tflat = flat if core is None else np.where(core.ravel(), flat, 0)
        if core is not None:
            tflat = np.where(np.bincount(tflat, minlength=n)[flat] >= 8, tflat, flat)
        tcnt = np.maximum(np.bincount(tflat, minlength=n), 1)
        tex = np.bincount(tflat, weights=texture.ravel().astype(np.float64), minlength=n) / tcnt
        like &= (tex <= texture_high) & (tex >= texture_low)
    dL = r[:, 0]
    for i in np.nonzero(like)[0]:
        lit, dark = np.quantile(dL[flat == i], [1.0 - lit_share, lit_share])
        like[i] = -1.5 * offset_tol <= lit <= 1.5 * offset_tol
        if dark >= -offset_tol and texture is not None:   # no shadow in it
            like[i] &= tex[i] >= smooth_low
    return like


def _background_like(labels: np.ndarray, n: int, evidence: np.ndarray,
                     residual: np.ndarray | None, offset_tol: float, *,
                     max_evidence: float = 0.5, max_detail: float = 0.015,
                     texture: np.ndarray | None = None, texture_tol: float = np.inf,
                     texture_low: float = -np.inf, core: np.ndarray | None = None) -> np.ndarray:
    """Per labelled region: True when it looks like plain background (see :func:`fill_holes`)."""
    flat = labels.ravel()
    cnt = np.maximum(np.bincount(flat, minlength=n), 1).astype(np.float64)
    ev = evidence.ravel()
    mean_ev = np.bincount(flat, weights=np.minimum(ev, 2.0), minlength=n) / cnt
    detail = np.bincount(flat, weights=(ev > 2.0).astype(np.float64), minlength=n) / cnt
    like = (mean_ev < max_evidence) & (detail < max_detail)
    if residual is not None:
        r = residual.reshape(-1, residual.shape[-1])
        off = np.sqrt(sum((np.bincount(flat, weights=r[:, c].astype(np.float64), minlength=n) / cnt) ** 2
                          for c in range(r.shape[1])))
        like &= off <= offset_tol
    if texture is not None:
        # texture from each region's core when it has one (edge blur inflates the high-pass)
        tflat = flat if core is None else np.where(core.ravel(), flat, 0)
        tcnt = np.bincount(tflat, minlength=n)
        tflat = np.where(tcnt[flat] >= 8, tflat, flat) if core is not None else flat
        tcnt = np.maximum(np.bincount(tflat, minlength=n), 1)
        tex = np.bincount(tflat, weights=texture.ravel().astype(np.float64), minlength=n) / tcnt
        # plain background has the background's texture: more is product detail, and a smooth
        # patch in a textured background (a printed label) is a product surface too
        like &= (tex <= texture_tol) & (tex >= texture_low)
    return like


def _inside_outline(edge: np.ndarray, rim_px: int = 1) -> np.ndarray:
    """Pixels that crisp step edges close off from the image border, and the outline itself
    (within ``rim_px``). A soft shadow has no such outline, so it is never inside one."""
    walls = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8))   # close 1-px gaps
    n, labels = cv2.connectedComponents(1 - walls, connectivity=4)
    reached = np.zeros(n, bool)
    for border in (labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]):
        reached[np.unique(border)] = True
    inside = ~reached[labels] & (walls == 0)
    return cv2.dilate(inside.astype(np.uint8), _disk(rim_px)).astype(bool)


def _edged_backdrop(edge: np.ndarray, mask: np.ndarray, bg: "_Background") -> bool:
    """Whether the background has crisp edges of its own (brick, paper grain, print): measured
    on the border strip the background model comes from (a light product's own outline is not
    there).  On such a backdrop every cell of the texture is closed off by crisp edges too."""
    if bg.hp_noise > 0.8:
        return True
    far = _border_strip(mask)
    return bool(far.any() and float(edge[far].mean()) > 0.003)


def _border_strip(mask: np.ndarray, frac: float = 0.06, clear_px: int = 15) -> np.ndarray:
    """The image's border strip, ``frac`` of the short side wide, less what lies within
    ``clear_px`` of ``mask`` (a product reaching the frame, and its outline's blur).
    (The mask's dilation is computed on the four sides of the frame only, each as deep as the
    strip plus the dilation's reach, round the mask pixels there: a whole-image dilation by a
    31 px disk costs more than the rest of the test.)"""
    h, w = mask.shape
    bw_ = max(3, int(frac * min(h, w)))
    strip = np.zeros((h, w), bool)
    strip[:bw_], strip[-bw_:], strip[:, :bw_], strip[:, -bw_:] = True, True, True, True
    m8, k, d = mask.astype(np.uint8), _disk(clear_px), bw_ + clear_px + 1
    for side in ((slice(0, d), slice(None)), (slice(max(0, h - d), h), slice(None)),
                 (slice(None), slice(0, d)), (slice(None), slice(max(0, w - d), w))):
        sub = m8[side]
        if sub.any():
            box = _box_around(sub, clear_px)
            strip[side][box] &= ~cv2.dilate(sub[box], k).astype(bool)
    return strip


def _add_enclosed(mask: np.ndarray, edge: np.ndarray, ev: np.ndarray, residual: np.ndarray,
                  offset_tol: float, hp: np.ndarray, hp_tol: float,
                  hp_low: float = -np.inf, keep_out: np.ndarray | None = None,
                  shadowed: dict | None = None) -> np.ndarray:
    """Regions the product encloses together with crisp edges: light product parts.

    A light part of the product (a white sole, a pale handle) may differ from the background
    by less than the per-pixel tolerance, so the threshold misses it.  What gives it away is
    its outline: a crisp step (or a thin dark outline) closes it off from the background,
    while a soft shadow fades out and is reached from the image border without crossing one.
    The background is flooded from the image border (4-connected) with the mask and the crisp
    edges as walls; a region it cannot reach, next to the mask and at most the mask's size,
    is added unless it looks like plain background (see :func:`fill_holes`: a see-through
    hole).  A region mostly inside ``keep_out`` (the holes :func:`fill_holes` opened: the
    background in the product's shadow) is not added.  The edge pixels around an added region
    are added with it.
    With ``shadowed`` (keyword arguments of :func:`_shadowed_background`: the evidence without
    shadow-like darkening, the fine texture and its bounds), a region that is the background in
    the product's shadow is not added either: on a backdrop with crisp edges of its own (brick
    mortar) every brick is closed off, and the ones under the product's shadow are darker than
    the background model, but fade out, where a grey part is darker all over.
    Returns the added pixels (bool), possibly empty.
    """
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)   # close 1-px gaps
    wall = mask | edge
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~wall).astype(np.uint8), connectivity=4)
    added = np.zeros(mask.shape, bool)
    if n <= 2:
        return added
    cand = np.ones(n, bool)
    cand[0] = False
    for border in (labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]):
        cand[np.unique(border)] = False
    area = stats[:, cv2.CC_STAT_AREA]
    mask_area = int(mask.sum())
    cand &= (area >= 4) & (area <= mask_area)
    if keep_out is not None and keep_out.any():
        cand &= np.bincount(labels[keep_out], minlength=n) <= 0.5 * area
    if not cand.any():
        return added
    near = cv2.dilate(mask.astype(np.uint8), _disk(3)).astype(bool)
    touch = np.bincount(labels[near], minlength=n) > 0
    cand &= touch
    if not cand.any():
        return added
    # region statistics away from the walls (edge blur, JPEG ringing and the outline's own
    # high-pass energy reach a few px into a region)
    far = ~cv2.dilate(edge.astype(np.uint8), _disk(5)).astype(bool)
    lab_far = np.where(far, labels, 0)
    lab_far[~far & (labels > 0)] = 0
    far_cnt = np.bincount(lab_far.ravel(), minlength=n)
    stat_labels = np.where(far_cnt[labels] >= 8, lab_far, labels)   # thin regions: all pixels
    stat_labels[~far & (far_cnt[labels] >= 8)] = 0
    # (the statistics on the candidates' box only: the same sums for them, the others are not asked)
    box = _box_around(cand[labels], 0)
    stat_labels = stat_labels[box]
    like = _background_like(stat_labels, n, ev[box], residual[box], offset_tol, texture=hp[box],
                            texture_tol=hp_tol, texture_low=hp_low)
    if shadowed is not None:
        like |= _shadowed_background(stat_labels, n, residual=residual[box], offset_tol=offset_tol,
                                     **{k: v[box] if isinstance(v, np.ndarray) else v
                                        for k, v in shadowed.items()})
    acc = cand & ~like
    if not acc.any():
        return added
    added = acc[labels]
    rim = cv2.dilate(added.astype(np.uint8), _disk(2)).astype(bool) & edge & ~mask
    return added | rim


def _inner_components(region: np.ndarray, min_area: int, connectivity: int):
    """Connected components of ``region`` and which ones are candidates: at least ``min_area``
    pixels and clear of the image border (what runs off the frame is backdrop or shadow).
    Returns (n, labels, area, ok); ok[0] (the complement) is always False."""
    h, w = region.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=connectivity)
    area = stats[:, cv2.CC_STAT_AREA]
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    ok = (area >= min_area) & (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
    ok[0] = False
    return n, labels, area, ok


def _fall_off(ramp: np.ndarray, plain: np.ndarray, max_px: int = 24) -> np.ndarray:
    """The pixels of ``ramp`` (a region's pixels with a moderate, smooth gradient, crisp edges
    left out) that ``plain`` background reaches through ``ramp`` within ``max_px`` steps: a soft
    shadow's fall-off, which a product's outline (a crisp step) stops."""
    out = np.zeros(ramp.shape, bool)
    if not ramp.any():
        return out
    # (on the box around the ramp pixels, 1 px wider: nothing outside it can be reached)
    x, y, bw, bh = cv2.boundingRect(ramp.astype(np.uint8))
    y0, y1 = max(0, y - 1), min(ramp.shape[0], y + bh + 1)
    x0, x1 = max(0, x - 1), min(ramp.shape[1], x + bw + 1)
    ramp_c, plain_c = ramp[y0:y1, x0:x1], plain[y0:y1, x0:x1]
    k3 = np.ones((3, 3), np.uint8)
    reach = plain_c.astype(np.uint8)
    allowed = (ramp_c | plain_c).astype(np.uint8)
    count = cv2.countNonZero(reach)
    for _ in range(max_px):
        reach = cv2.dilate(reach, k3) & allowed
        c = cv2.countNonZero(reach)
        if c == count:   # (a fixed point: nothing more is reached)
            break
        count = c
    out[y0:y1, x0:x1] = reach.astype(bool) & ramp_c
    return out


def _light_parts(resid: np.ndarray, bg: "_Background", edge: np.ndarray, mask: np.ndarray, *,
                 min_area: int, noise: np.ndarray, levels: tuple[float, ...] = (1.0, 2.0, 4.0),
                 **kw) -> np.ndarray:
    """:func:`_light_parts_at` at rising contrast thresholds (``levels`` x the noise threshold):
    a light product whose drop shadow touches it without a crisp edge between them is one region
    with a half-open rim at the lowest threshold; at a higher one the shadow's fall-off drops out
    and the product, closed off by its outline, stands alone.  The highest threshold goes first:
    what it finds is the product alone, and at the lower ones the product's halo of shadow is
    then a ring next to the mask, open all round its outer side, so it is not added.  Where the
    product matches its own shadow the outline has gaps: a region whose rim is mostly crisp
    edge (1.5x as much as open rim) may be open over ``max_open_walled`` of it (on a backdrop with
    crisp edges of its own: 3x, and 25% open)."""
    added = np.zeros(mask.shape, bool)
    # (the same at every level: computed once)
    dist = _lab_distance(resid)
    walls = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ab = cv2.GaussianBlur(np.ascontiguousarray(resid[:, :, 1:]), (0, 0), 1.5)
    chroma = np.hypot(ab[:, :, 0], ab[:, :, 1])
    for f in sorted(levels, reverse=True):
        got = _light_parts_at(resid, bg, edge, mask | added, min_area=min_area, noise=noise, scale=f,
                              dist=dist, walls=walls, max_open_walled=0.4, chroma=chroma, **kw)
        added |= got
    return added


def _light_parts_at(resid: np.ndarray, bg: "_Background", edge: np.ndarray, mask: np.ndarray, *,
                    min_area: int, noise: np.ndarray, scale: float = 1.0, max_open: float = 0.25,
                    max_open_textured: float = 0.1, max_open_walled: float | None = None,
                    ramp: np.ndarray | None = None,
                    ramp_px: int = 24, dist: np.ndarray | None = None,
                    walls: np.ndarray | None = None, chroma: np.ndarray | None = None,
                    texture: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """Light on light: product parts whose colour is only a few levels off the background (a
    white sneaker on white, silver on light grey), found by a contrast model plus edge support.

    Contrast: the Lab distance to the fitted background above max(3, 3.5 x ``noise``), far below
    the evidence map's tolerance.  A soft shadow has that contrast too; what tells the two apart
    is the outline.  The candidate pixels are split by crisp step edges (the walls) into regions;
    a region is a light part when at most ``max_open`` (``max_open_textured`` on a textured
    background; ``max_open_walled`` where the rim is mostly crisp edge, see :func:`_light_parts`)
    of its rim runs out into plain background (the rest is a crisp edge or the mask): a shadow
    fades out over most of its rim, a product ends in a step all round.  Also: at least ``min_area``, a mean distance of 1.5x the
    threshold, not on the image border, and next to the mask unless it is large (1% of the image:
    a wholly white product has no mask to touch); on a textured background next to the mask
    always (paper and brick have crisp cells of their own), and not a cell of a cellular backdrop
    in the product's shadow (:func:`_shadowed_cells`).  The crisp edge pixels around an added
    region are added with it.  Returns the added pixels (bool), possibly empty."""
    h, w = mask.shape
    if dist is None:
        dist = _lab_distance(resid)
    dthr = scale * max(3.0, 3.5 * float(np.sqrt((noise.astype(np.float64) ** 2).sum())))
    if walls is None:
        walls = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cand = (dist > dthr) & ~walls & ~mask
    none = np.zeros(mask.shape, bool)
    if not cand.any():
        return none
    k3 = np.ones((3, 3), np.uint8)
    plain = ~cand & ~walls & ~mask
    fall = none
    if ramp is not None:
        # a soft shadow's fall-off: a moderate, smooth gradient reached from the plain
        # background without crossing a crisp edge; taken out, what it leaves of a shadow is a
        # core ringed by fall-off, of a product the product ringed by its outline
        fall = _fall_off(cand & ramp, plain, ramp_px)
        cand = cand & ~fall
    n, labels, area, ok = _inner_components(cand, min_area, connectivity=4)
    if not ok.any():
        return none
    rim = cand & cv2.dilate((~cand).astype(np.uint8), k3).astype(bool)
    # (next to the fall-off counts as open: a region that fades out there is a shadow's core,
    # under a handbag as much as beside it)
    open_ = rim & cv2.dilate((plain | fall).astype(np.uint8), k3).astype(bool)
    n_rim = np.bincount(labels[rim], minlength=n)
    n_open = np.bincount(labels[open_], minlength=n)
    mean_d = np.bincount(labels[cand], weights=dist[cand], minlength=n) / np.maximum(area, 1)
    near = cv2.dilate(mask.astype(np.uint8), _disk(3)).astype(bool)
    touch = np.bincount(labels[near], minlength=n) > 0
    big = area >= 0.01 * h * w
    textured = _edged_backdrop(edge, mask, bg)
    # (on a textured background the cells of the texture are closed off too: a stricter outline,
    # and a smaller allowance for gaps in it, as brick mortar walls every brick)
    limit = np.full(n, max_open_textured if textured else max_open)
    if max_open_walled is not None:
        n_wall = np.bincount(labels[rim & cv2.dilate(walls.astype(np.uint8), k3).astype(bool)], minlength=n)
        # (a region mostly walled by the mask is a pocket of shadow between the product's legs)
        n_by_mask = np.bincount(labels[rim & cv2.dilate(mask.astype(np.uint8), k3).astype(bool)], minlength=n)
        n_wall = np.where(n_by_mask < 0.5 * n_rim, n_wall, 0)
        if textured:
            limit = np.where(n_wall >= 3 * n_open, 0.25, limit)
        else:
            limit = np.where(n_wall >= 1.5 * n_open, max(max_open_walled, max_open), limit)
    ok &= (n_open <= limit * np.maximum(n_rim, 1)) & (mean_d >= 1.5 * dthr)
    ok &= touch | (big & (not textured))
    if textured and chroma is not None:
        ok &= ~_shadowed_cells(labels, n, cand, area, ok, resid[:, :, 0], chroma, walls, mask,
                               min_area=min_area, texture=texture)
    if not ok.any():
        return none
    added = ok[labels]
    if chroma is not None:
        added &= ~_shadow_coloured(labels, ok, area, open_, chroma)
    return added | (cv2.dilate(added.astype(np.uint8), _disk(2)).astype(bool) & walls)


def _shadowed_cells(labels: np.ndarray, n: int, cand: np.ndarray, area: np.ndarray, ok: np.ndarray,
                    dL: np.ndarray, chroma: np.ndarray, walls: np.ndarray, mask: np.ndarray, *,
                    min_area: int, low: float = 1.2, min_cells: int = 20, max_cells: float = 2.0,
                    clear_px: int = 15, texture: tuple[np.ndarray, float] | None = None,
                    printed_x: float = 1.6) -> np.ndarray:
    """Per light region: True for a cell of a cellular backdrop (brick, tiles) in the product's
    shadow, which its mortar lines close off as crisply as a product's outline.  Such a region
    has the backdrop's chroma (mean smoothed ab distance under ``low``), is darker than the
    backdrop, and is no larger than ``max_cells`` x the largest cell of the backdrop itself
    (the regions between the walls more than ``clear_px`` from the mask, of at least
    ``min_area``), on a backdrop of at least ``min_cells`` such cells.  A printed page or grass
    is not cellular (a few large regions between the walls): there a region of the backdrop's
    chroma, darker, is the backdrop in shadow when it carries the backdrop's print or blades,
    a fine texture (``texture``: the map and the backdrop's median) of at least ``printed_x`` x
    the backdrop's median (2.0-3.6 on the drawn set); a smooth grey part of the backdrop's colour
    is kept (a mug's grey inside on a page: 1.16-1.27).  Returns a bool per label."""
    none = np.zeros(n, bool)
    cnt = np.maximum(area, 1)
    mean_c = np.bincount(labels[cand], weights=chroma[cand], minlength=n) / cnt
    mean_L = np.bincount(labels[cand], weights=dL[cand], minlength=n) / cnt
    shaded = ok & (mean_c < low) & (mean_L < 0)
    if not shaded.any():
        return none
    if texture is not None:
        fine, fine_bg = texture
        mean_t = np.bincount(labels[cand], weights=fine[cand], minlength=n) / cnt
        printed = shaded & (mean_t >= printed_x * max(fine_bg, 0.1))
    else:
        printed = none
    far = ~cv2.dilate(mask.astype(np.uint8), _disk(clear_px)).astype(bool)
    _, _, stats, _ = cv2.connectedComponentsWithStats((~walls & far).astype(np.uint8), connectivity=4)
    cells = stats[1:, cv2.CC_STAT_AREA]
    cells = cells[cells >= min_area]
    if len(cells) < min_cells:
        return printed
    return printed | (shaded & (area <= max_cells * int(cells.max())))


def _shadow_coloured(labels: np.ndarray, ok: np.ndarray, area: np.ndarray, open_: np.ndarray,
                     chroma: np.ndarray, low: float = 1.2) -> np.ndarray:
    """The part of each accepted light region that is its drop shadow: pixels of the
    background's own chroma (``chroma``: the smoothed ab distance to the fitted background
    below ``low``) reached from the region's open rim through such pixels.  A shadow darkens the
    backdrop but keeps its colour; a grey product merged with its shadow (silver beside the
    shadow under it) is a few levels of chroma off it.  Only where what is left is most of the
    region (40%) and clearly off the background's chroma (2x ``low`` on average): a product of
    the backdrop's own colour is not peeled away."""
    shade = ok[labels] & (chroma < low)
    peel = _joined(shade, open_, connectivity=4)
    n = len(ok)
    left = ok[labels] & ~peel
    n_left = np.bincount(labels[left], minlength=n)
    mean_left = np.bincount(labels[left], weights=chroma[left], minlength=n) / np.maximum(n_left, 1)
    apply = ok & (n_left >= 0.4 * area) & (mean_left >= 2.0 * low)
    return peel & apply[labels]


def _parts_standing_out(value: np.ndarray, cand: np.ndarray, mask: np.ndarray, *, min_area: int,
                        thr: float, max_ring: float, near_px: int = 3,
                        ring_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The components of ``cand`` (pixels where ``value`` is above ``thr``) that are parts of the
    product: at least ``min_area``, not on the image border, next to the mask (within
    ``near_px``) or large (1% of the image), ending in a step (2-4 px outside, where not
    ``ring_out``, ``value`` is back under ``max_ring`` x ``thr``: a patch of the backdrop's own,
    the lit centre of a vignette or a misfit of the background model, fades out) and not ringing
    the mask (a lit backdrop round a darker product).  Returns (labels, ok per label)."""
    h, w = mask.shape
    n, labels, area, ok = _inner_components(cand, min_area, connectivity=8)
    near = cv2.dilate(mask.astype(np.uint8), _disk(near_px)).astype(bool)
    touch = np.bincount(labels[near], minlength=n) > 0
    ok &= touch | (area >= 0.01 * h * w)
    lab_d = cv2.dilate(labels.astype(np.float32), _disk(4)).astype(np.int32)
    ring = (lab_d > 0) & ~cv2.dilate(cand.astype(np.uint8), _disk(1)).astype(bool) & ~mask
    if ring_out is not None:
        ring &= ~ring_out
    n_ring = np.bincount(lab_d[ring], minlength=n)
    ring_v = np.bincount(lab_d[ring], weights=value[ring].astype(np.float64), minlength=n) / np.maximum(n_ring, 1)
    ok &= (n_ring > 0) & (ring_v <= max_ring * thr)
    m_area = max(1, int(np.count_nonzero(mask)))
    for k in np.nonzero(ok)[0]:
        if np.count_nonzero(fill_holes(labels == k) & mask) > 0.5 * m_area:
            ok[k] = False
    ok[0] = False
    return labels, ok


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance (px) to the nearest pixel of ``mask``.  (Thresholded, it is the
    mask dilated by a disk: one pass, where a dilation by a disk of 30-40 px costs more.)"""
    return cv2.distanceTransform((~mask.astype(bool)).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)


def _ring_round(mask: np.ndarray, frac: float, halo: np.ndarray, *,
                dist: np.ndarray | None = None) -> np.ndarray:
    """The backdrop round the product: within ``frac`` of the short side of ``mask`` (8 px at
    least), less ``halo`` (the mask's own blur, and what the caller leaves out)."""
    h, w = mask.shape
    d = _distance_to(mask) if dist is None else dist
    return (d <= max(8, int(frac * min(h, w)))) & ~halo


def _brighter_parts(dL: np.ndarray, mask: np.ndarray, *, min_area: int, noise_L: float,
                    strip_frac: float = 0.06, max_ring: float = 0.65, grow_px: int = 6,
                    ring_frac: float = 0.1, halo_px: int = 6, min_over_ring: float = 1.4) -> np.ndarray:
    """Light on light, the other cue: parts clearly *brighter* than the fitted background (a white
    sneaker's upper on off-white).  A shadow only ever darkens, so brightness above what the
    background itself reaches cannot be the product's shadow; the threshold is taken from the
    border strip the background model comes from (max(3, 4 x noise, 1.5 x its 99.5th percentile)),
    and when more than 0.5% of that strip is above it (paper grain, brick mortar: a background
    with bright texture of its own) nothing is added.  A part is a component that
    :func:`_parts_standing_out` accepts and whose median is above ``min_over_ring`` x the 99th
    percentile of the backdrop round the mask (``ring_frac`` of the short side, off the
    ``halo_px`` halo of the mask and of the parts); it is then grown by hysteresis over
    ``grow_px`` into its less bright rim.  ``dL`` is the L residual against the fitted background
    (OpenCV's 8-bit Lab scale).  Returns the added pixels (bool), possibly empty."""
    none = np.zeros(mask.shape, bool)
    strip = _border_strip(mask, strip_frac)
    if strip.sum() < 100:
        return none
    thr = max(3.0, 4.0 * noise_L, 1.5 * float(np.percentile(dL[strip], 99.5)))
    cand = (dL > thr) & ~mask
    if float(cand[strip].mean()) > 0.005 or not cand.any():
        return none
    labels, ok = _parts_standing_out(dL, cand, mask, min_area=min_area, thr=thr, max_ring=max_ring)
    if not ok.any():
        return none
    # brighter than the backdrop round the product reaches too: a blank patch of a printed page,
    # which the smooth fit puts below the paper's level, is about as bright as the page's other
    # blanks (1.07x their 99th percentile on the drawn set, the parts of a product 1.8x and more)
    halo = cv2.dilate((mask | ok[labels]).astype(np.uint8), _disk(halo_px)).astype(bool)
    ring = _ring_round(mask, ring_frac, halo)
    if ring.sum() >= 100:
        ceiling = max(float(np.percentile(dL[ring], 99)), 1.0)
        for k in np.nonzero(ok)[0]:
            ok[k] = float(np.median(dL[labels == k])) > min_over_ring * ceiling
        if not ok.any():
            return none
    added = ok[labels]
    # hysteresis: a rounded product darkens towards its outline, so its rim is less bright than
    # its middle; what is still above the strip's own brightest (and next to the part) joins it
    low = max(2.0 * noise_L, float(np.percentile(dL[strip], 99.5)), 1.0)
    near_part = cv2.dilate(added.astype(np.uint8), _disk(grow_px)).astype(bool)
    weak = (dL > low) & ~mask & near_part
    return _joined(weak | added, added)


def _joined(region: np.ndarray, seeds: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """The components of ``region`` that hold a pixel of ``seeds``."""
    n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=connectivity)
    hit = np.zeros(n, bool)
    hit[labels[seeds & region]] = True
    hit[0] = False
    return hit[labels]


def _tint_distance(rgb: np.ndarray, pred: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """How far each pixel's colour is from the fitted background's, blind to shading: the
    distance between their chromaticities (RGB over its mean), smoothed (Gaussian ``sigma``)
    and scaled back to the background's level (RGB levels).  A shadow scales the backdrop's RGB
    (linear light, and so its sRGB, by one factor for all three channels): its chromaticity is
    the backdrop's, where Lab's a/b shrink with the lightness and turn (0.54-0.95 of the
    backdrop's a/b in the drop shadows of the drawn set).  ``pred``: the background, Lab as
    OpenCV's 8-bit scale."""
    obs = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    lab_f = pred.astype(np.float32) - np.float32([0.0, 128.0, 128.0])   # float Lab: L 0-100, a/b signed
    lab_f[:, :, 0] = pred[:, :, 0] * np.float32(100.0 / 255.0)
    back = cv2.cvtColor(lab_f, cv2.COLOR_LAB2RGB) * np.float32(255.0)
    # (channel sums by cv2.transform: numpy's reductions over the last axis are several times slower)
    third = np.full((1, 3), 1.0 / 3.0, np.float32)
    k = (cv2.transform(back, third) + 1.0) / (cv2.transform(obs, third) + 1.0)
    diff = obs * k[:, :, None] - back      # = (obs / its level - back / its level) x back's level
    return np.sqrt(cv2.transform(diff * diff, np.ones((1, 3), np.float32)))


def _tint_plateau(rgb: np.ndarray, pred: np.ndarray, mask: np.ndarray, halo: np.ndarray, *,
                  min_area: int, sigma: float = 4.0, ring_frac: float = 0.1, floor: float = 1.0,
                  near_px: int = 9, min_parts_area: int = 10, open_px: int = 5, min_own: float = 0.5,
                  min_contrast: float = 2.0, max_step: float = 0.45) -> np.ndarray:
    """Light on light, where the whole product is of a faint tint (a white sneaker on a tinted
    gradient, on off-white or on a printed page: the part found so far has a tint a few levels
    off the backdrop's, and so has the part missed, but neither is above what the border strip
    reaches in its corners, where the background model's fit is worst).  The tint distance at a
    coarser scale (``sigma`` 4: JPEG's 8 px chroma blocks average out, a large part's plateau
    stays) is split by Otsu's threshold (at least ``floor``) over the ring round the mask
    (``ring_frac`` of the short side, off the halo): the backdrop next to the product is the
    reference, not the frame.  A part is a component of what is above it, opened by ``open_px``
    (the blur fringe round a coloured product's outline is thinner), that
    - is next to the mask (within ``near_px``) and at least ``min_parts_area`` x ``min_area``,
    - does not touch the frame (a corner of the backdrop's misfit),
    - has a median of at least ``min_own`` x the mask's median tint: a part of a faintly tinted
      product is about as tinted as the rest of it, where what passes beside a coloured product
      is its blur or its shadow (5-100x fainter than the product on the drawn set),
    - stands out from the ring's backdrop (median at least ``min_contrast`` x the median of the
      ring's lower class),
    - ends in a step: the median 4-10 px outside it is at most ``max_step`` x its own (a
      drop shadow's tint, and a misfit's, ramp off slowly).
    Returns the added pixels (bool), possibly empty."""
    none = np.zeros(mask.shape, bool)
    h, w = mask.shape
    if not mask.any():
        return none
    dist = _distance_to(mask)
    ring = _ring_round(mask, ring_frac, halo, dist=dist)
    if ring.sum() < 100:
        return none
    # a map this smooth is as good from a half-size copy, at a quarter of the blur's cost
    half = ((w + 1) // 2, (h + 1) // 2)
    tint = cv2.resize(_tint_distance(cv2.resize(rgb, half, interpolation=cv2.INTER_AREA),
                                     cv2.resize(pred, half, interpolation=cv2.INTER_AREA), sigma=sigma / 2),
                      (w, h), interpolation=cv2.INTER_LINEAR)
    around = tint[ring]
    # (Otsu on 0.1-level bins: OpenCV's threshold takes 8-bit images)
    otsu, _ = cv2.threshold(np.clip(around * 10.0, 0, 255).astype(np.uint8), 0, 255,
                            cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(floor, otsu / 10.0)
    low = around[around <= thr]
    backdrop = max(float(np.median(low)) if low.size else 0.0, 0.2)
    own = float(np.median(tint[mask]))
    cand = cv2.morphologyEx(((tint > thr) & ~halo).astype(np.uint8), cv2.MORPH_OPEN, _disk(open_px))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
    near = dist <= near_px
    added = none
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        if area < min_parts_area * min_area or x == 0 or y == 0 or x + bw == w or y + bh == h:
            continue
        part = labels == k
        if not (part & near).any():
            continue
        med = float(np.median(tint[part]))
        if med < min_own * own or med < min_contrast * backdrop:
            continue
        p8 = part.astype(np.uint8)
        outside = cv2.dilate(p8, _disk(10)).astype(bool) & ~cv2.dilate(p8, _disk(4)).astype(bool) & ~halo
        if outside.any() and float(np.median(tint[outside])) > max_step * med:
            continue
        added = added | part
    return added


def _smooth_parts(fine: np.ndarray, mask: np.ndarray, *, min_area: int, strip_frac: float = 0.06,
                  halo_px: int = 6, rel: float = 0.5, near_px: int = 9, min_parts_area: int = 10,
                  cell_x: float = 4.0, grow_px: int = 8, grow_rel: float = 0.5) -> np.ndarray:
    """Light parts on a backdrop textured all over (grass, brick, a printed page), where neither
    colour nor tint tells a white upper from the backdrop: a smooth region next to the mask, much
    larger than any smooth cell of the backdrop's own texture, is product (a shadow darkens the
    texture but keeps it).  Smooth is the fine texture (:func:`_fine_texture`, blurred over 9x9)
    below ``rel`` x its median on the border strip; of its 4-connected components, those within
    ``near_px`` of the mask are candidates and the others are the backdrop's own cells.  A
    candidate is a part if it is at least ``min_parts_area`` x ``min_area`` and ``cell_x`` x the
    largest backdrop cell and does not touch the frame.  The parts' boundary is where the texture
    rises above ``grow_rel`` x the strip's median, within ``grow_px`` (the 9x9 blur pulled it
    inwards).  Returns the added pixels (bool), possibly empty."""
    none = np.zeros(mask.shape, bool)
    strip = _border_strip(mask, strip_frac)
    if strip.sum() < 100:
        return none
    blurred = cv2.blur(fine, (9, 9))
    backdrop = float(np.median(blurred[strip]))
    halo = cv2.dilate(mask.astype(np.uint8), _disk(halo_px)).astype(bool)
    cand = ((blurred < rel * backdrop) & ~halo).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=4)
    near = cv2.dilate(mask.astype(np.uint8), _disk(near_px)).astype(bool)
    touching = np.zeros(n, bool)
    touching[labels[near & (cand > 0)]] = True
    touching[0] = False
    own_cells = ~touching
    own_cells[0] = False
    largest_cell = int(stats[own_cells, cv2.CC_STAT_AREA].max()) if own_cells.any() else 0
    h, w = mask.shape
    added = none
    for k in np.nonzero(touching)[0]:
        x, y, bw, bh, area = stats[k]
        if area < max(min_parts_area * min_area, cell_x * largest_cell):
            continue
        if x == 0 or y == 0 or x + bw == w or y + bh == h:
            continue
        added = added | fill_holes(labels == k)
    if added.any():
        zone = cv2.dilate(added.astype(np.uint8), _disk(grow_px)).astype(bool)
        added = fill_holes(_joined(((fine < grow_rel * backdrop) & zone & ~mask) | added, added))
    return added


def _tinted_parts(rgb: np.ndarray, pred: np.ndarray, mask: np.ndarray, *, min_area: int,
                  floor: float = 1.5, strip_frac: float = 0.06, max_ring: float = 0.65,
                  halo_px: int = 6, grow_px: int = 8) -> np.ndarray:
    """Light on light, the third cue: parts of a colour of their own, a few levels off the
    backdrop's tint and darker than it (a white upper on a green-tinted or brick backdrop, just
    as light as the upper's own drop shadow: the outline has no contrast in L, and the L
    evidence calls it shadow).  By the tint distance (:func:`_tint_distance`: a shadow keeps
    the backdrop's chromaticity), above max(``floor``, 1.5 x the border strip's 99.5th
    percentile), nothing when more than 0.5% of the strip is above (a backdrop with coloured
    texture).  Pixels within ``halo_px`` of the mask are not candidates: the smoothing spreads a
    coloured product's tint a few px out.  A part is a component :func:`_parts_standing_out`
    accepts (next to the mask: within ``halo_px`` + 3) whose median is at least twice the
    threshold (a clear tint: the shadows and JPEG's colour noise that pass the threshold stay
    within 1.75x of it on the drawn set, the products' parts at 2.08x and more); its boundary is
    where the tint falls to half that median (the middle of the step the smoothing made), within
    ``grow_px``.  A product whose tint is faint all over is found by :func:`_tint_plateau`,
    which takes the backdrop round the mask as its reference, not the strip.  Returns the added
    pixels (bool), possibly empty."""
    none = np.zeros(mask.shape, bool)
    strip = _border_strip(mask, strip_frac)
    if strip.sum() < 100:
        return none
    tint = _tint_distance(rgb, pred)
    thr = max(floor, 1.5 * float(np.percentile(tint[strip], 99.5)))
    halo = cv2.dilate(mask.astype(np.uint8), _disk(halo_px)).astype(bool)
    faint = _tint_plateau(rgb, pred, mask, halo, min_area=min_area)
    cand = (tint > thr) & ~halo
    if float(cand[strip].mean()) > 0.005 or not cand.any():
        return faint
    labels, ok = _parts_standing_out(tint, cand, mask, min_area=min_area, thr=thr, max_ring=max_ring,
                                     near_px=halo_px + 3, ring_out=halo)
    added = none
    for k in np.nonzero(ok)[0]:
        part = labels == k
        med = float(np.median(tint[part]))
        if med < 2.0 * thr:
            continue
        zone = cv2.dilate(part.astype(np.uint8), _disk(grow_px)).astype(bool)
        added = added | _joined((tint >= 0.5 * med) & zone & ~mask, part)
    return added | faint


def _lab_distance(resid: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean length of an H×W×3 residual (channel by channel: numpy's reduction
    over a 3-long last axis is several times slower, and sums in the same order)."""
    r0, r1, r2 = resid[:, :, 0], resid[:, :, 1], resid[:, :, 2]
    return np.sqrt(r0 * r0 + r1 * r1 + r2 * r2)


def _disk(r: int) -> np.ndarray:
    r = max(1, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _resize_mask(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    if mask.shape == (h, w):
        return mask.astype(bool)
    f = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return f >= 0.5


# ----------------------------------------------------------------------------- alpha
def alpha_mask(image: np.ndarray) -> MaskResult | None:
    """Mask from a real alpha channel (alpha >= 128); None when there is no usable alpha."""
    if image.ndim != 3 or image.shape[2] != 4:
        return None
    a = image[:, :, 3]
    lo, hi = int(a.min()), int(a.max())
    if lo == hi:
        return None
    mask = a >= 128
    semi = float(((a > 16) & (a < 240)).mean())
    fg = max(float(mask.mean()), 1e-9)
    score = float(np.clip(1.0 - semi / fg, 0.0, 1.0))
    return MaskResult(mask=mask, bbox=mask_bbox(mask), method="alpha", score=score,
                      reason="alpha channel present; mask = alpha >= 128")


# ----------------------------------------------------------------------------- background
def _poly_terms(u: np.ndarray, v: np.ndarray, order: int = 2) -> np.ndarray:
    cols = [np.ones_like(u), u, v]
    if order >= 2:
        cols += [u * v, u * u, v * v]
    if order >= 3:
        cols += [u * u * u, u * u * v, u * v * v, v * v * v]
    return np.stack(cols, axis=1)


@lru_cache(maxsize=32)
def _border_samples(h: int, w: int, bw: int, max_n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Row-major coordinates of the ``bw``-wide border strip, thinned to about ``max_n``.
    (Cached and read-only: every image of one size asks for the same strip twice.)"""
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    yy, xx = np.nonzero((ys < bw) | (ys >= h - bw) | (xs < bw) | (xs >= w - bw))
    if yy.size > max_n:
        step = int(np.ceil(yy.size / max_n))
        yy, xx = yy[::step], xx[::step]
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@dataclass(frozen=True)
class _Background:
    pred: np.ndarray        # float32 H×W×3 predicted Lab background
    sigma: np.ndarray       # float32 (3,) robust residual noise per Lab channel
    outlier_frac: float     # share of border samples rejected as not-background
    grad_noise: float       # robust gradient magnitude of the background (texture level)
    hp_noise: float = 0.0   # median local high-pass energy of the background
    # the backdrop's own structure (brick mortar, print, paper grain): the Lab residual levels
    # (brighter, darker, chroma) that its texture reaches along the border; 0 on a plain backdrop
    texture_tol: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _robust_fit(A: np.ndarray, vals: np.ndarray, iters: int, min_keep: float = 0.3):
    keep = np.ones(len(vals), bool)
    coef = None
    for _ in range(iters + 1):
        if keep.sum() < A.shape[1] * 4:
            break
        Ak = A[keep]
        # normal equations: tiny (<=10 unknowns), far cheaper than lstsq's SVD
        coef = np.linalg.solve(Ak.T @ Ak + 1e-9 * np.eye(A.shape[1]), Ak.T @ vals[keep])
        rn = np.sqrt(((vals - A @ coef) ** 2).sum(1))
        med = np.median(rn[keep])
        mad = np.median(np.abs(rn[keep] - med)) * 1.4826 + 1e-6
        new_keep = rn <= med + 3.5 * mad + 2.0
        if new_keep.sum() < min_keep * len(vals):  # mostly not background: keep the best share
            new_keep = rn <= np.quantile(rn, min_keep)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if coef is None:
        coef = np.zeros((A.shape[1], vals.shape[1]))
        coef[0] = np.median(vals, axis=0)
    return coef, keep


def _predict(coef: np.ndarray, h: int, w: int, order: int) -> np.ndarray:
    """Evaluate the surface on a coarse grid and resize (smooth: bilinear is exact enough)."""
    gh, gw = min(h, 33), min(w, 33)
    gu = (np.linspace(0.5, w - 0.5, gw) / w) - 0.5
    gv = (np.linspace(0.5, h - 0.5, gh) / h) - 0.5
    GU, GV = np.meshgrid(gu, gv)
    grid = (_poly_terms(GU.ravel(), GV.ravel(), order) @ coef).reshape(gh, gw, 3).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR) if (gh, gw) != (h, w) else grid


def estimate_background(lab: np.ndarray, *, grad: np.ndarray | None = None,
                        hp: np.ndarray | None = None,
                        exclude: np.ndarray | None = None, order: int = 2,
                        iters: int = 3) -> _Background:
    """Fit a smooth Lab background surface, robustly.

    Without ``exclude``: a quadratic fitted to the border strip.  With ``exclude`` (pixels
    believed to be product, dilated): a cubic fitted to every other pixel of a sampling grid,
    which follows vignettes and sweeps that a border-only fit cannot see.
    """
    h, w, _ = lab.shape
    if exclude is None:
        bw = max(2, int(round(0.012 * min(h, w))))
        yy, xx = _border_samples(h, w, bw)
    else:
        step = max(1, int(np.sqrt(h * w / 3000)))
        ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
        sel = ~exclude[ys, xs]
        yy, xx = ys[sel], xs[sel]
        if yy.size < 200:
            return estimate_background(lab, grad=grad, hp=hp, order=2, iters=iters)
    u = (xx.astype(np.float64) + 0.5) / w - 0.5
    v = (yy.astype(np.float64) + 0.5) / h - 0.5
    A = _poly_terms(u, v, order)
    vals = lab[yy, xx].astype(np.float64)
    coef, keep = _robust_fit(A, vals, iters)
    res = vals[keep] - A[keep] @ coef
    sigma = 1.4826 * np.median(np.abs(res - np.median(res, axis=0)), axis=0)
    pred = _predict(coef, h, w, order)
    grad_noise = 0.0
    if grad is not None and keep.any():
        gb = grad[yy[keep], xx[keep]]
        grad_noise = float(np.median(gb) + 1.4826 * np.median(np.abs(gb - np.median(gb))))
    hp_noise = 0.0
    if keep.any():
        if hp is None:
            hp = _highpass(lab[:, :, 0])
        hp_noise = float(np.median(hp[yy[keep], xx[keep]]))
    texture_tol = (0.0, 0.0, 0.0)
    if exclude is None:
        texture_tol = _texture_tolerance(vals - A @ coef, keep, yy, xx, h, w)
    return _Background(pred=pred, sigma=sigma.astype(np.float32),
                       outlier_frac=float(1.0 - keep.mean()), grad_noise=grad_noise,
                       hp_noise=hp_noise, texture_tol=texture_tol)


def _texture_tolerance(res: np.ndarray, keep: np.ndarray, yy: np.ndarray, xx: np.ndarray,
                       h: int, w: int, segments: int = 16) -> tuple[float, float, float]:
    """The residual levels a structured backdrop reaches by itself (brighter, darker, chroma).

    The robust noise (MAD) ignores a backdrop's sparse structure: brick mortar, the lines of a
    printed page, paper grain are a few percent of the border and stand 10-20 levels out of it, so
    they pass the evidence tolerance and, touching the product, join it (with the bricks they
    enclose filled as holes).  Those outliers are spread along the whole border, where a product
    or a shadow running off the frame is one run: when most border segments hold some, the
    backdrop's texture reaches the 99th percentile of the border's residuals, and the evidence
    tolerance is raised to it.  Zero (no change) otherwise."""
    out = ~keep
    if out.mean() < 0.01:
        return (0.0, 0.0, 0.0)
    # the border in equal angular segments around the image centre
    ang = np.arctan2((yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5)
    seg = np.minimum(((ang + np.pi) / (2 * np.pi) * segments).astype(np.int64), segments - 1)
    share = np.bincount(seg, weights=out.astype(np.float64), minlength=segments) / np.maximum(
        np.bincount(seg, minlength=segments), 1)
    if (share > 0.01).mean() < 0.75:
        return (0.0, 0.0, 0.0)
    dL, chroma = res[:, 0], np.hypot(res[:, 1], res[:, 2])
    q = lambda a: float(1.1 * np.quantile(a, 0.99))   # noqa: E731
    return (max(0.0, q(dL)), max(0.0, q(-dL)), q(chroma))


def _highpass(L: np.ndarray) -> np.ndarray:
    """Local high-pass energy: texture (a smooth ramp such as a soft shadow has little)."""
    return cv2.blur(np.abs(L - cv2.GaussianBlur(L, (0, 0), 2.0)), (5, 5))


def _fine_texture(L: np.ndarray) -> np.ndarray:
    """Local fine-scale texture: distance to the 5x5 median, averaged over 5x5.  A median keeps
    ramps and steps, so a soft shadow's fall-off (which a Gaussian high-pass sees as texture
    where it curves) scores as low as flat background; paper, fabric and print do not."""
    L8 = np.clip(L, 0, 255).astype(np.uint8)
    return cv2.blur(cv2.absdiff(L8, cv2.medianBlur(L8, 5)).astype(np.float32), (5, 5))


def _step_edges(L: np.ndarray, grad: np.ndarray, thr: float, ratio: float = 1.8) -> np.ndarray:
    """Crisp steps and thin lines, not ramps: the fine-scale gradient is above ``thr`` and
    ``ratio`` x the gradient at a coarser scale (equal on a smooth ramp such as a soft
    shadow's fall-off, about 3x on a step, more on a thin outline)."""
    coarse = _gradient(cv2.GaussianBlur(L, (0, 0), 2.5))
    return (grad > thr) & (grad > ratio * coarse)


def _gradient(L: np.ndarray) -> np.ndarray:
    Lb = cv2.GaussianBlur(L, (3, 3), 0)
    gx = cv2.Sobel(Lb, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(Lb, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def _tolerances(bg: _Background) -> tuple[float, float]:
    sL = float(bg.sigma[0])
    sC = float(np.hypot(bg.sigma[1], bg.sigma[2]))
    return max(9.0, 4.5 * sL), max(7.0, 4.5 * sC, bg.texture_tol[2])


def _evidence(lab: np.ndarray, bg: _Background, hp: np.ndarray | None = None, *,
              edge: np.ndarray | None = None, fine: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground evidence (>1 means product), a shadow-candidate map and the shadow-like pixels
    that count as product only for their texture, on the working copy.

    Texture is the high-pass ``hp``.  With ``edge`` (crisp step edges) and ``fine``
    (:func:`_fine_texture`): 2-4 px from a step, on its lighter side, the fine texture instead.
    A step inflates the high-pass a few px either side; on the darker side that is a grey part's
    own rim (silver headphones: it is what tells the part from its shadow), on the lighter side
    it is the shadow band along a dark strap or leg, which the fine texture (blind to steps and
    ramps) leaves smooth.  (The first 1 px either side is the step's own blend: high-pass kept.)

    Lab here is OpenCV's 8-bit scaling (L in 0..255, a/b offset by 128) as float32.
    """
    d = lab - bg.pred
    dL = d[:, :, 0]
    chroma = np.sqrt(d[:, :, 1] ** 2 + d[:, :, 2] ** 2)
    tl, tc = _tolerances(bg)
    tl_up, tl_down = max(tl, bg.texture_tol[0]), max(tl, bg.texture_tol[1])
    Lbg = np.maximum(bg.pred[:, :, 0], 1.0)
    # darkening up to this depth with low chroma may be a soft shadow
    shadow_depth = np.maximum(tl * 1.5, 0.42 * Lbg)
    ev = np.maximum(np.maximum(chroma / tc, dL / tl_up), -dL / shadow_depth)
    shadow = (dL < -tl_down) & (ev <= 1.0)
    textured = np.zeros(shadow.shape, bool)
    if shadow.any() and hp is not None:
        # texture inside shadow-like darkening means a grey product, not a shadow
        e_tex = hp / max(3.0, 4.0 * bg.hp_noise)
        if edge is not None and fine is not None and edge.any():
            e8 = edge.astype(np.uint8)
            beside = cv2.dilate(e8, _disk(4)).astype(bool) & ~cv2.dilate(e8, _disk(1)).astype(bool)
            L = lab[:, :, 0]
            beside &= L > cv2.GaussianBlur(L, (0, 0), 3.0)
            h, w = L.shape
            yy, xx = _border_samples(h, w, max(3, int(0.04 * min(h, w))))
            fine_gt = max(3.0, 4.0 * float(np.median(fine[yy, xx])))
            e_tex = np.where(beside, fine / fine_gt, e_tex)
        e_tex = np.where(shadow, e_tex, 0.0).astype(np.float32)
        ev = np.maximum(ev, e_tex)
        textured = shadow & (e_tex > 1.0)
        shadow &= ~textured
    return ev.astype(np.float32), shadow, textured


def _crisp_fraction(labels: np.ndarray, n: int, region: np.ndarray, outside: np.ndarray,
                    crisp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per labelled component: rim pixel count (region pixels next to ``outside``) and the
    share of them on a crisp edge."""
    rim = region & cv2.dilate(outside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    lab_r = labels[rim]
    cnt = np.bincount(lab_r, minlength=n).astype(np.float64)
    cr = np.bincount(lab_r, weights=crisp[rim].astype(np.float64), minlength=n)
    return cnt, np.where(cnt > 0, cr / np.maximum(cnt, 1), 0.0)


def _promote_crisp_shadows(ev: np.ndarray, shadow: np.ndarray, grad: np.ndarray,
                           dL: np.ndarray, *, sharpness: float = 1.3, soft: np.ndarray | None = None,
                           backdrop_step: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Shadow-like regions whose outer rim is a sharp step are product (grey parts), not shadow.

    A soft shadow fades out: at its rim the gradient is a small part of its depth.  A grey
    product part ends in a step: the gradient there is about its whole depth or more (Sobel
    of a step of height D after the 3×3 blur is ~3D).  Per connected shadow-like region, the
    rim pixels (next to plain background) are sharp when the strongest gradient within 1 px
    exceeds ``sharpness`` × the region's median depth; regions with most of the rim sharp
    are promoted to product, less the pixels in ``soft`` (the shadow's fall-off, when the region
    is a grey product merged with its own drop shadow).  On a backdrop of crisp lines (brick
    mortar, print) a shadowed cell's rim is such a line: a sharp rim must also be above
    ``backdrop_step``, the backdrop's own steps (the 90th percentile of the gradient on the
    border strip's step edges).  Returns (remaining shadow, promoted pixels).
    """
    none = np.zeros(shadow.shape, bool)
    if not shadow.any():
        return shadow, none
    fg = ev > 1.0
    n, labels = cv2.connectedComponents(shadow.astype(np.uint8), connectivity=8)
    if n <= 1:
        return shadow, none
    depth = np.zeros(n)
    lab_s = labels[shadow]
    cnt_s = np.bincount(lab_s, minlength=n)
    # a mean is cheaper than a median per component and close enough for a smooth region
    depth = np.bincount(lab_s, weights=-dL[shadow], minlength=n) / np.maximum(cnt_s, 1)
    gmax = cv2.dilate(grad, np.ones((3, 3), np.uint8))
    crisp = gmax > np.maximum(sharpness * depth[labels], backdrop_step)
    near_fg = cv2.dilate(fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cnt, frac = _crisp_fraction(labels, n, shadow, ~shadow & ~near_fg, crisp)
    promote = (frac >= 0.5) & (cnt >= 8)
    promote[0] = False
    if promote.any():
        sel = promote[labels]
        if soft is not None:
            sel &= ~soft
        ev[sel] = np.maximum(ev[sel], 1.01)
        return shadow & ~sel, sel
    return shadow, none


def _select_parts(mask: np.ndarray, crisp: np.ndarray, ev: np.ndarray, *, min_rel_area: float = 0.05,
                  min_rel_crisp: float = 0.6, min_crisp: float = 0.1, min_evidence: float = 1.5) -> np.ndarray:
    """The product's parts: the best component (largest, weighted by how crisp its outline is:
    soft blobs are background residue) and every other one that is product evidence too (a
    pair of shoes, earrings): at least ``min_rel_area`` of the best one's area, an outline about
    as crisp as the best one's (``min_rel_crisp`` of its crisp share, and ``min_crisp`` at least), a mean evidence of at least ``min_evidence`` (clear
    contrast, not a faint stain), and not touching the image border (a shadow running off the
    frame, a backdrop seam)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    _, frac = _crisp_fraction(labels, n, mask.astype(bool), ~mask.astype(bool), crisp)
    score = area * (0.1 + frac)
    score[0] = -1.0
    best = int(np.argmax(score))
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    on_border = (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
    mean_ev = np.bincount(labels.ravel(), weights=np.minimum(ev, 4.0).ravel(), minlength=n) / np.maximum(area, 1)
    keep = ((area >= min_rel_area * area[best]) & (frac >= max(min_crisp, min_rel_crisp * frac[best]))
            & (mean_ev >= min_evidence) & ~on_border)
    keep[0] = False
    keep[best] = True
    return keep[labels]


def _parts_of(mask: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Per selected product part (a component of ``parts``), the component of ``mask`` that
    overlaps it most: a refinement keeps every part, but what it split off a part or added
    away from the product is dropped (as keeping the largest component does for one part)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    n_p, plabels = cv2.connectedComponents(parts.astype(np.uint8), connectivity=8)
    both = (labels > 0) & (plabels > 0)
    if n_p <= 1 or not both.any():
        return largest_component(mask)
    over = np.bincount(plabels[both] * n + labels[both], minlength=n_p * n).reshape(n_p, n)
    keep = np.zeros(n, bool)
    for p in range(1, n_p):
        if over[p].max() > 0:
            keep[int(np.argmax(over[p]))] = True
    return keep[labels]


def _drop_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


# ----------------------------------------------------------------------------- grabcut
def refine_with_grabcut(rgb: np.ndarray, mask: np.ndarray, *, shadow: np.ndarray | None = None,
                        side: int = GRABCUT_SIDE, iters: int = GRABCUT_ITERS,
                        band: int = 3) -> np.ndarray | None:
    """GrabCut on a reduced copy of the mask's bounding box (plus margin).

    Returns a float32 map at ``rgb``'s size: 1 = GrabCut foreground, 0 = background (linear
    interpolation of the coarse result, so values in between mark GrabCut's uncertain boundary),
    or None when GrabCut cannot run (degenerate mask).
    """
    h, w = mask.shape
    x, y, bw_, bh_ = mask_bbox(mask)
    if bw_ < 4 or bh_ < 4:
        return None
    mx, my = max(4, bw_ // 8), max(4, bh_ // 8)
    x0, y0 = max(0, x - mx), max(0, y - my)
    x1, y1 = min(w, x + bw_ + mx), min(h, y + bh_ + my)
    cw, ch = x1 - x0, y1 - y0
    s = min(1.0, side / max(cw, ch))
    gw, gh = max(8, int(round(cw * s))), max(8, int(round(ch * s)))
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1, :3])
    small = cv2.resize(crop, (gw, gh), interpolation=cv2.INTER_AREA) if (gw, gh) != (cw, ch) else crop
    m_small = cv2.resize(mask[y0:y1, x0:x1].astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA) >= 0.5
    if m_small.sum() < 4 or (~m_small).sum() < 4:
        return None
    m8 = m_small.astype(np.uint8)
    sure_fg = cv2.erode(m8, _disk(band)).astype(bool)
    maybe = cv2.dilate(m8, _disk(band)).astype(bool)
    gc = np.full((gh, gw), cv2.GC_BGD, np.uint8)
    gc[maybe] = cv2.GC_PR_BGD
    gc[m_small] = cv2.GC_PR_FGD
    if shadow is not None:
        sh = cv2.resize(shadow[y0:y1, x0:x1].astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA) >= 0.5
        gc[sh & maybe & ~sure_fg] = cv2.GC_PR_BGD
    gc[sure_fg] = cv2.GC_FGD
    if not (gc == cv2.GC_FGD).any() or not (gc == cv2.GC_BGD).any():
        # too thin / too big to have both sure sets: keep the input (no refinement)
        return None
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        # GrabCut's GMM initialisation draws from OpenCV's global RNG: seed it, so the same photo
        # gives the same mask whatever ran before (masks are stored once per image hash).
        cv2.setRNGSeed(0)
        cv2.grabCut(small, gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    fg_small = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = cv2.resize(fg_small, (cw, ch), interpolation=cv2.INTER_LINEAR)
    return out


# ----------------------------------------------------------------------------- classical
def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be H×W×3 (RGB) or H×W×4 (RGBA), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def _coverage(mask: np.ndarray, ev: np.ndarray, weak: np.ndarray | None = None,
              rgb: np.ndarray | None = None, band_px: int = 2, min_contrast: float = 40.0) -> np.ndarray:
    """Estimated product coverage in [0, 1] per pixel: 1 inside, 0 outside, unmixed at the edge.

    In a band of ``band_px`` on either side of the mask edge, a pixel is a mix of the product next
    to it and the background next to it. With ``rgb``, its coverage is its projection onto the
    line between the local mean colour inside (pixels inside the band) and outside (beyond it):
    linear unmixing. The evidence ratio it replaces over-counts where the background next to the
    product is its own soft shadow (shadowed background already has some evidence), which put
    the boundary 1-2 px out all round: the masks were too big, never too small. Where the two
    means are closer than ``min_contrast`` (RGB distance) the projection is mostly noise, and a
    light part next to a light background (a white sole) would be unmixed away: there, and
    without ``rgb``, coverage is ev / local interior ev.
    """
    m8 = mask.astype(np.uint8)
    k = _disk(band_px)
    inner = cv2.erode(m8, k)
    outer = cv2.dilate(m8, k)
    band = (outer > inner)
    frac = inner.astype(np.float32)
    if band.any():
        win = (4 * band_px + 3,) * 2
        # only the band's bounding box (plus the window) is filtered: the band is a thin line
        ys, xs = np.nonzero(band)
        pad = win[0]
        y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
        sub = (slice(y0, y1), slice(x0, x1))
        at = (ys - y0, xs - x0)   # band pixels in the crop

        def box(a: np.ndarray) -> np.ndarray:
            return cv2.boxFilter(a, cv2.CV_32F, win, normalize=False)[at]

        evc = np.minimum(ev[sub], 8.0).astype(np.float32)
        inner_f = inner[sub].astype(np.float32)
        den = box(inner_f)
        loc = np.maximum(np.where(den > 0, box(evc * inner_f) / np.maximum(den, 1e-6), 2.0), 1.0)
        cov = np.clip(evc[at] / loc, 0.0, 1.0)
        if rgb is not None:
            f = rgb[sub].astype(np.float32)
            outside = (1 - outer[sub]).astype(np.float32)
            den_o = box(outside)
            mean_in = box(f * inner_f[:, :, None]) / np.maximum(den, 1e-6)[:, None]
            mean_out = box(f * outside[:, :, None]) / np.maximum(den_o, 1e-6)[:, None]
            d = mean_in - mean_out
            dd = (d * d).sum(axis=1)
            unmixed = ((f[at] - mean_out) * d).sum(axis=1) / np.maximum(dd, 1e-6)
            ok = (den > 0) & (den_o > 0) & (dd > min_contrast**2)
            cov = np.where(ok, np.clip(unmixed, 0.0, 1.0), cov)
        frac[ys, xs] = cov
        if weak is not None:
            # parts found by their outline, not their colour: evidence says nothing there
            wb = band & weak
            frac[wb] = np.maximum(frac[wb], mask[wb].astype(np.float32))
    return frac


def classical_mask(image: np.ndarray, *, refine: bool = True, work_side: int = WORK_SIDE) -> MaskResult:
    """Mask the product of a catalog photo (RGB or RGBA; a real alpha channel is used directly).

    Never raises for a valid array: an unusable result (e.g. empty) comes back as such and
    :func:`validate_mask` / :func:`mask_product` decide.
    """
    image = _as_rgb_uint8(image)
    a = alpha_mask(image)
    if a is not None:
        return a
    rgb = np.ascontiguousarray(image[:, :, :3])
    H, W = rgb.shape[:2]

    # working copy: long side <= work_side, short side >= MIN_WORK_SIDE
    s = min(1.0, work_side / max(H, W))
    if min(H, W) * s < MIN_WORK_SIDE:
        s = MIN_WORK_SIDE / min(H, W)
    ww, wh = max(1, int(round(W * s))), max(1, int(round(H * s)))
    if (ww, wh) == (W, H):
        work = rgb
    else:
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        work = cv2.resize(rgb, (ww, wh), interpolation=interp)

    lab = cv2.cvtColor(work, cv2.COLOR_RGB2LAB).astype(np.float32)
    grad = _gradient(lab[:, :, 0])
    # pass 1: background from the border; pass 2: from every pixel pass 1 calls background
    hp = _highpass(lab[:, :, 0])
    bg1 = estimate_background(lab, grad=grad, hp=hp)
    ev1, _, _ = _evidence(lab, bg1)
    r_ex = max(2, int(round(min(ww, wh) / 128)))
    exclude = cv2.dilate((ev1 > 0.6).astype(np.uint8), _disk(r_ex)).astype(bool)
    bg = (replace(estimate_background(lab, grad=grad, hp=hp, exclude=exclude, order=3),
                  texture_tol=bg1.texture_tol)
          if exclude.mean() < 0.85 else bg1)
    edge = _step_edges(lab[:, :, 0], grad, max(12.0, 3.0 * bg.grad_noise))
    fine = _fine_texture(lab[:, :, 0])
    ev, shadow, textured = _evidence(lab, bg, hp, edge=edge, fine=fine)
    crisp = grad > max(36.0, 4.0 * bg.grad_noise)
    resid = lab - bg.pred
    # a soft shadow's fall-off (see _fall_off): a grey product merged with its own drop shadow
    # is promoted for its crisp rim, the shadow's fall-off around it is not
    ramp = grad > max(10.0, 3.0 * bg.grad_noise)
    walls = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    soft = _fall_off(shadow & ramp & ~walls, ~shadow & (ev <= 1.0) & ~walls)
    # a backdrop of crisp lines (brick mortar): a shadowed cell's rim is as sharp as the lines are
    yy, xx = _border_samples(wh, ww, max(3, int(0.04 * min(ww, wh))))
    on_edge = edge[yy, xx]
    step_bg = float(np.percentile(grad[yy, xx][on_edge], 90)) if on_edge.sum() >= 50 else 0.0
    shadow, promoted = _promote_crisp_shadows(ev, shadow, grad, resid[:, :, 0], soft=soft,
                                              backdrop_step=step_bg)

    thr = ev > 1.0
    r = max(1, int(round(min(ww, wh) / 256)))
    # "open": drop specks (small components) rather than eroding, so that thin but real
    # evidence (a crisp outline around a low-contrast part) survives; then close small gaps
    m8 = _drop_small(thr, max(8, int(2e-4 * ww * wh))).astype(np.uint8)
    m8 = cv2.morphologyEx(m8, cv2.MORPH_CLOSE, _disk(r + 1))
    coarse = m8.astype(bool)
    # light on light: parts a few levels off the background, closed off by a crisp outline
    # (the noise from the border fit: the second fit's residuals include a light product itself)
    light_kw = dict(min_area=max(16, int(1e-3 * ww * wh)), noise=np.minimum(bg.sigma, bg1.sigma), ramp=ramp)
    light = np.zeros(coarse.shape, bool)
    if not coarse.any():   # a wholly light product: its parts are all there is
        light = coarse = _light_parts(resid, bg, edge, coarse, **light_kw)
    if not coarse.any():
        empty = np.zeros((H, W), bool)
        return MaskResult(mask=empty, bbox=(0, 0, 0, 0), method="classical", score=0.0,
                          reason="classical: nothing differs from the border-estimated background")
    # for holes, shadow-like darkening is not "see-through background"
    ev_hole = np.maximum(ev, shadow.astype(np.float32))
    tl, _ = _tolerances(bg)
    offset_tol = max(3.0, 0.35 * tl)
    # (a smooth patch only stands out from a clearly textured background)
    hp_low = 0.75 * bg.hp_noise if bg.hp_noise > 0.8 else -np.inf
    hp_tol = 2.5 * bg.hp_noise + 1.0
    # the shadow-tolerant hole test's texture: the background's own level from pixels well away
    # from the mask (a plain white backdrop ~0.5, paper or brick 1-3)
    far_bg = ~cv2.dilate(coarse.astype(np.uint8), _disk(4 * r_ex)).astype(bool)
    fine_bg = float(np.median(fine[far_bg])) if far_bg.any() else 0.0
    fine_lo = 0.75 * fine_bg if bg.hp_noise > 0.8 else -np.inf
    holes = dict(evidence=ev_hole, residual=resid, offset_tol=offset_tol, texture=hp, texture_low=hp_low,
                 plain_evidence=np.where(textured, 0.0, ev),
                 fine_texture=(fine, fine_lo, 2.0 * fine_bg + 1.0, 0.9 * fine_bg), own_evidence=~textured)
    coarse = fill_holes(_select_parts(coarse, crisp, ev), **holes)
    # light parts closed off by a crisp outline (a white sole under a red upper)
    # the holes kept open only as background in shadow: _add_enclosed must not add them back
    # (a hole the strict test opens may still be a light part closed off by its outline)
    strict = {k: v for k, v in holes.items() if k not in ("plain_evidence", "fine_texture", "own_evidence")}
    opened = fill_holes(coarse) & ~coarse & fill_holes(coarse, **strict)
    if opened.any() and textured.any():
        # the product's shadow in an open hole, next to its edge, where the high-pass of that
        # edge (a few px) makes it look textured: background too (a band inside a ring)
        allowed = (textured & coarse).astype(np.uint8)
        g = opened.astype(np.uint8)
        for _ in range(2 * r_ex + 2):
            g = cv2.dilate(g, np.ones((3, 3), np.uint8)) & (allowed | opened)
        coarse &= ~g.astype(bool)
        opened |= g.astype(bool)
    shadowed = None
    edged = _edged_backdrop(edge, coarse, bg)
    if edged:
        ft, ft_lo, ft_hi, _ = holes["fine_texture"]
        shadowed = dict(ev=holes["plain_evidence"], texture=ft, texture_low=ft_lo, texture_high=ft_hi)
    enclosed = _add_enclosed(coarse, edge, ev, resid, offset_tol, hp, hp_tol, hp_low, keep_out=opened,
                             shadowed=shadowed)
    if enclosed.any():
        coarse = fill_holes(coarse | enclosed, **holes)
    # light parts next to the product (after the part selection: alone they have little evidence)
    extra = _light_parts(resid, bg, edge, coarse | opened, texture=(fine, fine_bg), **light_kw) & ~opened
    if extra.any():
        coarse = fill_holes(coarse | extra, **holes)
        light = light | extra
    bright = _brighter_parts(resid[:, :, 0], coarse | opened, min_area=light_kw["min_area"],
                             noise_L=float(min(bg.sigma[0], bg1.sigma[0])))
    if bright.any():
        coarse = fill_holes(coarse | bright, **holes)
        light = light | bright
    tinted = _tinted_parts(work, bg.pred, coarse | opened, min_area=light_kw["min_area"])
    if tinted.any():
        coarse = fill_holes(coarse | tinted, **holes)
        light = light | tinted
    if edged:   # (on a plain backdrop every shadow is smooth too)
        smooth = _smooth_parts(fine, coarse | opened, min_area=light_kw["min_area"])
        if smooth.any():
            coarse = fill_holes(coarse | smooth, **holes)
            light = light | smooth
    protected = enclosed | promoted | light
    # GrabCut's colour model calls a light part the background's (a white sole's toe): what a
    # crisp outline closes off from the image border is kept whatever GrabCut thinks
    protected = protected | (coarse & _inside_outline(edge))

    gc_note = "no grabcut"
    agree = 1.0
    if refine:
        gcmap = refine_with_grabcut(work, coarse, shadow=shadow)
        if gcmap is not None:
            # GrabCut may drop pixels it is sure of; it may add only pixels that are not
            # shadow-like (a grey product's colour model also fits its own shadow)
            # (not the parts decided by their crisp outline: their colour is the background's
            # or the shadow's, which is all GrabCut's colour model sees)
            refined = (coarse & ~((gcmap < 0.05) & ~protected)) | ((gcmap > 0.95) & ~shadow & ~opened)
            if refined.any():
                refined = fill_holes(_parts_of(refined, coarse), **holes)
                inter = float((refined & coarse).sum())
                union = float((refined | coarse).sum())
                agree = inter / union if union else 0.0
                coarse = refined
                gc_note = f"grabcut agreement {agree:.2f}"
            else:
                gc_note = "grabcut emptied the mask; threshold kept"

    # Sub-pixel boundary: each pixel near the edge gets an estimated product coverage (see
    # _coverage); the boundary sits where coverage crosses 1/2.
    frac = _coverage(coarse, ev, weak=protected, rgb=work)
    if (ww, wh) == (W, H):
        full = frac >= 0.5
    else:
        frac_f = cv2.resize(frac, (W, H), interpolation=cv2.INTER_LINEAR if s < 1 else cv2.INTER_AREA)
        full = frac_f >= 0.5
    if full.any() and (ww, wh) == (W, H):
        full = _parts_of(full, coarse)   # (upscaled: one coarse component stays one, skip the cost)

    # confidence: contrast of the evidence along the boundary x agreement with grabcut
    edge = cv2.morphologyEx(coarse.astype(np.uint8), cv2.MORPH_GRADIENT, _disk(1)).astype(bool) & coarse
    contrast = float(np.clip(np.median(ev[edge]) / 3.0, 0.0, 1.0)) if edge.any() else 0.0
    noise_pen = float(np.clip(1.0 - bg1.outlier_frac, 0.0, 1.0))
    score = float(np.clip((0.5 * contrast + 0.5 * agree) * (0.5 + 0.5 * noise_pen), 0.0, 1.0))
    reason = (f"classical: border background model (noise L {bg.sigma[0]:.1f}, "
              f"border outliers {bg1.outlier_frac:.0%}); {gc_note}")
    if (ww, wh) != (W, H):
        reason += f"; masked at {ww}x{wh}, upscaled to {W}x{H}" if s < 1 else f"; tiny image upsampled to {ww}x{wh}"
    return MaskResult(mask=full, bbox=mask_bbox(full), method="classical", score=score, reason=reason)


# ----------------------------------------------------------------------------- validation
def validate_mask(mask: np.ndarray, *, min_fraction: float = 0.01, max_fraction: float = 0.95,
                  max_borders_touched: int = 2) -> None:
    """Raise :class:`MaskRejected` when the mask is unusable for compositing."""
    if mask.ndim != 2:
        raise MaskRejected(f"mask must be 2-D H×W, got shape {mask.shape}")
    if mask.size == 0 or not mask.any():
        raise MaskRejected("empty mask: no product pixels found")
    frac = float(np.count_nonzero(mask)) / mask.size
    if frac > max_fraction:
        raise MaskRejected(
            f"mask covers {frac:.1%} of the image (> {max_fraction:.0%}): the product fills the "
            "frame or the background was not separated")
    if frac < min_fraction:
        raise MaskRejected(
            f"mask covers {frac:.2%} of the image (< {min_fraction:.0%}): product too small or not found")
    nb = borders_touched(mask)
    if nb > max_borders_touched:
        raise MaskRejected(
            f"mask touches {nb} image borders (> {max_borders_touched}): cut-off product or "
            "lifestyle photo (set allow_border_touch to accept)")


def mask_product(image: np.ndarray, *, allow_border_touch: bool = False) -> MaskResult:
    """Alpha or classical mask, validated; raises :class:`MaskRejected` with the reason."""
    res = classical_mask(image)
    try:
        validate_mask(res.mask, max_borders_touched=4 if allow_border_touch else 2)
    except MaskRejected as exc:
        raise MaskRejected(f"{exc.reason} [{res.method}: {res.reason}]", result=res) from None
    return res
