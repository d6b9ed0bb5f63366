"""How well the classical masker's confidence (MaskResult.score) separates good masks from bad
ones, on the labelled set of tests/masking_evalset.py: what the hold-back threshold
(MaskerResource.min_confidence, docs/masking.md "Confidence and hold-back") costs and catches.

The images: the labelled set (seeds 0-3, 12 per background type), the drawn families
(tests/masking_evalset.py FAMILIES) on every background type, seeds 0-3, and the sample catalog's kinds in four colours on each
opaque background at 400 px. Prints the score's quantiles for the masks at or above the per-image IoU target (0.85) and for
those below it, then per threshold: the share of good masks held back (lost products) and of bad
ones held back (bad cut-outs kept out of the ads).

    .venv/bin/python benchmarks/mask_confidence.py             # seeds 0-3, 12 per background type
    .venv/bin/python benchmarks/mask_confidence.py --quick     # seed 0, 6 per type
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bggen_assets.core.masking import classical_mask, validate_mask  # noqa: E402
from masking_evalset import (BACKGROUNDS, CATALOG_BACKGROUNDS, EVAL_PER_BACKGROUND, EVAL_SEEDS, FAMILY_SEEDS,  # noqa: E402
                             FAMILIES, TARGET_IMAGE_IOU, catalog_photo, iou, make_evalset, render_family)

KINDS = ("sneaker", "boot", "handbag", "backpack", "lamp", "vase", "bottle", "mug", "watch")
THRESHOLDS = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    seeds, per = ((0,), 6) if args.quick else (EVAL_SEEDS, EVAL_PER_BACKGROUND)
    rows = []  # (score, iou, label)
    rejected_why = {}   # label -> why validate_mask refuses the mask (it is never served), or None

    def add(res, true_mask, label: str) -> None:
        rows.append((res.score, iou(res.mask, true_mask), label))
        rejected_why[label] = _rejection(res.mask)
    for seed in seeds:
        for item in make_evalset(per, seed=seed):
            add(classical_mask(item.image), item.mask, f"seed {seed} {item.background} #{item.index} {item.shape}")
    for fseed in (0,) if args.quick else FAMILY_SEEDS:
        for kind in FAMILIES:
            for bg in BACKGROUNDS:
                item = render_family(kind, bg, seed=fseed)
                add(classical_mask(item.image), item.mask, f"family seed {fseed} {kind} {bg}")
    from bggen_assets.sample_catalog import COLOURS

    for kind in KINDS:
        for colour in list(COLOURS)[: 2 if args.quick else 4]:
            for bg in CATALOG_BACKGROUNDS:
                img, true = catalog_photo(kind, colour, bg, 400, 0)
                add(classical_mask(img), true, f"catalog {kind} {colour} {bg} 400px")
    scores = np.array([r[0] for r in rows])
    ious = np.array([r[1] for r in rows])
    good = ious >= TARGET_IMAGE_IOU
    print(f"classical masker, {len(rows)} labelled images ({int(good.sum())} at IoU >= {TARGET_IMAGE_IOU}, "
          f"{int((~good).sum())} below)")
    q = (0.0, 0.05, 0.25, 0.5, 0.75, 1.0)
    print("| masks | n | " + " | ".join(f"score q{int(p * 100)}" for p in q) + " |")
    print("|---|---|" + "---|" * len(q))
    for name, sel in (("IoU >= 0.85", good), ("IoU < 0.85", ~good)):
        vals = " | ".join(f"{np.quantile(scores[sel], p):.3f}" for p in q) if sel.any() else " | ".join("-" * len(q))
        print(f"| {name} | {int(sel.sum())} | {vals} |")
    corr = float(np.corrcoef(scores, ious)[0, 1]) if len(rows) > 2 else float("nan")
    print(f"Pearson correlation score ~ IoU: {corr:.3f}")
    print()
    print("| min_confidence | good masks held back | bad masks held back | mean IoU of the masks kept |")
    print("|---|---|---|---|")
    for t in THRESHOLDS:
        held = scores < t
        kept = ~held
        print(f"| {t:g} | {int((held & good).sum())}/{int(good.sum())} | {int((held & ~good).sum())}/{int((~good).sum())} "
              f"| {ious[kept].mean() if kept.any() else float('nan'):.4f} |")
    print()
    print("lowest scores:")
    for s, i, label in sorted(rows)[:8]:
        print(f"  score {s:.3f}  IoU {i:.3f}  {label}")
    rejected = [r for r in rows if r[1] < TARGET_IMAGE_IOU and rejected_why[r[2]]]
    print(f"masks below the IoU target ({len(rejected)} of them rejected by validate_mask: never served, "
          f"whatever the threshold; the tables above count them all):")
    for s, i, label in sorted(rows, key=lambda r: r[1]):
        if i < TARGET_IMAGE_IOU:
            why = f"  [rejected: {rejected_why[label]}]" if rejected_why[label] else ""
            print(f"  IoU {i:.3f}  score {s:.3f}  {label}{why}")


def _rejection(mask: np.ndarray) -> str | None:
    """Why validate_mask refuses ``mask`` (the masker resource raises it: the product is not
    served), or None.  validate_mask's defaults are the resource's defaults (allow_border_touch
    off: a mask may touch at most two borders)."""
    try:
        validate_mask(mask)
    except ValueError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    main()
