"""The soft matte at cut-back (core/matting.py) against the hard cut it replaced.

1. On drawn products with an anti-aliased edge over a coloured backdrop (tests/matting_scenes.py;
   the true alpha is known), cut back onto a different colour at three scales: the mean colour
   error in the edge band against the ideal composite, and its component towards the old
   backdrop's colour (the fringe), hard cut vs soft matte, side by side.
2. The matte's cost per photo (800 x 800 sample-catalog photos, classical masks), one thread.
3. With --png PATH: a sample-catalog creative's edge before/after (hard | soft, 4x crops) for a
   person to look at.

    .venv/bin/python benchmarks/soft_edges.py [--png /tmp/soft_edges.png]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bggen_assets.core.compositing import cut_back, product_alpha, product_layer, resample_product  # noqa: E402
from bggen_assets.core.geometry import CanvasLayout  # noqa: E402
from bggen_assets.core.matting import edge_matte  # noqa: E402
from bggen_assets.core.masking import classical_mask  # noqa: E402
from matting_scenes import cut_back_onto, edge_error, ideal_composite, scene  # noqa: E402

PAIRS = [  # (product, photo backdrop, new background)
    ((205, 60, 40), (40, 90, 200), (60, 180, 80)),  # red on blue, onto green
    ((30, 30, 35), (245, 245, 245), (200, 120, 60)),  # black on white, onto orange
    ((240, 200, 40), (90, 60, 140), (240, 240, 240)),  # yellow on purple, onto light grey
    ((120, 160, 200), (230, 225, 215), (20, 40, 30)),  # light blue on off-white, onto dark green
]
SCALES = (0.5, 1.0, 1.7)


def quality() -> None:
    print("Edge band vs the ideal composite (mean |error| per channel; fringe: towards the old backdrop)")
    print("| product / backdrop -> new | scale | hard error | soft error | hard fringe | soft fringe |")
    print("|---|---|---|---|---|---|")
    for fg, bg, new in PAIRS:
        photo, true_alpha, product = scene(fg=fg, bg=bg, w=480, h=400)
        mask = true_alpha >= 0.5
        bbox = cv2.boundingRect(mask.astype(np.uint8))
        hard = (photo, product_alpha(mask, photo))
        soft = tuple(product_layer(mask, photo))
        for s in SCALES:
            ideal, band = ideal_composite(true_alpha, product, bbox, s, colour=new)
            (he, hf), (se, sf) = (edge_error(cut_back_onto(*layer, bbox, s, colour=new)[0], ideal, band, bg, new)
                                  for layer in (hard, soft))
            print(f"| {fg} / {bg} -> {new} | {s:g} | {he:.2f} | {se:.2f} | {hf:+.2f} | {sf:+.2f} |")


def speed() -> None:
    from bggen_assets.sample_catalog import COLOURS, photo

    rng = np.random.default_rng(0)
    cases = []
    for kind in ("sneaker", "handbag", "lamp", "watch"):
        img, _ = photo(kind, COLOURS["red"], "gradient", rng, size=(800, 800))
        cases.append((img, classical_mask(img).mask))
    for img, m in cases:
        edge_matte(img, m)  # warm-up
    rounds = 5
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for img, m in cases:
            edge_matte(img, m)
    wall = (time.perf_counter() - t0) / (rounds * len(cases))
    cpu = (time.process_time() - c0) / (rounds * len(cases))
    print(f"\nedge_matte on 800x800 sample photos, one thread: {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU per photo")


def picture(path: str) -> None:
    from bggen_assets.core.generation import GenerationJob
    from bggen_assets.core.template_bg import TemplateGenerator
    from bggen_assets.sample_catalog import COLOURS, photo

    img, _ = photo("handbag", COLOURS["navy"], "offwhite", np.random.default_rng(3), size=(800, 800))
    res = classical_mask(img)
    x, y, w, h = res.bbox
    tw, th = round(w * 0.9), round(h * 0.9)
    lay = CanvasLayout(tw + 160, th + 120, 80, 60, tw, th)
    layers = {"hard": (img, product_alpha(res.mask, img)), "soft": tuple(product_layer(res.mask, img))}
    rgb, alpha = resample_product(*layers["soft"], res.bbox, (tw, th))
    canvas = np.full((lay.height, lay.width, 3), 128, np.uint8)
    canvas_alpha = np.zeros(canvas.shape[:2], bool)
    canvas_alpha[60:60 + th, 80:80 + tw] = alpha >= 0.5
    generated = TemplateGenerator().generate([GenerationJob(canvas, canvas_alpha, "", "", 7, "t", "studio",
                                                            ("#2f6f4f", "#d9c9a3"))])[0]
    comps = {name: cut_back(generated, *resample_product(*layer, res.bbox, (tw, th)), lay)
             for name, layer in layers.items()}
    tiles = []
    for frac in (1 / 3, 2 / 3):  # where the handle meets the bag; the bag's slanted left side
        ys = 60 + int(frac * th)
        row = np.nonzero(canvas_alpha[ys])[0]
        cx = int(row.min()) if row.size else 80
        for name, comp in comps.items():
            crop = cv2.resize(comp[ys - 30:ys + 30, cx - 30:cx + 30], None, fx=4, fy=4,
                              interpolation=cv2.INTER_NEAREST)
            cv2.putText(crop, name, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
            tiles.append(crop)
    whole = cv2.resize(comps["soft"], None, fx=240 / lay.height, fy=240 / lay.height, interpolation=cv2.INTER_AREA)
    parts = [whole] + tiles
    sheet = np.full((240, sum(p.shape[1] for p in parts) + 10 * (len(parts) - 1), 3), 255, np.uint8)
    x0 = 0
    for part in parts:
        sheet[:, x0:x0 + part.shape[1]] = part
        x0 += part.shape[1] + 10
    cv2.imwrite(path, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"\nwrote {path}: the creative (soft); where the handle meets the bag, hard | soft; its left side, hard | soft (4x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--png", help="write a before/after crop of a creative's edge here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    quality()
    speed()
    if args.png:
        picture(args.png)


if __name__ == "__main__":
    main()
