"""A sample catalog the project draws itself: merchants, feeds, product photos, placements, prompts.

Products of different shapes (sneakers, boots, handbags, backpacks, lamps, vases, mugs, bottles,
watches) are drawn with shading on the kinds of backgrounds real feeds have: white, off-white,
gradient, light paper texture, and transparent PNGs. A few deliberately bad rows (missing file,
a non-image, a product filling the whole frame) show how the pipeline reports and skips them.

    python -m bggen_assets.sample_catalog OUT_DIR [--products-per-merchant N] [--merchants N]
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

SS = 2  # drawn at 2x, downsampled: antialiased edges like a real photo

COLOURS = {
    "red": (200, 40, 45),
    "navy": (30, 45, 100),
    "green": (40, 120, 70),
    "black": (35, 35, 38),
    "tan": (190, 140, 90),
    "teal": (20, 130, 140),
    "mustard": (215, 165, 40),
    "burgundy": (120, 25, 45),
    "sky": (90, 160, 220),
    "olive": (110, 115, 50),
    "coral": (240, 110, 90),
    "grey": (120, 125, 130),
}

# category -> [(subcategory, drawer name)]
CATEGORIES = {
    "footwear": [("sneakers", "sneaker"), ("boots", "boot")],
    "bags": [("handbags", "handbag"), ("backpacks", "backpack")],
    "home": [("lamps", "lamp"), ("vases", "vase"), ("mugs", "mug")],
    "beauty": [("fragrance", "bottle")],
    "accessories": [("watches", "watch")],
}

SINGULAR = {"sneakers": "sneaker", "boots": "boot", "handbags": "handbag", "backpacks": "backpack", "lamps": "lamp",
            "vases": "vase", "mugs": "mug", "fragrance": "fragrance", "watches": "watch"}

STANDARD_SIZES = [
    "300x250", "728x90", "160x600", "300x600", "320x50", "970x250", "336x280", "468x60",
    "250x250", "120x600", "1200x628", "1080x1080", "1080x1920", "320x100", "200x200",
]

PROMPTS = {
    "footwear": [
        ("urban-concrete", "a sneaker on a sunlit concrete floor in an urban studio, soft shadows, product photography", "concrete", ["#dcd9d4", "#b4b0aa"]),
        ("beach-sunset", "on warm sand at a beach at golden hour, clear sky, shallow depth of field", "outdoor", ["#f2b880", "#fde7c9", "#e3c58f"]),
        ("pastel-podium", "on a pastel podium in a minimal studio, soft light, e-commerce hero shot", "podium", ["#d9e8f6", "#b9d0ea", "#f4f8fc"]),
    ],
    "bags": [
        ("marble-luxury", "on a white marble table, luxury boutique, soft window light", "marble", None),
        ("autumn-park", "in an autumn park on a path, warm light, bokeh", "outdoor", ["#f0c98a", "#fbeed8", "#b98b52"]),
        ("linen-studio", "on linen fabric in a bright studio, soft shadows", "fabric", ["#efe9e1", "#ddd3c6", "#c9bba8"]),
    ],
    "home": [
        ("scandi-wood", "on a light oak table in a scandinavian living room, daylight", "wood", ["#f2ede6", "#d2ad82", "#a87b50"]),
        ("warm-studio", "in a warm minimal studio, beige backdrop, soft light", "studio", ["#f3e7d8", "#dcc7ae", "#c9b093"]),
        ("pink-podium", "on a pink podium, pastel set design, product photography", "podium", None),
    ],
    "beauty": [
        ("spa-marble", "on marble in a spa bathroom, soft daylight, water drops", "marble", ["#f1eeea", "#dedad4", "#f8f6f3"]),
        ("sunny-podium", "on a yellow podium, summer mood, hard sunlight", "podium", ["#fbe3a5", "#f5cd6e", "#fff4d6"]),
    ],
    "accessories": [
        ("dark-studio", "on a dark slate surface, moody studio light", "studio", ["#6b6f76", "#4b4e54", "#3a3c40"]),
        ("linen-studio", "on linen fabric in a bright studio, soft shadows", "fabric", None),
    ],
}

MERCHANTS = {
    "northwind": ["footwear", "bags", "home"],
    "acme-outfitters": ["footwear", "bags", "beauty", "accessories"],
}


@dataclass
class Drawn:
    rgb: np.ndarray  # H x W x 3 float32 0..255
    mask: np.ndarray  # H x W float32 0..1 (coverage)


def _shade(mask: np.ndarray, colour, rng, light_dir=-0.4) -> np.ndarray:
    """Cylindrical shading across the object's width plus a soft highlight."""
    h, w = mask.shape
    cols = np.nonzero(mask.max(axis=0) > 0)[0]
    x0, x1 = (cols.min(), cols.max() + 1) if cols.size else (0, w)
    u = (np.arange(w, dtype=np.float32) - x0) / max(1, x1 - x0) * 2 - 1  # -1..1 across the object
    shade = 0.72 + 0.38 * np.cos(np.clip(u - light_dir * 0.5, -1.5, 1.5) * 1.05)
    hl = 0.28 * np.exp(-((u - light_dir) ** 2) / 0.02)
    rows = np.nonzero(mask.max(axis=1) > 0)[0]
    y0, y1 = (rows.min(), rows.max() + 1) if rows.size else (0, h)
    v = (np.arange(h, dtype=np.float32) - y0) / max(1, y1 - y0)
    vshade = 1.05 - 0.15 * v
    base = np.array(colour, np.float32)[None, None, :]
    img = base * (shade[None, :, None] * vshade[:, None, None])
    img = img + 255.0 * hl[None, :, None] * 0.6
    img *= 1.0 + 0.03 * rng.standard_normal((h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255)


def _layer(canvas: Drawn, mask_u8: np.ndarray, rgb: np.ndarray) -> None:
    m = (mask_u8.astype(np.float32) / 255.0)[:, :, None]
    canvas.rgb[:] = canvas.rgb * (1 - m) + rgb * m
    canvas.mask[:] = np.maximum(canvas.mask, m[:, :, 0])


def _poly(shape, pts) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(np.array(pts)).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    return m


def draw_product(kind: str, size: tuple[int, int], colour, rng: np.random.Generator) -> Drawn:
    """Draw one product filling most of a size=(w, h) box, at SS x resolution."""
    w, h = size[0] * SS, size[1] * SS
    d = Drawn(np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32))
    shape = (h, w)
    c = np.array(colour, np.float32)
    light = np.array([245, 245, 242], np.float32)
    dark = c * 0.45
    if kind in ("sneaker", "boot"):
        top = 0.05 * h if kind == "boot" else 0.35 * h
        body = [(0.05 * w, 0.78 * h), (0.1 * w, 0.5 * h), (0.35 * w, top + 0.1 * h), (0.45 * w, top),
                (0.6 * w, top), (0.62 * w, 0.45 * h), (0.9 * w, 0.6 * h), (0.97 * w, 0.78 * h)]
        m = _poly(shape, body)
        _layer(d, m, _shade(m, c, rng))
        sole = _poly(shape, [(0.03 * w, 0.76 * h), (0.98 * w, 0.76 * h), (0.97 * w, 0.92 * h), (0.05 * w, 0.92 * h)])
        _layer(d, sole, _shade(sole, light, rng))
        for i in range(5):  # laces
            x = 0.4 * w + i * 0.045 * w
            y = top + 0.12 * h + i * 0.05 * h
            cv2.line(d.rgb, (int(x), int(y)), (int(x + 0.06 * w), int(y - 0.03 * h)), (240, 240, 240), max(2, w // 120), cv2.LINE_AA)
        cv2.ellipse(d.rgb, (int(0.55 * w), int(0.66 * h)), (int(0.2 * w), int(0.06 * h)), -10, 200, 340, light.tolist(), max(3, w // 80), cv2.LINE_AA)
    elif kind == "handbag":
        ring = np.zeros(shape, np.uint8)
        cv2.ellipse(ring, (w // 2, int(0.38 * h)), (int(0.26 * w), int(0.3 * h)), 0, 180, 360, 255, max(6, w // 28), cv2.LINE_AA)
        _layer(d, ring, _shade(ring, dark, rng))
        m = _poly(shape, [(0.18 * w, 0.38 * h), (0.82 * w, 0.38 * h), (0.95 * w, 0.95 * h), (0.05 * w, 0.95 * h)])
        _layer(d, m, _shade(m, c, rng))
        flap = _poly(shape, [(0.18 * w, 0.38 * h), (0.82 * w, 0.38 * h), (0.78 * w, 0.6 * h), (0.22 * w, 0.6 * h)])
        _layer(d, flap, _shade(flap, c * 0.85, rng))
        cv2.rectangle(d.rgb, (int(0.46 * w), int(0.55 * h)), (int(0.54 * w), int(0.64 * h)), (215, 185, 90), -1, cv2.LINE_AA)
    elif kind == "backpack":
        m = np.zeros(shape, np.uint8)
        cv2.rectangle(m, (int(0.15 * w), int(0.12 * h)), (int(0.85 * w), int(0.96 * h)), 255, -1)
        m = cv2.GaussianBlur(m, (0, 0), w * 0.02)
        m = np.where(m > 127, 255, 0).astype(np.uint8)
        _layer(d, m, _shade(m, c, rng))
        pocket = np.zeros(shape, np.uint8)
        cv2.rectangle(pocket, (int(0.25 * w), int(0.55 * h)), (int(0.75 * w), int(0.9 * h)), 255, -1)
        _layer(d, pocket, _shade(pocket, c * 0.8, rng))
        cv2.line(d.rgb, (int(0.25 * w), int(0.6 * h)), (int(0.75 * w), int(0.6 * h)), (200, 200, 200), max(2, w // 150), cv2.LINE_AA)
        loop = np.zeros(shape, np.uint8)
        cv2.ellipse(loop, (w // 2, int(0.12 * h)), (int(0.12 * w), int(0.1 * h)), 0, 180, 360, 255, max(4, w // 40), cv2.LINE_AA)
        _layer(d, loop, _shade(loop, dark, rng))
    elif kind == "lamp":
        shade = _poly(shape, [(0.3 * w, 0.05 * h), (0.7 * w, 0.05 * h), (0.88 * w, 0.42 * h), (0.12 * w, 0.42 * h)])
        _layer(d, shade, _shade(shade, c, rng))
        stem = _poly(shape, [(0.48 * w, 0.42 * h), (0.52 * w, 0.42 * h), (0.52 * w, 0.88 * h), (0.48 * w, 0.88 * h)])
        _layer(d, stem, _shade(stem, np.array([180, 160, 110], np.float32), rng))
        base = np.zeros(shape, np.uint8)
        cv2.ellipse(base, (w // 2, int(0.9 * h)), (int(0.22 * w), int(0.06 * h)), 0, 0, 360, 255, -1, cv2.LINE_AA)
        _layer(d, base, _shade(base, np.array([170, 150, 100], np.float32), rng))
    elif kind in ("vase", "bottle"):
        ys = np.linspace(0.04, 0.97, 120)
        if kind == "vase":
            prof = 0.18 + 0.22 * np.sin(np.clip((ys - 0.15) / 0.82, 0, 1) * math.pi) ** 1.3
            prof[ys < 0.15] = 0.14
        else:
            prof = np.where(ys < 0.28, 0.1, 0.32)
            prof[ys < 0.12] = 0.13
        left = [(w * (0.5 - p), h * y) for p, y in zip(prof, ys)]
        right = [(w * (0.5 + p), h * y) for p, y in zip(prof[::-1], ys[::-1])]
        m = _poly(shape, left + right)
        _layer(d, m, _shade(m, c, rng))
        if kind == "bottle":
            cap = _poly(shape, [(0.37 * w, 0.02 * h), (0.63 * w, 0.02 * h), (0.63 * w, 0.2 * h), (0.37 * w, 0.2 * h)])
            _layer(d, cap, _shade(cap, np.array([200, 175, 110], np.float32), rng))
            cv2.rectangle(d.rgb, (int(0.3 * w), int(0.5 * h)), (int(0.7 * w), int(0.72 * h)), (238, 236, 230), -1, cv2.LINE_AA)
    elif kind == "mug":
        handle = np.zeros(shape, np.uint8)
        cv2.ellipse(handle, (int(0.74 * w), int(0.5 * h)), (int(0.17 * w), int(0.2 * h)), 0, -90, 90, 255, max(8, w // 16), cv2.LINE_AA)
        _layer(d, handle, _shade(handle, c, rng))
        body = _poly(shape, [(0.12 * w, 0.12 * h), (0.76 * w, 0.12 * h), (0.73 * w, 0.92 * h), (0.15 * w, 0.92 * h)])
        _layer(d, body, _shade(body, c, rng))
        rim = np.zeros(shape, np.uint8)
        cv2.ellipse(rim, (int(0.44 * w), int(0.12 * h)), (int(0.32 * w), int(0.04 * h)), 0, 0, 360, 255, -1, cv2.LINE_AA)
        _layer(d, rim, _shade(rim, c * 0.6, rng))
    elif kind == "watch":
        strap = _poly(shape, [(0.36 * w, 0.0), (0.64 * w, 0.0), (0.64 * w, h - 1.0), (0.36 * w, h - 1.0)])
        _layer(d, strap, _shade(strap, c, rng))
        face = np.zeros(shape, np.uint8)
        cv2.circle(face, (w // 2, h // 2), int(0.3 * min(w, h) * 1.2), 255, -1, cv2.LINE_AA)
        _layer(d, face, _shade(face, np.array([200, 200, 205], np.float32), rng))
        cv2.circle(d.rgb, (w // 2, h // 2), int(0.3 * min(w, h)), (245, 245, 240), -1, cv2.LINE_AA)
        cv2.line(d.rgb, (w // 2, h // 2), (w // 2, int(h / 2 - 0.22 * min(w, h))), (30, 30, 30), max(3, w // 60), cv2.LINE_AA)
        cv2.line(d.rgb, (w // 2, h // 2), (int(w / 2 + 0.16 * min(w, h)), h // 2), (30, 30, 30), max(3, w // 60), cv2.LINE_AA)
    else:
        raise ValueError(f"unknown product kind {kind!r}")
    rgb = cv2.resize(d.rgb, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(d.mask, size, interpolation=cv2.INTER_AREA)
    return Drawn(rgb, np.clip(mask, 0, 1))


BACKGROUNDS = ("white", "offwhite", "gradient", "texture", "alpha")
PRODUCT_ASPECT = {"sneaker": (1.0, 0.55), "boot": (0.9, 0.9), "handbag": (0.9, 0.85), "backpack": (0.7, 0.95),
                  "lamp": (0.6, 1.0), "vase": (0.55, 1.0), "bottle": (0.5, 1.0), "mug": (0.85, 0.8), "watch": (0.45, 1.0)}


def photo(kind: str, colour, background: str, rng: np.random.Generator, size=(800, 800)) -> tuple[np.ndarray, np.ndarray]:
    """A catalog photo (RGB, or RGBA for `alpha`) and its true mask (bool)."""
    W, H = size
    ax, ay = PRODUCT_ASPECT[kind]
    frac = rng.uniform(0.55, 0.75)
    s = frac * min(W / ax, H / ay)
    pw, ph = int(ax * s), int(ay * s)
    x = int((W - pw) / 2 + rng.uniform(-0.05, 0.05) * W)
    y = int((H - ph) / 2 + rng.uniform(-0.04, 0.04) * H)
    prod = draw_product(kind, (pw, ph), colour, rng)
    if background == "white":
        bg = np.full((H, W, 3), 255.0, np.float32)
    elif background == "offwhite":
        bg = np.broadcast_to(np.array([246, 243, 237], np.float32), (H, W, 3)).copy()
    elif background == "gradient":
        t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
        bg = np.broadcast_to(np.array([252, 252, 252]) * (1 - t) + np.array([222, 224, 228]) * t, (H, W, 3)).astype(np.float32).copy()
    else:  # texture (also the colour behind an alpha photo's transparent pixels)
        n = cv2.resize(rng.standard_normal((H // 4, W // 4)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
        bg = np.broadcast_to(np.array([240, 238, 233], np.float32), (H, W, 3)) * (1 + 0.012 * n[:, :, None])
    full = np.zeros((H, W), np.float32)
    full[y : y + ph, x : x + pw] = prod.mask
    if background != "alpha":  # a soft floor shadow, as in real studio shots
        sh = np.zeros((H, W), np.float32)
        cv2.ellipse(sh, (x + pw // 2, y + ph), (int(pw * 0.45), max(3, int(ph * 0.04))), 0, 0, 360, 1.0, -1)
        sh = cv2.GaussianBlur(sh, (0, 0), max(3.0, pw * 0.04))
        bg = bg * (1 - 0.25 * sh[:, :, None])
    img = bg.copy()
    img[y : y + ph, x : x + pw] = prod.rgb * prod.mask[:, :, None] + img[y : y + ph, x : x + pw] * (1 - prod.mask[:, :, None])
    img = np.clip(img + rng.normal(0, 1.2, img.shape), 0, 255).astype(np.uint8)
    if background == "alpha":
        rgba = np.dstack([img, np.clip(np.rint(full * 255), 0, 255).astype(np.uint8)])
        return rgba, full > 0.5
    return img, full > 0.5


def write_image(path: Path, image: np.ndarray) -> None:
    if image.shape[2] == 4:
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA))
    else:
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def placements_doc(rng: np.random.Generator) -> dict:
    anchors = {"center": [0.5, 0.5], "bottom": [0.5, 0.8], "left": [0.2, 0.5]}
    default = [{"size": s, "fill": 0.8, "anchor": anchors["center"]} for s in STANDARD_SIZES]
    northwind = default + [{"size": "970x250", "fill": 0.7, "anchor": anchors["left"]},
                           {"size": "1200x628", "fill": 0.7, "anchor": anchors["left"]}]
    acme = [{"size": s, "fill": 0.7, "anchor": anchors["bottom"] if s in ("300x600", "1080x1920") else anchors["center"]}
            for s in STANDARD_SIZES]
    return {"default": default, "merchants": {"northwind": northwind, "acme-outfitters": acme}}


def prompts_doc() -> dict:
    out = {}
    for cat, items in PROMPTS.items():
        out[cat] = []
        for pid, text, style, palette in items:
            entry = {"id": pid, "text": text, "negative": "text, watermark, logo, people, hands, blurry, deformed",
                     "template": {"style": style}}
            if palette:
                entry["template"]["palette"] = palette
            out[cat].append(entry)
    return {"categories": out}


def generate_sample_catalog(out_dir: Path, products_per_merchant: int = 18, merchants: int = 2, seed: int = 7,
                            bad_rows: bool = True, image_size: int = 800) -> dict:
    """Write feeds/ (with the images under feeds/images/: local image paths stay under the feeds
    directory), placements.yaml and prompts.yaml under out_dir; returns a summary."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    (out_dir / "feeds").mkdir(parents=True, exist_ok=True)
    names = list(MERCHANTS)
    while len(names) < merchants:
        names.append(f"merchant-{len(names) + 1:03d}")
    colours = list(COLOURS)
    summary = {"merchants": {}, "products": 0}
    for mi, merchant in enumerate(names[:merchants]):
        cats = MERCHANTS.get(merchant, list(CATEGORIES)[: 3 + mi % 2])
        img_dir = out_dir / "feeds" / "images" / merchant
        img_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(products_per_merchant):
            cat = cats[i % len(cats)]
            sub, kind = CATEGORIES[cat][(i // len(cats)) % len(CATEGORIES[cat])]
            colour = colours[(i * 5 + mi * 3) % len(colours)]
            background = BACKGROUNDS[(i + mi) % len(BACKGROUNDS)]
            aspect = [(1.0, 1.0), (1.25, 1.0), (1.0, 1.25)][i % 3]
            size = (int(image_size * aspect[0]), int(image_size * aspect[1]))
            img, _ = photo(kind, COLOURS[colour], background, rng, size)
            pid = f"{merchant[:2].upper()}-{i + 1:04d}"
            ext = "png" if background == "alpha" else "jpg"
            write_image(img_dir / f"{pid}.{ext}", img)
            rows.append([pid, f"{colour.title()} {SINGULAR.get(sub, sub)}", cat, sub, colour,
                         f"images/{merchant}/{pid}.{ext}"])
        if bad_rows and mi == 0:
            cat = cats[0]
            rows.append([f"{merchant[:2].upper()}-BAD-MISSING", "Missing photo", cat, "sneakers", "red", f"images/{merchant}/does-not-exist.jpg"])
            (img_dir / "not-an-image.jpg").write_text("<html>this is an error page, not a photo</html>")
            rows.append([f"{merchant[:2].upper()}-BAD-NOTIMAGE", "Broken photo", cat, "sneakers", "red", f"images/{merchant}/not-an-image.jpg"])
            full = (np.dstack([np.full((600, 600), c, np.uint8) for c in COLOURS["navy"]]) +
                    rng.integers(0, 6, (600, 600, 3), dtype=np.uint8))
            write_image(img_dir / "full-frame.jpg", full)
            rows.append([f"{merchant[:2].upper()}-BAD-FULLFRAME", "Close-up fabric", cat, "sneakers", "navy", f"images/{merchant}/full-frame.jpg"])
        with open(out_dir / "feeds" / f"{merchant}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["product_id", "title", "category", "subcategory", "colour", "image_uri"])
            writer.writerows(rows)
        summary["merchants"][merchant] = sorted(set(r[2] for r in rows))
        summary["products"] += len(rows)
    (out_dir / "placements.yaml").write_text(yaml.safe_dump(placements_doc(rng), sort_keys=False))
    (out_dir / "prompts.yaml").write_text(yaml.safe_dump(prompts_doc(), sort_keys=False))
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--products-per-merchant", type=int, default=18)
    p.add_argument("--merchants", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-bad-rows", action="store_true")
    a = p.parse_args(argv)
    s = generate_sample_catalog(a.out_dir, a.products_per_merchant, a.merchants, a.seed, not a.no_bad_rows)
    print(f"wrote {s['products']} feed rows for {len(s['merchants'])} merchants under {a.out_dir}")


if __name__ == "__main__":
    main()


GMC_TSV_COLUMNS = ("id", "title", "link", "image_link", "availability", "price", "product_type", "brand", "color")
LARGE_FEED_TYPES = ("Apparel & Accessories > Shoes > Sneakers", "Apparel & Accessories > Handbags",
                    "Home & Garden > Decor > Vases", "Health & Beauty > Personal Care", "Luggage & Bags > Backpacks")


def write_large_gmc_tsv(path: Path, rows: int, image_base: str = "https://cdn.example.com/img") -> Path:
    """A Merchant Center TSV of `rows` products (rows only: the image links point nowhere), for the
    scale test and benchmarks/catalog.py. Written in blocks: memory does not grow with `rows`."""
    colours = list(COLOURS)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(GMC_TSV_COLUMNS) + "\n")
        for start in range(0, rows, 10_000):
            f.write("".join(
                f"SKU-{i:07d}\t{colours[i % len(colours)].title()} item {i}\thttps://shop.example.com/p/{i}\t"
                f"{image_base}/{i % 97}/{i}.jpg\t{'out_of_stock' if i % 50 == 0 else 'in_stock'}\t{10 + i % 90}.99 EUR\t"
                f"{LARGE_FEED_TYPES[i % len(LARGE_FEED_TYPES)]}\tBrand {i % 13}\t{colours[i % len(colours)]}\n"
                for i in range(start, min(rows, start + 10_000))))
    return path


def write_large_gmc_xml(path: Path, items: int, image_base: str = "https://cdn.example.com/img") -> Path:
    """The same products as write_large_gmc_tsv, as a Merchant Center RSS 2.0 feed."""
    from xml.sax.saxutils import escape

    colours = list(COLOURS)
    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">'
                "<channel><title>Large feed</title>\n")
        for start in range(0, items, 10_000):
            f.write("".join(
                f"<item><g:id>SKU-{i:07d}</g:id><title>{colours[i % len(colours)].title()} item {i}</title>"
                f"<link>https://shop.example.com/p/{i}</link><g:image_link>{image_base}/{i % 97}/{i}.jpg</g:image_link>"
                f"<g:availability>in_stock</g:availability><g:price>{10 + i % 90}.99 EUR</g:price>"
                f"<g:product_type>{escape(LARGE_FEED_TYPES[i % len(LARGE_FEED_TYPES)])}</g:product_type>"
                f"<g:color>{colours[i % len(colours)]}</g:color></item>\n"
                for i in range(start, min(items, start + 10_000))))
        f.write("</channel></rss>\n")
    return path
