"""The work of each asset as plain functions over resources, so it can run (and be benchmarked)
with or without Dagster. Assets in `assets/` are thin wrappers that add metadata and checks.

Each step streams images one product at a time and returns a small JSON manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pandas as pd

from .core import keys
from .core.compositing import cut_back, fidelity_error, make_cutout, place_on_canvas, product_alpha, resample_product
from .core.feeds import FEED_COLUMNS, Prompt
from .core.generation import GenerationJob, derive_seed
from .core.geometry import Bucket, CanvasLayout, canvas_layout, plan_buckets
from .core.image_io import ImageDecodeError, image_sha256
from .core.masking import MaskRejected

Log = Callable[[str], None]
MAX_SOURCE_BYTES = 50 * 1024 * 1024
COMPOSITE_VERSION = "composite-v1"
PROGRESS_EVERY_S = 10.0


def _quiet(_: str) -> None:
    pass


def item_key(product_id: str, bucket_id: str, prompt_id: str) -> str:
    return f"{product_id}|{bucket_id}|{prompt_id}"


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    if image.ndim == 3 and image.shape[2] == 4:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    elif image.ndim == 3:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    else:
        bgr = image
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ImageDecodeError("stored PNG could not be decoded")
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    if img.ndim == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


# -- catalog -------------------------------------------------------------------------------------
def resolve_image_uri(uri: str, feed_path: Path, images_root: Path) -> Path:
    """A feed's image URI -> a local file under images_root. Anything else is refused with a reason."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        raw = unquote(parsed.path if parsed.scheme == "file" else uri)
        path = (feed_path.parent / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
        root = images_root.resolve()
        if root != path and root not in path.parents:
            raise ValueError(f"image path {uri!r} is outside the allowed image root {root}")
        return path
    raise ValueError(f"unsupported image URI scheme {parsed.scheme!r} in {uri!r} (use a path or file:// URI)")


def catalog_step(cfg, store, db, merchant: str, category: str, log: Log = _quiet) -> dict:
    keys.check_name("merchant", merchant)
    keys.check_name("category", category)
    feed_path = cfg.feed_paths().get(merchant)
    if feed_path is None:
        raise ValueError(f"no feed for merchant {merchant!r} in {cfg.feeds_dir}")
    rows = [r for r in cfg.read_feed(merchant) if r.category == category]
    images_root = Path(cfg.feeds_dir).resolve().parent
    products, rejected, db_rows = [], [], []
    for row in rows:
        record = row.as_dict()
        try:
            path = resolve_image_uri(row.image_uri, feed_path, images_root)
            if not path.is_file():
                raise ValueError(f"image file not found: {row.image_uri}")
            if path.stat().st_size > MAX_SOURCE_BYTES:
                raise ValueError(f"image file is larger than {MAX_SOURCE_BYTES // 2**20} MiB: {row.image_uri}")
            data = path.read_bytes()
            if not data:
                raise ValueError(f"image file is empty: {row.image_uri}")
        except (ValueError, OSError) as exc:
            rejected.append({"product_id": row.product_id, "line": row.line, "reason": str(exc)})
            db_rows.append({**record, "merchant": merchant, "image_hash": None, "status": "rejected", "reason": str(exc)[:500]})
            continue
        digest = image_sha256(data)
        key = keys.source_key(digest)
        if not store.exists(key):
            store.put_bytes(key, data)
        products.append({**record, "image_hash": digest})
        db_rows.append({**record, "merchant": merchant, "image_hash": digest, "status": "ok", "reason": ""})
    frame = pd.DataFrame(products, columns=[*FEED_COLUMNS, "image_hash"])
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    snapshot = buf.getvalue()
    snapshot_key = f"{keys.partition_prefix('catalog', merchant, category)}/{hashlib.sha256(snapshot).hexdigest()[:24]}.parquet"
    store.put_bytes(snapshot_key, snapshot)
    db.upsert_products(db_rows)
    for r in rejected:
        log(f"rejected {r['product_id']} (feed line {r['line']}): {r['reason']}")
    return {"merchant": merchant, "category": category, "snapshot_key": snapshot_key, "products": products, "rejected": rejected}


# -- masks ---------------------------------------------------------------------------------------
def masks_step(catalog: dict, masker, store, db, log: Log = _quiet) -> dict:
    masker_id = masker.identity()
    out, rejected, reused, computed = {}, list(catalog["rejected"]), 0, 0
    for p in catalog["products"]:
        pid, digest = p["product_id"], p["image_hash"]
        row = db.get_mask(digest, masker_id)
        if row is None or (row["status"] == "ok" and not store.exists(row["mask_key"])):
            row = _compute_mask(digest, masker, masker_id, store, db)
            computed += 1
        else:
            reused += 1
        if row["status"] != "ok":
            rejected.append({"product_id": pid, "reason": row["reason"]})
            log(f"skipped {pid}: {row['reason']}")
            continue
        out[pid] = {
            "image_hash": digest,
            "mask_key": row["mask_key"],
            "cutout_key": row["cutout_key"],
            "bbox": [int(v) for v in row["bbox"].split(",")],
            "image_size": [int(v) for v in row["image_size"].split(",")],
            "method": row["method"],
            "score": row["score"],
            "reason": row["reason"],
            "coverage": row["coverage"],
        }
    return {"masker_id": masker_id, "products": out, "rejected": rejected, "reused": reused, "computed": computed}


def _compute_mask(digest: str, masker, masker_id: str, store, db) -> dict:
    """Mask one image (once per content hash and masker) and store mask + RGBA cutout."""
    base = {"image_hash": digest, "masker_id": masker_id}
    try:
        image = masker.decode(store.get_bytes(keys.source_key(digest)))
        result = masker.mask(image)
    except (ImageDecodeError, MaskRejected) as exc:
        row = {**base, "status": "rejected", "reason": str(exc)[:500], "method": "", "score": 0.0}
        db.put_mask(row)
        return row
    alpha = product_alpha(result.mask, image)
    mkey, ckey = keys.mask_key(digest, masker_id), keys.cutout_key(digest, masker_id)
    store.put_bytes(mkey, encode_png(result.mask.astype(np.uint8) * 255), "image/png")
    store.put_bytes(ckey, encode_png(make_cutout(image, alpha, result.bbox)), "image/png")
    h, w = result.mask.shape
    row = {
        **base,
        "status": "ok",
        "method": result.method,
        "score": float(result.score),
        "reason": result.reason[:500],
        "mask_key": mkey,
        "cutout_key": ckey,
        "bbox": ",".join(str(int(v)) for v in result.bbox),
        "image_size": f"{w},{h}",
        "coverage": float(result.mask.mean()),
    }
    db.put_mask(row)
    return row


# -- plans ---------------------------------------------------------------------------------------
def prompt_dict(p: Prompt) -> dict:
    return {"id": p.id, "text": p.text, "negative": p.negative, "style": p.style, "palette": list(p.palette)}


def plans_step(catalog: dict, masks: dict, cfg, miss_queue, merchant: str, category: str,
               consumer: str = "plans") -> dict:
    placements = cfg.placements(merchant)
    prompts = cfg.prompts(category)
    r, budget = cfg.bucket_ratio, cfg.canvas_pixels
    items: dict[str, dict] = {}

    def add(pid: str, bucket: Bucket, prompt_id: str, source: str) -> None:
        bx, by, bw, bh = masks["products"][pid]["bbox"]
        lay = canvas_layout(bucket, bw, bh, budget)
        k = item_key(pid, bucket.id, prompt_id)
        items.setdefault(k, {"product_id": pid, "bucket_id": bucket.id, "prompt_id": prompt_id,
                             "canvas": [lay.width, lay.height], "product_box": list(lay.product_box), "source": source})

    for pid, m in masks["products"].items():
        _, _, bw, bh = m["bbox"]
        for bucket in plan_buckets(bw, bh, placements, r):
            for prompt in prompts:
                add(pid, bucket, prompt.id, "placement")
    prompt_ids = {p.id for p in prompts}
    miss_keys, unusable = [], []
    # claimed, not just read: two runs of one partition at once never plan the same misses (a
    # claim that index_step does not mark done comes back after the queue's lease)
    for miss in miss_queue.claim(consumer, limit=10_000, merchant=merchant, category=category):
        if miss.product_id in masks["products"] and miss.prompt_id in prompt_ids:
            add(miss.product_id, Bucket.from_id(miss.bucket_id), miss.prompt_id, "miss")
            miss_keys.append(miss.request_key)
        else:  # a product masking rejected, or a theme no longer configured: may become valid later
            unusable.append(miss.request_key)
    miss_queue.release(unusable)
    requests = len(masks["products"]) * len(placements) * len(prompts)
    return {
        "merchant": merchant,
        "category": category,
        "bucket_ratio": r,
        "canvas_pixels": budget,
        "prompts": [prompt_dict(p) for p in prompts],
        "placements": [p.id for p in placements],
        "items": [items[k] for k in sorted(items)],
        "requests": requests,
        "miss_keys": miss_keys,
        "planned_at": time.time(),
    }


# -- generation ----------------------------------------------------------------------------------
@dataclass
class ProductPixels:
    """One product's source pixels and alpha, loaded once for all its canvases."""

    image: np.ndarray
    alpha: np.ndarray
    bbox: tuple
    resampled: dict = field(default_factory=dict)

    def at(self, size: tuple[int, int]):
        if size not in self.resampled:
            self.resampled[size] = resample_product(self.image, self.alpha, self.bbox, size)
        return self.resampled[size]


def load_product_pixels(mask_info: dict, masker, store) -> ProductPixels:
    image = masker.decode(store.get_bytes(keys.source_key(mask_info["image_hash"])))
    mask = decode_png(store.get_bytes(mask_info["mask_key"]), cv2.IMREAD_GRAYSCALE) > 127
    return ProductPixels(image, product_alpha(mask, image), tuple(mask_info["bbox"]))


def canvas_digest(item: dict, mask_info: dict, masker_id: str, prompt: dict, generator_id: str) -> str:
    return keys.digest(COMPOSITE_VERSION, mask_info["image_hash"], masker_id, item["bucket_id"], item["canvas"],
                       item["product_box"], prompt["text"], prompt["negative"], prompt["style"], prompt["palette"],
                       generator_id)


def item_layout(item: dict) -> CanvasLayout:
    return CanvasLayout(*item["canvas"], *item["product_box"])


def generate_step(plans: dict, masks: dict, masker, generator_res, store, db, log: Log = _quiet,
                  gate: Optional[Callable] = None) -> dict:
    """`gate(generator, jobs, raw) -> [(image, attempts, metrics, seed)]` checks raw generations
    (quality gates for diffusion; None for the template generator, which never grows a product)."""
    """Make every planned canvas that is not in the store yet; content addressing skips the rest."""
    generator = generator_res.get()
    generator_id = generator.identity()
    prompts = {p["id"]: p for p in plans["prompts"]}
    images, todo = {}, []
    for item in plans["items"]:
        m = masks["products"][item["product_id"]]
        d = canvas_digest(item, m, masks["masker_id"], prompts[item["prompt_id"]], generator_id)
        key = keys.canvas_key(d)
        images[item_key(item["product_id"], item["bucket_id"], item["prompt_id"])] = key
        if not store.exists(key):
            todo.append((item, key))
    log(f"{len(plans['items'])} planned canvases: {len(plans['items']) - len(todo)} already in the store, {len(todo)} to generate")
    _record_orphans(plans, masks, images, {key for _, key in todo}, generator_id, db, log)
    todo.sort(key=lambda t: (t[0]["product_id"], t[0]["canvas"]))
    batch_size = max(1, generator_res.batch_size)
    done, records, started = 0, [], time.perf_counter()
    gate_stats = {"gated": 0, "retried": 0, "failed": []}
    last_log = started
    current: Optional[tuple[str, ProductPixels]] = None
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        jobs, contexts = [], []
        for item, key in batch:
            pid = item["product_id"]
            if current is None or current[0] != pid:
                current = (pid, load_product_pixels(masks["products"][pid], masker, store))
            lay = item_layout(item)
            rgb, alpha = current[1].at((lay.product_w, lay.product_h))
            canvas, canvas_alpha = place_on_canvas(rgb, alpha, lay)
            prompt = prompts[item["prompt_id"]]
            seed = derive_seed(masks["products"][pid]["image_hash"], item["bucket_id"], item["prompt_id"])
            jobs.append(GenerationJob(canvas, canvas_alpha >= 0.5, prompt["text"], prompt["negative"], seed,
                                      prompt["id"], prompt["style"], tuple(prompt["palette"])))
            contexts.append((item, key, rgb, alpha, lay))
        raw = generator.generate(jobs)
        gated = gate(generator, jobs, raw) if gate is not None else [(img, 1, {}, j.seed) for j, img in zip(jobs, raw)]
        for (generated, attempts, metrics, seed), (item, key, rgb, alpha, lay) in zip(gated, contexts):
            if metrics:
                gate_stats["gated"] += 1
                gate_stats["retried"] += attempts > 1
                if not metrics["passed"]:
                    gate_stats["failed"].append({"item": item_key(item["product_id"], item["bucket_id"], item["prompt_id"]),
                                                 "reasons": metrics["reasons"]})
            composited = cut_back(generated, rgb, alpha, lay)
            store.put_bytes(key, encode_png(composited), "image/png")
            records.append({"image_key": key, "merchant": plans["merchant"], "category": plans["category"],
                            "product_id": item["product_id"], "bucket_id": item["bucket_id"],
                            "prompt_id": item["prompt_id"], "generator_id": generator_id[:255], "seed": seed,
                            "attempts": attempts, "metrics": metrics})
        done += len(batch)
        now = time.perf_counter()
        if now - last_log >= PROGRESS_EVERY_S or done == len(todo):  # progress, not one event per batch
            last_log = now
            log(f"generated {done}/{len(todo)} canvases ({done / max(1e-9, now - started):.2f}/s)")
        if len(records) >= 64:
            db.record_generated(records)
            records = []
    db.record_generated(records)
    return {"generator_id": generator_id, "images": images, "generated": len(todo), "reused": len(images) - len(todo),
            "gates": gate_stats}


def _record_orphans(plans: dict, masks: dict, images: dict, todo_keys: set, generator_id: str, db, log: Log) -> None:
    """Canvases in the store without their generated_images row: an earlier attempt stored them and
    died (DB down, process killed) before recording. Record them now, so no row is lost on a rerun."""
    stored = {k: key for k, key in images.items() if key not in todo_keys}
    if not stored:
        return
    have = db.generated_keys(sorted(set(stored.values())))
    by_key = {item_key(i["product_id"], i["bucket_id"], i["prompt_id"]): i for i in plans["items"]}
    rows = []
    for k, key in stored.items():
        if key in have:
            continue
        item = by_key[k]
        seed = derive_seed(masks["products"][item["product_id"]]["image_hash"], item["bucket_id"], item["prompt_id"])
        rows.append({"image_key": key, "merchant": plans["merchant"], "category": plans["category"],
                     "product_id": item["product_id"], "bucket_id": item["bucket_id"], "prompt_id": item["prompt_id"],
                     "generator_id": generator_id[:255], "seed": seed, "attempts": 1, "metrics": {"recovered": True}})
        have.add(key)
    if rows:
        log(f"recorded {len(rows)} canvases that an earlier attempt stored without recording them")
        db.record_generated(rows)


def fidelity_step(plans: dict, generated: dict, masks: dict, masker, store, sample: int = 48, erode_px: int = 1) -> dict:
    """Product fidelity on up to `sample` canvases (spread over products): inside the eroded mask the
    stored canvas must equal the resampled source product."""
    items = plans["items"]
    if len(items) > sample:
        step = len(items) / sample
        items = [items[int(i * step)] for i in range(sample)]
    worst, failures, checked = 0, [], 0
    pixels: Optional[tuple[str, ProductPixels]] = None
    for item in sorted(items, key=lambda it: it["product_id"]):
        pid = item["product_id"]
        if pixels is None or pixels[0] != pid:
            pixels = (pid, load_product_pixels(masks["products"][pid], masker, store))
        lay = item_layout(item)
        rgb, alpha = pixels[1].at((lay.product_w, lay.product_h))
        key = generated["images"][item_key(pid, item["bucket_id"], item["prompt_id"])]
        canvas = decode_png(store.get_bytes(key), cv2.IMREAD_COLOR)
        err = fidelity_error(canvas, rgb, alpha, lay, erode_px)
        worst = max(worst, err)
        checked += 1
        if err:
            failures.append({"product_id": pid, "bucket_id": item["bucket_id"], "prompt_id": item["prompt_id"], "max_diff": err})
    return {"checked": checked, "max_abs_diff": worst, "failures": failures[:20]}


# -- serving index -------------------------------------------------------------------------------
def index_prefix(merchant: str, category: str) -> str:
    return keys.partition_prefix("index", merchant, category)


def read_index_pointer(store, merchant: str, category: str) -> Optional[dict]:
    from resources.object_store import ObjectNotFound

    try:
        return json.loads(store.get_bytes(f"{index_prefix(merchant, category)}/current.json"))
    except ObjectNotFound:
        return None


def publish_index(store, merchant: str, category: str, document: dict) -> dict:
    """Write the new version under its own key, then flip the CURRENT pointer: readers see the old
    index or the new one, never a partial one."""
    pointer = read_index_pointer(store, merchant, category)
    version = (pointer["version"] + 1) if pointer else 1
    document = {**document, "version": version, "published_at": time.time()}
    body = json.dumps(document, sort_keys=True).encode()
    key = f"{index_prefix(merchant, category)}/v{version:06d}-{hashlib.sha256(body).hexdigest()[:12]}.json"
    store.put_bytes(key, body, "application/json")
    new_pointer = {"version": version, "key": key, "entries": len(document["entries"])}
    store.put_bytes(f"{index_prefix(merchant, category)}/current.json", json.dumps(new_pointer).encode(), "application/json")
    return new_pointer


def index_step(plans: dict, generated: dict, masks: dict, catalog: dict, store, miss_queue) -> dict:
    merchant, category = plans["merchant"], plans["category"]
    titles = {p["product_id"]: p for p in catalog["products"]}
    entries = {}
    for item in plans["items"]:
        k = item_key(item["product_id"], item["bucket_id"], item["prompt_id"])
        if k in generated["images"]:
            entries[k] = {"image_key": generated["images"][k], "canvas": item["canvas"], "product_box": item["product_box"]}
    products = {
        pid: {"bbox": m["bbox"], "cutout_key": m["cutout_key"], "image_hash": m["image_hash"],
              "title": titles.get(pid, {}).get("title", ""), "subcategory": titles.get(pid, {}).get("subcategory", ""),
              "colour": titles.get(pid, {}).get("colour", "")}
        for pid, m in masks["products"].items()
    }
    document = {
        "format": 1,
        "merchant": merchant,
        "category": category,
        "bucket_ratio": plans["bucket_ratio"],
        "canvas_pixels": plans["canvas_pixels"],
        "generator_id": generated["generator_id"],
        "prompts": [p["id"] for p in plans["prompts"]],
        "products": products,
        "entries": entries,
    }
    pointer = publish_index(store, merchant, category, document)
    # Misses this plan covered are served now, unless requested again since the plan was made.
    served = miss_queue.mark_done(plans["miss_keys"], served_before=plans["planned_at"])
    return {**pointer, "misses_served": served}


def index_completeness(plans: dict, index_pointer: dict, store) -> dict:
    """Every planned (product, bucket, prompt) in the published index, and every image in the store."""
    doc = json.loads(store.get_bytes(index_pointer["key"]))
    missing = [item_key(i["product_id"], i["bucket_id"], i["prompt_id"]) for i in plans["items"]
               if item_key(i["product_id"], i["bucket_id"], i["prompt_id"]) not in doc["entries"]]
    absent = [e["image_key"] for e in doc["entries"].values() if not store.exists(e["image_key"])]
    return {"planned": len(plans["items"]), "indexed": len(doc["entries"]), "missing": missing[:20],
            "missing_count": len(missing), "absent_images": absent[:20], "absent_count": len(absent)}
