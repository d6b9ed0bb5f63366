"""A labelled evaluation set for product masking, built offline from images bundled with the
scikit-image wheel (no pooch downloads: only files under ``skimage/data/`` are used).

Each item is a "catalog photo": a product silhouette (the horse of ``skimage.data.horse()``,
the drawn shape of ``skimage.data.logo()``, the coins of ``skimage.data.coins()`` and a few
drawn product shapes: bottle, box, plate, mug with a see-through handle) filled with a crop of
a real photo (astronaut, coffee, chelsea, rocket, stereo motorcycle, immunohistochemistry,
grayscale camera/gravel, plus solid shaded colours), anti-aliased and composited onto one of
four background types:

- ``white``     near-pure white studio background
- ``offwhite``  off-white / tinted light grey
- ``gradient``  linear or radial light gradient (studio sweep, vignette)
- ``textured``  light paper/fabric texture (low-contrast real texture from brick/grass/page)

with a soft drop or contact shadow, sensor noise and JPEG compression.  The true mask is kept.

Also the cases drawn from the sample catalog (``bggen_assets/sample_catalog.py``): every product
kind x colour x opaque background at 400 and 800 px, and the white sneaker sole's coverage.

Used by ``tests/core/test_masking.py`` (which holds ``EVAL_SEEDS`` x ``EVAL_PER_BACKGROUND`` images and
the catalog cases to the documented targets below) and by ``benchmarks/masking.py`` (which prints
the figures, the same sets and more).  Deterministic for a given seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

BACKGROUNDS = ("white", "offwhite", "gradient", "textured")

# The labelled set the tests hold to the targets: several seeds, so that no floor fits one draw.
EVAL_SEEDS = (0, 1, 2, 3)
EVAL_PER_BACKGROUND = 12
# DESIGN.md, "Numbers to reach": mean IoU >= 0.97 on every background type, no image below 0.85.
TARGET_MEAN_IOU = 0.97
TARGET_IMAGE_IOU = 0.85

# Sample-catalog cases: each kind x colour on each opaque background, at both sizes.
CATALOG_BACKGROUNDS = ("white", "offwhite", "gradient", "texture")
CATALOG_SIZES = (400, 800)
CATALOG_IOU = 0.95          # every catalog photo (docs/masking.md)
SOLE_COVERED = 0.95         # share of the sneaker's sole (bottom 20% of the shoe) in the mask
SHADOW_KEPT = 0.005         # floor-shadow pixels kept, as a share of the product's area


@dataclass(frozen=True, eq=False)
class EvalItem:
    image: np.ndarray   # uint8 RGB
    mask: np.ndarray    # bool, the true product mask
    background: str
    shape: str
    texture: str
    index: int
    family: str = "silhouettes"   # the case family (FAMILIES' groups for the drawn products)
    seed: int = 0


# ----------------------------------------------------------------------------- source material
def _skdata(name: str) -> np.ndarray:
    """Load a bundled scikit-image sample; refuse anything that would need a download."""
    import skimage.data as skd

    bundled = {"horse", "logo", "coins", "astronaut", "coffee", "chelsea", "rocket", "camera",
               "gravel", "brick", "grass", "page", "immunohistochemistry", "stereo_motorcycle"}
    if name not in bundled:
        raise ValueError(f"{name} is not a bundled skimage sample")
    return getattr(skd, name)()


@lru_cache(maxsize=None)
def _shapes() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    horse = ~_skdata("horse")                       # True on the horse
    out["horse"] = _crop_to(horse)
    logo = _skdata("logo")[:, :, :3].min(axis=2) < 225   # the logo's drawn pixels (its alpha is flat)
    out["logo"] = _crop_to(_fill(_largest(logo)))
    coins = _skdata("coins")
    c = cv2.GaussianBlur(coins, (5, 5), 0)
    c = c > cv2.threshold(c, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
    c = cv2.morphologyEx(c.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, lab, st, _ = cv2.connectedComponentsWithStats(c)
    H, W = c.shape
    inner = [i for i in range(1, n)
             if st[i, 0] > 0 and st[i, 1] > 0 and st[i, 0] + st[i, 2] < W and st[i, 1] + st[i, 3] < H]
    big = max(inner, key=lambda i: st[i, cv2.CC_STAT_AREA])
    coin = _fill(lab == big)
    out["coin"] = _crop_to(coin)
    # drawn product shapes (at 400 px, anti-aliasing is applied at composite time)
    S = 400
    bottle = np.zeros((S, S), np.uint8)
    cv2.rectangle(bottle, (150, 150), (250, 380), 1, -1)
    cv2.ellipse(bottle, (200, 150), (50, 40), 0, 180, 360, 1, -1)
    cv2.rectangle(bottle, (180, 40), (220, 130), 1, -1)
    cv2.ellipse(bottle, (200, 380), (50, 12), 0, 0, 180, 1, -1)
    out["bottle"] = _crop_to(bottle.astype(bool))
    box = np.zeros((S, S), np.uint8)
    pts = np.array([[60, 120], [260, 80], [340, 140], [340, 330], [140, 370], [60, 300]], np.int32)
    cv2.fillPoly(box, [pts], 1)
    out["box"] = _crop_to(box.astype(bool))
    plate = np.zeros((S, S), np.uint8)
    cv2.ellipse(plate, (200, 200), (180, 110), 0, 0, 360, 1, -1)
    out["plate"] = _crop_to(plate.astype(bool))
    mug = np.zeros((S, S), np.uint8)
    cv2.rectangle(mug, (80, 80), (270, 340), 1, -1)
    cv2.ellipse(mug, (175, 340), (95, 20), 0, 0, 180, 1, -1)
    cv2.ellipse(mug, (270, 200), (75, 80), 0, -90, 90, 1, 28)     # handle with an open hole
    out["mug"] = _crop_to(mug.astype(bool))
    return out


@lru_cache(maxsize=None)
def _textures() -> dict[str, np.ndarray]:
    t: dict[str, np.ndarray] = {}
    t["astronaut"] = _skdata("astronaut")[0:300, 100:420]
    t["coffee"] = _skdata("coffee")[40:360, 120:480]
    t["chelsea"] = _skdata("chelsea")[20:280, 60:380]
    t["rocket"] = _skdata("rocket")[0:400, 150:550]
    t["motorcycle"] = _skdata("stereo_motorcycle")[0][100:400, 150:550]
    t["ihc"] = _skdata("immunohistochemistry")[100:400, 100:400]
    cam = _skdata("camera")[80:400, 100:420]
    t["camera_gray"] = np.repeat(cam[:, :, None], 3, axis=2)
    grav = _skdata("gravel")[0:320, 0:320]
    t["gravel_gray"] = np.repeat((grav * 0.8).astype(np.uint8)[:, :, None], 3, axis=2)
    return t


SOLID_COLOURS = {
    "solid_red": (200, 30, 40), "solid_navy": (30, 40, 110), "solid_green": (40, 140, 70),
    "solid_black": (25, 25, 28), "solid_tan": (196, 160, 112), "solid_grey": (120, 120, 125),
}


def _crop_to(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    return m[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].copy()


def _largest(m: np.ndarray) -> np.ndarray:
    n, lab, st, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8))
    k = 1 + int(np.argmax(st[1:, cv2.CC_STAT_AREA]))
    return lab == k


def _fill(m: np.ndarray) -> np.ndarray:
    h, w = m.shape
    ff = np.pad(m.astype(np.uint8), 1)
    cv2.floodFill(ff, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 2)
    return ff[1:-1, 1:-1] != 2


# ----------------------------------------------------------------------------- rendering
def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "white":
        base = np.array([255, 255, 255], np.float32) - rng.uniform(0, 4)
        bg = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == "offwhite":
        lvl = rng.uniform(222, 246)
        tint = rng.normal(0, 4, 3)
        bg = np.broadcast_to(lvl + tint, (h, w, 3)).astype(np.float32).copy()
    elif kind == "gradient":
        c0 = rng.uniform(228, 252) + rng.normal(0, 3, 3)
        c1 = rng.uniform(170, 215) + rng.normal(0, 6, 3)
        if rng.random() < 0.5:  # linear sweep at a random angle
            ang = rng.uniform(0, 2 * np.pi)
            t = (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5)) + 0.5
            t = np.clip(t, 0, 1)
        else:                   # radial vignette, bright centre
            cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.3, 0.6) * h
            t = np.sqrt(((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2) / 0.8
            t = np.clip(t, 0, 1) ** rng.uniform(1.3, 2.5)   # smooth light fall-off
        bg = c0[None, None, :] * (1 - t[:, :, None]) + c1[None, None, :] * t[:, :, None]
    elif kind == "textured":
        src = rng.choice(["brick", "grass", "page"])
        tex = _skdata(src).astype(np.float32)
        tex = cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)
        tex = (tex - tex.mean()) / (tex.std() + 1e-6)
        amp = rng.uniform(2.0, 5.0)
        lvl = rng.uniform(225, 245)
        tint = rng.normal(0, 3, 3)
        bg = lvl + tint[None, None, :] + amp * tex[:, :, None]
    else:
        raise ValueError(kind)
    return bg.astype(np.float32)


def _fill_texture(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if name in SOLID_COLOURS:
        c = np.array(SOLID_COLOURS[name], np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = 0.75 + 0.35 * (1 - np.sqrt(((xx / w - 0.35) ** 2 + (yy / h - 0.3) ** 2)))
        return np.clip(c[None, None, :] * shade[:, :, None], 0, 255)
    t = _textures()[name]
    return cv2.resize(t, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def render_item(index: int, background: str, *, size: tuple[int, int] | None = None,
                seed: int = 0) -> EvalItem:
    rng = np.random.default_rng([seed, index, BACKGROUNDS.index(background)])
    shapes = _shapes()
    shape_names = sorted(shapes)
    tex_names = sorted(_textures()) + sorted(SOLID_COLOURS)
    shape = shape_names[index % len(shape_names)]
    texture = tex_names[(index * 5 + 3) % len(tex_names)]
    if size is None:
        w = int(rng.integers(480, 900))
        h = int(w * rng.uniform(0.7, 1.35))
    else:
        w, h = size
    sil = shapes[shape]
    # product occupies 15-55% of the canvas area (bbox), with a margin to the borders
    area = rng.uniform(0.18, 0.5) * w * h
    ar = sil.shape[1] / sil.shape[0]
    pw = int(min(np.sqrt(area * ar), 0.8 * w))
    ph = int(min(pw / ar, 0.8 * h))
    pw = int(min(pw, ph * ar))
    ss = 4  # supersample for anti-aliased edges
    big = cv2.resize(sil.astype(np.uint8) * 255, (pw * ss, ph * ss), interpolation=cv2.INTER_LINEAR)
    alpha_p = cv2.resize(big.astype(np.float32) / 255.0, (pw, ph), interpolation=cv2.INTER_AREA)
    mask_p = alpha_p >= 0.5
    x0 = int(rng.integers(int(0.06 * w), max(int(0.06 * w) + 1, w - pw - int(0.06 * w))))
    y0 = int(rng.integers(int(0.05 * h), max(int(0.05 * h) + 1, h - ph - int(0.08 * h))))
    alpha = np.zeros((h, w), np.float32)
    alpha[y0: y0 + ph, x0: x0 + pw] = alpha_p
    gt = np.zeros((h, w), bool)
    gt[y0: y0 + ph, x0: x0 + pw] = mask_p

    bg = _shadowed(_background(background, h, w, rng), alpha, (x0, y0, pw, ph), rng)
    fill = np.zeros((h, w, 3), np.float32)
    fill[y0: y0 + ph, x0: x0 + pw] = _fill_texture(texture, ph, pw, rng)
    img = _photographed(alpha[:, :, None] * fill + (1 - alpha[:, :, None]) * bg, rng)
    return EvalItem(image=img, mask=gt, background=background, shape=shape, texture=texture, index=index, seed=seed)


def _shadowed(bg: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int],
              rng: np.random.Generator) -> np.ndarray:
    """``bg`` with a soft shadow of the product (``alpha``, inside ``box`` = x, y, w, h): a drop
    shadow (offset, blurred silhouette) or a contact ellipse under the box."""
    h, w = alpha.shape
    x0, y0, pw, ph = box
    strength = rng.uniform(0.12, 0.32)
    if rng.random() < 0.5:
        dx, dy = rng.integers(-int(0.03 * w), int(0.03 * w) + 1), rng.integers(int(0.01 * h), int(0.04 * h) + 1)
        M = np.float32([[1, 0, dx], [0, 1, dy]])
        sh = cv2.warpAffine(alpha, M, (w, h))
        sig = rng.uniform(0.01, 0.03) * max(w, h)
    else:
        sh = np.zeros((h, w), np.float32)
        cv2.ellipse(sh, (x0 + pw // 2, y0 + ph), (int(pw * 0.45), max(3, int(ph * 0.06))), 0, 0, 360, 1.0, -1)
        sig = rng.uniform(0.008, 0.02) * max(w, h)
    sh = cv2.GaussianBlur(sh, (0, 0), sig)
    return bg * (1.0 - strength * sh[:, :, None])


def _photographed(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and JPEG compression (q 70-95) on a float RGB composite."""
    img = img.astype(np.float32)   # (the noise is added in float32, as the set was first made)
    img += rng.normal(0, rng.uniform(0.8, 2.5), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    q = int(rng.integers(70, 96))
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


# ----------------------------------------------------------------------------- drawn families
# Products the silhouettes above do not have, drawn (4x supersampled) so the true mask is exact,
# each on every background type with the same shadow (drop or contact), noise and JPEG as above:
# - "parts": several parts (a pair of shoes, a pair of earrings);
# - "holes": true holes, whose inside shows the background (and, with a drop shadow, the
#   product's own shadow): a ring, a handbag's handle gap, a mug's handle, the gap between a
#   lamp's two rods under its shade, a strap's loop with its buckle;
# - "light": light, low-saturation products on light backgrounds (light on light): a white
#   sneaker with a white sole, silver headphones, a cream cushion, shaded as a rounded matte
#   object is (lit from above, darker towards its outline) with a seam where parts meet.
FAMILIES = {"pair_of_shoes": "parts", "earrings": "parts", "ring": "holes",
            "handbag": "holes", "mug": "holes", "lamp": "holes", "strap_loop": "holes",
            "white_sneaker": "light", "silver_headphones": "light", "cream_cushion": "light"}
FAMILY_GROUPS = ("parts", "holes", "light")
FAMILY_SIZE = (560, 420)
FAMILY_IOU = 0.95
# The tests hold seed 0 of every family x background; the benchmark runs these seeds.
FAMILY_SEEDS = (0, 1, 2, 3)

# The first families' look (one solid, shaded colour each): unchanged, so their images are too.
_FAMILY_COLOUR = {"pair_of_shoes": "solid_red", "earrings": "solid_navy", "ring": "solid_green"}
# light-on-light colours (RGB): low saturation, within 5-30 levels of the light backgrounds
WHITE_UPPER, WHITE_SOLE, SEAM = (236, 236, 233), (248, 248, 246), (196, 196, 194)
SILVER, CREAM = (196, 199, 204), (238, 229, 208)


def _draw_family(kind: str, w: int, h: int, ss: int) -> np.ndarray:
    """The product's alpha at ``ss``x the canvas, as uint8 0/255 (single-colour families)."""
    return _draw_regions(kind, w, h, ss)[0][0] if kind not in _FAMILY_COLOUR else _draw_old(kind, w, h, ss)


def _draw_old(kind: str, w: int, h: int, ss: int) -> np.ndarray:
    big = np.zeros((h * ss, w * ss), np.uint8)
    S = lambda *v: tuple(int(round(c * ss)) for c in v)   # noqa: E731 - canvas px to supersampled px
    if kind == "pair_of_shoes":
        for cx, ang in ((0.31, 8), (0.69, -8)):
            cv2.ellipse(big, S(cx * w, 0.55 * h), S(0.16 * w, 0.09 * h), ang, 0, 360, 255, -1)
            cv2.ellipse(big, S((cx - 0.06 * (1 if ang > 0 else -1)) * w, 0.47 * h), S(0.07 * w, 0.07 * h),
                        0, 0, 360, 255, -1)                                   # the heel's collar
    elif kind == "earrings":
        for cx in (0.38, 0.62):
            cv2.circle(big, S(cx * w, 0.35 * h), int(0.035 * w * ss), 255, -1)                    # stud
            cv2.line(big, S(cx * w, 0.35 * h), S(cx * w, 0.55 * h), 255, max(1, int(0.012 * w * ss)))
            cv2.ellipse(big, S(cx * w, 0.62 * h), S(0.06 * w, 0.09 * h), 0, 0, 360, 255, -1)      # drop
    elif kind == "ring":
        cv2.circle(big, S(0.5 * w, 0.5 * h), int(0.3 * h * ss), 255, -1)
        cv2.circle(big, S(0.5 * w, 0.5 * h), int(0.19 * h * ss), 0, -1)
    else:
        raise ValueError(kind)
    return big


def _draw_regions(kind: str, w: int, h: int, ss: int) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """The product's parts at ``ss``x the canvas: (alpha uint8 0/255, RGB colour), later parts
    drawn over earlier ones."""
    S = lambda *v: tuple(int(round(c * ss)) for c in v)   # noqa: E731 - canvas px to supersampled px
    T = lambda f: max(1, int(round(f * w * ss)))           # noqa: E731 - a line width, share of w
    new = lambda: np.zeros((h * ss, w * ss), np.uint8)     # noqa: E731
    poly = lambda m, pts: cv2.fillPoly(m, [np.array([S(x * w, y * h) for x, y in pts], np.int32)], 255)  # noqa: E731
    if kind == "handbag":         # a body and a handle arc: the gap under the handle is background
        body, handle = new(), new()
        poly(body, [(0.30, 0.45), (0.70, 0.45), (0.77, 0.85), (0.23, 0.85)])
        cv2.ellipse(handle, S(0.5 * w, 0.46 * h), S(0.14 * w, 0.27 * h), 0, 180, 360, 255, T(0.028))
        return [(body, SOLID_COLOURS["solid_tan"]), (handle, (150, 110, 70))]
    if kind == "mug":             # a body and a C handle with an open hole
        body, handle = new(), new()
        cv2.rectangle(body, S(0.30 * w, 0.25 * h), S(0.58 * w, 0.80 * h), 255, -1)
        cv2.ellipse(body, S(0.44 * w, 0.80 * h), S(0.14 * w, 0.035 * h), 0, 0, 180, 255, -1)
        cv2.ellipse(handle, S(0.58 * w, 0.52 * h), S(0.11 * w, 0.16 * h), 0, -90, 90, 255, T(0.035))
        return [(body, (40, 90, 160)), (handle, (40, 90, 160))]
    if kind == "lamp":            # a shade on two rods on a base: the gap between the rods
        shade, metal = new(), new()
        poly(shade, [(0.37, 0.10), (0.63, 0.10), (0.72, 0.40), (0.28, 0.40)])
        for x in (0.40, 0.60):
            cv2.line(metal, S(x * w, 0.40 * h), S(x * w, 0.83 * h), 255, T(0.02))
        cv2.ellipse(metal, S(0.5 * w, 0.85 * h), S(0.17 * w, 0.04 * h), 0, 0, 360, 255, -1)
        return [(metal, (45, 45, 50)), (shade, (214, 170, 110))]
    if kind == "strap_loop":      # a strap closed in a loop, with a metal buckle
        strap, buckle = new(), new()
        cv2.ellipse(strap, S(0.48 * w, 0.5 * h), S(0.28 * w, 0.22 * h), 0, 0, 360, 255, T(0.045))
        cv2.rectangle(buckle, S(0.72 * w, 0.38 * h), S(0.80 * w, 0.62 * h), 255, T(0.014))
        return [(strap, (60, 40, 30)), (buckle, (150, 150, 155))]
    if kind == "white_sneaker":   # white upper, whiter sole, a grey seam between them
        upper, sole, seam = new(), new(), new()
        cv2.ellipse(upper, S(0.54 * w, 0.56 * h), S(0.28 * w, 0.17 * h), 0, 180, 360, 255, -1)
        cv2.ellipse(upper, S(0.36 * w, 0.43 * h), S(0.10 * w, 0.15 * h), -10, 0, 360, 255, -1)
        cv2.rectangle(sole, S(0.25 * w, 0.555 * h), S(0.83 * w, 0.64 * h), 255, -1)
        for x in (0.25, 0.83):
            cv2.circle(sole, S(x * w, 0.5975 * h), int(0.0425 * h * ss), 255, -1)
        cv2.line(seam, S(0.23 * w, 0.56 * h), S(0.85 * w, 0.56 * h), 255, T(0.004))
        seam &= cv2.bitwise_or(upper, sole)
        return [(upper, WHITE_UPPER), (sole, WHITE_SOLE), (seam, SEAM)]
    if kind == "silver_headphones":   # a headband arc and two ear cups, brushed silver
        band, cups = new(), new()
        cv2.ellipse(band, S(0.5 * w, 0.56 * h), S(0.22 * w, 0.36 * h), 0, 180, 360, 255, T(0.035))
        for x in (0.28, 0.72):
            cv2.ellipse(cups, S(x * w, 0.62 * h), S(0.065 * w, 0.13 * h), 0, 0, 360, 255, -1)
        return [(band, SILVER), (cups, tuple(int(c * 0.97) for c in SILVER))]
    if kind == "cream_cushion":   # a square cushion, corners pulled out, woven fabric
        body = new()
        poly(body, [(0.30, 0.22), (0.50, 0.26), (0.70, 0.22), (0.67, 0.50), (0.70, 0.78), (0.50, 0.74),
                    (0.30, 0.78), (0.33, 0.50)])
        return [(body, CREAM)]
    raise ValueError(kind)


def _shade_light(alpha: np.ndarray, fill: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Shading of a drawn product: lit from above (darker towards the bottom), darker towards its
    outline (a rounded surface turns away from the light), brushed metal's stripes, a fabric's
    weave. Low-contrast on purpose for the light products: a few levels, as a studio shot gives."""
    h, w = alpha.shape
    inside = (alpha >= 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    ys = np.nonzero(inside.any(axis=1))[0]
    y0, y1 = (int(ys.min()), int(ys.max()) + 1) if ys.size else (0, h)
    v = np.clip((np.arange(h, dtype=np.float32) - y0) / max(1, y1 - y0), 0, 1)[:, None]
    light = FAMILIES[kind] == "light"
    depth = rng.uniform(0.04, 0.07) if light else rng.uniform(0.15, 0.25)
    shade = 1.0 - depth * v - (0.5 * depth) * np.exp(-dist / rng.uniform(3.0, 6.0))
    if kind == "silver_headphones":
        xx = np.arange(w, dtype=np.float32)[None, :]
        shade = shade + 0.04 * np.sin(xx / rng.uniform(5.0, 9.0)) * np.sin(np.arange(h)[:, None] / 23.0)
    if kind == "cream_cushion":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = shade + 0.012 * np.sin(xx * 1.3) * np.sin(yy * 1.3)
    return np.clip(fill * shade[:, :, None], 0, 255)


def render_family(kind: str, background: str, *, seed: int = 0) -> EvalItem:
    """One drawn product of ``FAMILIES`` on ``background``, with its exact mask."""
    rng = np.random.default_rng([seed, list(FAMILIES).index(kind), BACKGROUNDS.index(background), 7])
    w, h = FAMILY_SIZE
    ss = 4
    if kind in _FAMILY_COLOUR:
        big = _draw_old(kind, w, h, ss)
        alpha = cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
        gt = alpha >= 0.5
        x, y, bw, bh = cv2.boundingRect(gt.astype(np.uint8))
        bg = _shadowed(_background(background, h, w, rng), alpha, (x, y, bw, bh), rng)
        colour = _FAMILY_COLOUR[kind]
        fill = _fill_texture(colour, h, w, rng)
    else:
        regions = _draw_regions(kind, w, h, ss)
        union = np.zeros((h * ss, w * ss), np.uint8)
        fill_big = np.zeros((h * ss, w * ss, 3), np.float32)
        for m, c in regions:   # later parts over earlier ones
            union |= m
            fill_big[m > 0] = c
        alpha = cv2.resize(union.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
        # the colour of the covered share of each pixel (not mixed with the black outside)
        fill = cv2.resize(fill_big, (w, h), interpolation=cv2.INTER_AREA) / np.maximum(alpha, 1e-6)[:, :, None]
        gt = alpha >= 0.5
        x, y, bw, bh = cv2.boundingRect(gt.astype(np.uint8))
        bg = _shadowed(_background(background, h, w, rng), alpha, (x, y, bw, bh), rng)
        fill = _shade_light(alpha, fill, kind, rng)
        colour = FAMILIES[kind]
    img = _photographed(alpha[:, :, None] * fill + (1 - alpha[:, :, None]) * bg, rng)
    return EvalItem(image=img, mask=gt, background=background, shape=kind, texture=colour, index=-1,
                    family=FAMILIES[kind], seed=seed)


def family_set(seeds: tuple[int, ...] = FAMILY_SEEDS, kinds: tuple[str, ...] | None = None,
               backgrounds: tuple[str, ...] = BACKGROUNDS) -> list[EvalItem]:
    """Every drawn family x background x seed."""
    return [render_family(k, b, seed=s) for s in seeds for k in (kinds or tuple(FAMILIES)) for b in backgrounds]


def parts_kept(mask: np.ndarray, true_mask: np.ndarray, min_cover: float = 0.9) -> int:
    """How many of the true mask's parts (8-connected) are at least ``min_cover`` in ``mask``."""
    n, labels = cv2.connectedComponents(true_mask.astype(np.uint8), connectivity=8)
    return sum(int(mask[labels == k].mean() >= min_cover) for k in range(1, n))


def make_evalset(n_per_background: int = 24, *, seed: int = 0,
                 size: tuple[int, int] | None = None,
                 backgrounds: tuple[str, ...] = BACKGROUNDS) -> list[EvalItem]:
    return [render_item(i, bg, size=size, seed=seed) for bg in backgrounds for i in range(n_per_background)]


# ----------------------------------------------------------------------------- metrics
def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt)) / union if union else 1.0


def _boundary(m: np.ndarray) -> np.ndarray:
    m8 = m.astype(np.uint8)
    return (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8))).astype(bool)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tol_frac: float = 0.0075) -> float:
    """Boundary F-measure (DAVIS-style): tolerance = tol_frac × image diagonal (>= 1 px)."""
    h, w = gt.shape
    tol = max(1.0, tol_frac * float(np.hypot(h, w)))
    bp, bg = _boundary(pred), _boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    dt_g = cv2.distanceTransform((~bg).astype(np.uint8), cv2.DIST_L2, 3)
    dt_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, 3)
    precision = float((dt_g[bp] <= tol).mean())
    recall = float((dt_p[bg] <= tol).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- sample catalog
def catalog_photo(kind: str, colour: str, background: str, size: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A square sample-catalog photo (RGB) of `kind` in the named colour and its true mask."""
    from bggen_assets.sample_catalog import COLOURS, photo

    return photo(kind, COLOURS[colour], background, np.random.default_rng(seed), size=(size, size))


def sole_and_floor(true_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sneaker's sole (bottom 20% of the shoe) and the floor below it (from 6 px under the
    sole down: where its soft floor shadow lies)."""
    rows = np.nonzero(true_mask.any(axis=1))[0]
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    sole = true_mask.copy()
    sole[: y1 - int(0.2 * (y1 - y0))] = False
    floor = np.zeros_like(true_mask)
    floor[y1 + 6:] = True
    return sole, floor


def sole_scores(mask: np.ndarray, true_mask: np.ndarray) -> tuple[float, float]:
    """(share of the sole in the mask, floor pixels in the mask as a share of the product)."""
    sole, floor = sole_and_floor(true_mask)
    return (float((mask & sole).sum()) / max(1, int(sole.sum())),
            float((mask & floor).sum()) / max(1, int(true_mask.sum())))
