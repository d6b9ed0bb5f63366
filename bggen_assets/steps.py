"""The work of each asset as plain functions over resources, so it can run (and be benchmarked)
with or without Dagster. Assets in `assets/` are thin wrappers that add metadata and checks.

Each step streams images one product at a time and returns a small typed manifest
(`core/manifests.py`); the serving index is published through `core/serving_index.py`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pandas as pd

from .core import keys, serving_index
from .core.compositing import cut_back, fidelity_error, make_cutout, place_on_canvas, product_layer, resample_product
from .core.diffusion import generation_shape
from .core.diffusion_config import DiffusionConfig
from .core.feed_split import is_local_uri
from .core.feeds import FEED_COLUMNS, FeedRow, Prompt
from .core.generation import GenerationJob, derive_seed
from .core.covers import canvas_points, grid_bounds, plan_cover, plan_product_cover
from .core.geometry import CanvasSpec, CoverCanvas, GeometryError, canvas_from_id, canvas_layout, plan_buckets
from .core.image_io import ImageDecodeError, decode_png, encode_png, image_sha256
from .core.manifests import (
    CanvasBounds,
    CatalogManifest,
    CatalogProduct,
    FidelityFailure,
    FidelityReport,
    GateFailure,
    GateStats,
    GenerationManifest,
    IndexDocument,
    IndexEntry,
    IndexProduct,
    IndexPublication,
    MaskInfo,
    MaskManifest,
    PlanItem,
    PlanManifest,
    Rejection,
)
from .core.masking import MaskRejected

if TYPE_CHECKING:  # resources import bggen_assets.core; only the annotations need them here
    from resources.creative_config import CreativeConfig
    from resources.generator import GeneratorResource
    from resources.masker import MaskerResource
    from resources.metadata_db import MetadataDB
    from resources.miss_queue import MissQueue

    from .core.store import ObjectStore
    from .gating import Gate

Log = Callable[[str], None]
MAX_SOURCE_BYTES = 50 * 1024 * 1024
COMPOSITE_VERSION = "composite-v2"  # v2: the product's edge is a soft matte (core/matting.py)
PROGRESS_EVERY_S = 10.0


def _quiet(_: str) -> None:
    pass


# -- catalog -------------------------------------------------------------------------------------
FETCH_RECORDS = "fetches"


def resolve_image_uri(uri: str, feeds_dir: Path) -> Path:
    """A feed's local image path or file:// URI -> a file under the feeds directory itself; a path
    outside it is refused with a reason (with BGGEN_FEEDS_DIR=/feeds, /etc/passwd is not an image)."""
    parsed = urlparse(uri)
    raw = unquote(parsed.path) if parsed.scheme.lower() == "file" else uri
    root = feeds_dir.resolve()
    path = Path(raw).resolve() if Path(raw).is_absolute() else (root / raw).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"image path {uri!r} is outside the feeds directory {root}")
    return path


def _fetch_record_key(url: str) -> str:
    d = hashlib.sha256(url.encode()).hexdigest()
    return f"{FETCH_RECORDS}/{d[:2]}/{d}.json"


def _read_local(row: FeedRow, feeds_dir: Path) -> bytes:
    path = resolve_image_uri(row.image_uri, feeds_dir)
    if not path.is_file():
        raise ValueError(f"image file not found: {row.image_uri}")
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise ValueError(f"image file is larger than {MAX_SOURCE_BYTES // 2**20} MiB: {row.image_uri}")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"image file is empty: {row.image_uri}")
    return data


@dataclass
class _ImageResults:
    hashes: dict[str, str] = field(default_factory=dict)  # image URI -> content hash
    failures: dict[str, str] = field(default_factory=dict)  # image URI -> reason
    fetched: int = 0
    reused: int = 0


def _store_source(store: ObjectStore, data: bytes) -> str:
    digest = image_sha256(data)
    key = keys.source_key(digest)
    if not store.exists(key):
        store.put_bytes(key, data)
    return digest


def _remote_images(urls: list[str], cfg: CreativeConfig, store: ObjectStore, out: _ImageResults, log: Log) -> None:
    """Fetch each URL once (conditional GET against the last download's validators), storing the
    bytes content-addressed and the validators under fetches/ for the next run."""
    from resources.image_fetcher import ImageFetcher, Validators

    def requests():
        for url in urls:
            validators = None
            record_key = _fetch_record_key(url)
            if store.exists(record_key):
                rec = json.loads(store.get_bytes(record_key))
                if store.exists(keys.source_key(rec["image_hash"])):  # only when the bytes are still there
                    validators = Validators(rec.get("etag", ""), rec.get("last_modified", ""))
            yield url, validators

    done, last_log, started = 0, time.perf_counter(), time.perf_counter()
    with ImageFetcher(cfg.fetch) as fetcher:
        for outcome in fetcher.fetch_all(requests()):
            done += 1
            url = outcome.url
            if outcome.status == "failed":
                out.failures[url] = outcome.reason
            elif outcome.status == "not_modified":
                out.hashes[url] = json.loads(store.get_bytes(_fetch_record_key(url)))["image_hash"]
                out.reused += 1
            else:
                digest = _store_source(store, outcome.data)
                out.hashes[url] = digest
                out.fetched += 1
                if outcome.etag or outcome.last_modified:
                    record = {"url": url, "etag": outcome.etag, "last_modified": outcome.last_modified,
                              "image_hash": digest}
                    store.put_bytes(_fetch_record_key(url), json.dumps(record).encode(), "application/json")
            now = time.perf_counter()
            if now - last_log >= PROGRESS_EVERY_S:
                last_log = now
                log(f"images: {done}/{len(urls)} ({done / (now - started):.1f}/s)")


def catalog_step(cfg: CreativeConfig, store: ObjectStore, db: MetadataDB, merchant: str, category: str,
                 log: Log = _quiet) -> CatalogManifest:
    keys.check_name("merchant", merchant)
    keys.check_name("category", category)
    split = cfg.feed_split(merchant)  # the feed version is parsed once for all its partitions
    summary = split.categories.get(category)
    rejected = [Rejection(product_id=r.product_id, line=r.line, reason=r.reason, file=r.file)
                for r in (split.rejections(category) if summary and summary.rejected else [])]
    rows = list(split.rows(category))
    feeds_dir = Path(cfg.feeds_dir)
    images = _ImageResults()
    remote = sorted({r.image_uri for r in rows if not is_local_uri(r.image_uri)})
    for row in rows:
        if is_local_uri(row.image_uri) and row.image_uri not in images.hashes:
            try:
                images.hashes[row.image_uri] = _store_source(store, _read_local(row, feeds_dir))
                images.fetched += 1
            except (ValueError, OSError) as exc:
                images.failures[row.image_uri] = str(exc)
    if remote:
        _remote_images(remote, cfg, store, images, log)
    products, db_rows = [], []
    for row in rows:
        record = row.as_dict()
        digest = images.hashes.get(row.image_uri)
        if digest is None:
            reason = images.failures.get(row.image_uri, "image not fetched")
            rejected.append(Rejection(product_id=row.product_id, line=row.line, reason=reason, file=split.feed))
            db_rows.append({**record, "merchant": merchant, "image_hash": None, "status": "rejected", "reason": reason[:500]})
            continue
        products.append(CatalogProduct(**record, image_hash=digest))
        db_rows.append({**record, "merchant": merchant, "image_hash": digest, "status": "ok", "reason": ""})
    frame = pd.DataFrame([p.model_dump() for p in products], columns=[*FEED_COLUMNS, "image_hash"])
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    snapshot = buf.getvalue()
    snapshot_key = f"{keys.partition_prefix('catalog', merchant, category)}/{hashlib.sha256(snapshot).hexdigest()[:24]}.parquet"
    store.put_bytes(snapshot_key, snapshot)
    for start in range(0, len(db_rows), 1000):
        db.upsert_products(db_rows[start : start + 1000])
    for r in rejected[:200]:
        log(f"rejected {r.product_id or '(no id)'} ({r.file or 'feed'}:{r.line}): {r.reason}")
    if len(rejected) > 200:
        log(f"... and {len(rejected) - 200} more rejected rows")
    return CatalogManifest(merchant=merchant, category=category, snapshot_key=snapshot_key, products=products,
                           rejected=rejected, feed_format=split.format,
                           out_of_stock=summary.out_of_stock if summary else 0,
                           images_fetched=images.fetched, images_reused=images.reused,
                           images_failed=len(images.failures))


# -- masks ---------------------------------------------------------------------------------------
SHEET_MAX_ROWS = 24  # held-back masks drawn on the contact sheet (the lowest confidences first)


def masks_step(catalog: CatalogManifest, masker: MaskerResource, store: ObjectStore, db: MetadataDB,
               log: Log = _quiet) -> MaskManifest:
    """Every product's mask, made once per (image hash, masker id): a mask stored under another
    masker id (an older masker version) is not this masker's and is made again. A mask whose
    confidence is below the masker's ``min_confidence`` is held back (``MaskManifest.held_back``,
    drawn on a contact sheet in the store) instead of being planned, generated and served."""
    masker_id = masker.identity()
    threshold = masker.min_confidence
    out: dict[str, MaskInfo] = {}
    held: dict[str, MaskInfo] = {}
    rejected, reused, computed = list(catalog.rejected), 0, 0
    for p in catalog.products:
        pid, digest = p.product_id, p.image_hash
        row = db.get_mask(digest, masker_id)
        if row is None or (row["status"] == "ok" and not store.exists(row["mask_key"])):
            row = _compute_mask(digest, masker, masker_id, store, db)
            computed += 1
        else:
            reused += 1
        if row["status"] != "ok":
            rejected.append(Rejection(product_id=pid, reason=row["reason"]))
            log(f"skipped {pid}: {row['reason']}")
            continue
        info = MaskInfo(
            image_hash=digest,
            mask_key=row["mask_key"],
            cutout_key=row["cutout_key"],
            bbox=[int(v) for v in row["bbox"].split(",")],
            image_size=[int(v) for v in row["image_size"].split(",")],
            method=row["method"],
            score=row["score"],
            reason=row["reason"],
            coverage=row["coverage"],
        )
        if info.confidence < threshold:
            held[pid] = info
            log(f"held back {pid}: mask confidence {info.confidence:.2f} < {threshold:g} ({info.method})")
        else:
            out[pid] = info
    sheet = held_back_sheet(held, catalog.merchant, catalog.category, masker_id, threshold, masker, store) if held else None
    return MaskManifest(masker_id=masker_id, products=out, rejected=rejected, reused=reused, computed=computed,
                        min_confidence=threshold, held_back=held, held_back_sheet=sheet)


def held_back_sheet(held: dict[str, MaskInfo], merchant: str, category: str, masker_id: str, threshold: float,
                    masker: MaskerResource, store: ObjectStore) -> str:
    """The contact sheet of the held-back masks over their photos (lowest confidence first, at
    most SHEET_MAX_ROWS), stored once under a key named by what is on it; returns the key."""
    from .core.mask_sheet import SheetItem, mask_sheet

    shown = sorted(held.items(), key=lambda kv: (kv[1].confidence, kv[0]))[:SHEET_MAX_ROWS]
    name = keys.digest(masker_id, threshold, [(pid, m.image_hash, m.mask_key) for pid, m in shown], len(held))
    key = f"{keys.partition_prefix('checks', merchant, category)}/held-back-{name[:24]}.png"
    if store.exists(key):
        return key
    items = []
    for pid, m in shown:
        image = masker.decode(store.get_bytes(keys.source_key(m.image_hash)))
        mask = decode_png(store.get_bytes(m.mask_key), cv2.IMREAD_GRAYSCALE) > 127
        items.append(SheetItem(f"{pid}\nconfidence {m.confidence:.2f}\n{m.method}", image, mask))
    more = f" (the {len(shown)} lowest of {len(held)})" if len(held) > len(shown) else ""
    title = f"{merchant}/{category}: masks held back, confidence < {threshold:g}{more}"
    store.put_bytes(key, encode_png(mask_sheet(items, title=title)), "image/png")
    return key


def object_location(store: ObjectStore, key: str) -> str:
    """Where a person finds the object: a file path (local store) or an s3:// URL."""
    where = store.describe()
    if where.startswith("local:"):
        return str(Path(where[len("local:"):]) / key)
    return f"{where.rstrip('/')}/{key}"


def _compute_mask(digest: str, masker: MaskerResource, masker_id: str, store: ObjectStore, db: MetadataDB) -> dict:
    """Mask one image (once per content hash and masker) and store mask + RGBA cutout."""
    base = {"image_hash": digest, "masker_id": masker_id}
    try:
        image = masker.decode(store.get_bytes(keys.source_key(digest)))
        result = masker.mask(image)
    except (ImageDecodeError, MaskRejected) as exc:
        row = {**base, "status": "rejected", "reason": str(exc)[:500], "method": "", "score": 0.0}
        db.put_mask(row)
        return row
    layer = product_layer(result.mask, image)  # the cutout (serving's fallback) has the soft edge too
    mkey, ckey = keys.mask_key(digest, masker_id), keys.cutout_key(digest, masker_id)
    store.put_bytes(mkey, encode_png(result.mask.astype(np.uint8) * 255), "image/png")
    store.put_bytes(ckey, encode_png(make_cutout(layer.rgb, layer.alpha, result.bbox)), "image/png")
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
def previous_canvases(previous: Optional[IndexDocument]) -> dict[str, list[CoverCanvas]]:
    """product id -> the cover canvases a published index holds for it (in key order): what a
    cover plan keeps where they still cover, so that replanning a partition is stable."""
    out: dict[str, list[CoverCanvas]] = {}
    if previous is None:
        return out
    for key in previous.entries:
        pid, canvas_id, _ = key.split("|")
        if canvas_id.startswith("c-"):
            canvas = CoverCanvas.from_id(canvas_id)
            if canvas not in out.setdefault(pid, []):
                out[pid].append(canvas)
    return out


log = logging.getLogger(__name__)


class MissQueueUnavailable(RuntimeError):
    """The miss queue's service (Redis, the DB) did not answer; the message names it and its address."""


def _queue_down_errors() -> tuple[type[BaseException], ...]:
    """What a miss queue raises when its service is down (not: a bug, a bad miss)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, MissQueueUnavailable]
    try:
        import redis

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # no Redis client installed: no Redis queue either
        pass
    return tuple(errors)


def describe_queue(miss_queue: MissQueue) -> str:
    """The queue's service and address, for the messages that say it is down."""
    url = getattr(miss_queue, "redis_url", None)
    if url:
        return f"Redis at {url}"
    db = getattr(miss_queue, "metadata_db", None)
    return f"the metadata DB at {getattr(db, 'url', '?')}" if db is not None else type(miss_queue).__name__


def _claim_or_degrade(miss_queue: MissQueue, consumer: str, merchant: str, category: str,
                      warn: Callable[[str], None]) -> list:
    """The partition's claimed misses; none, with a warning, when the queue's service is down: the
    plan is made without them and they wait for the next run (nothing was claimed, nothing lost)."""
    try:
        return list(miss_queue.claim(consumer, limit=10_000, merchant=merchant, category=category))
    except _queue_down_errors() as exc:
        warn(f"miss queue unavailable ({describe_queue(miss_queue)}: {type(exc).__name__}: {exc}); planning "
             f"{merchant}/{category} without its misses, the next run picks them up")
        return []


def plans_step(catalog: CatalogManifest, masks: MaskManifest, cfg: CreativeConfig, miss_queue: MissQueue,
               merchant: str, category: str, consumer: str = "plans",
               previous: Optional[IndexDocument] = None, warn: Callable[[str], None] = log.warning) -> PlanManifest:
    """The canvases of a partition: per product, its placements' grid buckets (`grid`) or a cover
    of them (`cover`, keeping the canvases of `previous`, the live index, that still cover), in
    every theme; then the claimed misses, each on its requested canvas (grid) or on a canvas that
    covers it (cover; none new where a planned one already does). With the miss queue down the
    plan has no misses and `warn` says so (see _claim_or_degrade)."""
    placements = cfg.placements(merchant)
    prompt_set = cfg.prompt_set(category, merchant)
    prompts = prompt_set.prompts
    mode = cfg.bucketing_mode()
    r, budget = cfg.bucket_ratio, cfg.canvas_pixels
    bboxes = {pid: (m.bbox[2], m.bbox[3]) for pid, m in masks.products.items()}
    # once per partition: the grid's worst case on its products, the bar a cover (and containment
    # at serving) must not fall below
    bounds = grid_bounds(list(dict.fromkeys(bboxes.values())), placements, r)
    items: dict[str, PlanItem] = {}

    def add(pid: str, canvas: CanvasSpec, prompt_id: str, source: str) -> None:
        lay = canvas_layout(canvas, *bboxes[pid], budget)
        item = PlanItem(product_id=pid, bucket_id=canvas.id, prompt_id=prompt_id, canvas=(lay.width, lay.height),
                        product_box=lay.product_box, source=source)
        items.setdefault(item.key, item)

    planned: dict[str, list[CoverCanvas]] = {}
    kept = previous_canvases(previous) if mode == "cover" else {}
    for pid, (bw, bh) in bboxes.items():
        if mode == "cover":
            canvases, _ = plan_product_cover(bw, bh, placements, r, bounds=bounds, existing=kept.get(pid, ()))
            planned[pid] = canvases
        else:
            canvases = list(plan_buckets(bw, bh, placements, r))
        for canvas in canvases:
            for prompt in prompts:
                add(pid, canvas, prompt.id, "placement")
    prompt_ids = {p.id for p in prompts}
    miss_keys, unusable = [], []
    queued: dict[tuple[str, str], list[CoverCanvas]] = {}
    # claimed, not just read: two runs of one partition at once never plan the same misses (a
    # claim that index_step does not mark done comes back after the queue's lease)
    claimed = _claim_or_degrade(miss_queue, consumer, merchant, category, warn)
    for miss in claimed:
        if miss.product_id in masks.products and miss.prompt_id in prompt_ids:
            try:
                canvas = canvas_from_id(miss.bucket_id)
            except GeometryError:  # not a canvas id: nothing to plan for it, ever
                unusable.append(miss.request_key)
                continue
            if mode == "cover" and isinstance(canvas, CoverCanvas):
                queued.setdefault((miss.product_id, miss.prompt_id), []).append(canvas)
            else:  # a grid bucket (or any canvas in grid mode): generated as requested
                add(miss.product_id, canvas, miss.prompt_id, "miss")
            miss_keys.append(miss.request_key)
        else:  # a product masking rejected, or a theme no longer configured: may become valid later
            unusable.append(miss.request_key)
    for (pid, prompt_id), canvases in queued.items():
        # a miss is one theme's: new canvases only where the product's canvases leave it uncovered
        have = planned.get(pid, []) + kept.get(pid, [])
        points = canvas_points(canvases, bboxes[pid][0] / bboxes[pid][1])
        for canvas in plan_cover(points, bounds, existing=have):
            add(pid, canvas, prompt_id, "miss")
    if unusable:
        miss_queue.release(unusable)
    return PlanManifest(
        merchant=merchant,
        category=category,
        bucket_ratio=r,
        canvas_pixels=budget,
        bucketing=mode,
        bounds=CanvasBounds.of(bounds),
        prompts=prompts,
        placements=[p.id for p in placements],
        items=[items[k] for k in sorted(items)],
        requests=len(masks.products) * len(placements) * len(prompts),
        miss_keys=miss_keys,
        planned_at=time.time(),
        prompt_set=prompt_set.name,
    )


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


def load_product_pixels(mask_info: MaskInfo, masker: MaskerResource, store: ObjectStore) -> ProductPixels:
    image = masker.decode(store.get_bytes(keys.source_key(mask_info.image_hash)))
    mask = decode_png(store.get_bytes(mask_info.mask_key), cv2.IMREAD_GRAYSCALE) > 127
    layer = product_layer(mask, image)
    return ProductPixels(layer.rgb, layer.alpha, tuple(mask_info.bbox))


def canvas_digest(item: PlanItem, mask_info: MaskInfo, masker_id: str, prompt: Prompt, generator_id: str) -> str:
    # lists, not tuples, as the plan's JSON had them: keys.digest hashes a JSON encoding, and the
    # stored canvases keep their keys
    return keys.digest(COMPOSITE_VERSION, mask_info.image_hash, masker_id, item.bucket_id, list(item.canvas),
                       list(item.product_box), prompt.text, prompt.negative, prompt.style, list(prompt.palette),
                       generator_id)


def _seed(masks: MaskManifest, item: PlanItem) -> int:
    return derive_seed(masks.products[item.product_id].image_hash, item.bucket_id, item.prompt_id)


def _generated_row(plans: PlanManifest, item: PlanItem, image_key: str, generator_id: str, seed: int,
                   attempts: int, metrics: dict) -> dict:
    """A generated_images row (the DB's shape)."""
    return {"image_key": image_key, "merchant": plans.merchant, "category": plans.category,
            "product_id": item.product_id, "bucket_id": item.bucket_id, "prompt_id": item.prompt_id,
            "generator_id": generator_id[:255], "seed": seed, "attempts": attempts, "metrics": metrics}


def generate_step(plans: PlanManifest, masks: MaskManifest, masker: MaskerResource, generator_res: GeneratorResource,
                  store: ObjectStore, db: MetadataDB, log: Log = _quiet, gate: Optional[Gate] = None) -> GenerationManifest:
    """Make every planned canvas that is not in the store yet; content addressing skips the rest.

    `gate(generator, jobs, raw) -> [(image, attempts, metrics, seed)]` checks raw generations
    (quality gates for diffusion; None for the template generator, which never grows a product)."""
    generator = generator_res.get()
    generator_id = generator.identity()
    images, todo = {}, []
    for item in plans.items:
        d = canvas_digest(item, masks.products[item.product_id], masks.masker_id, plans.prompt(item.prompt_id),
                          generator_id)
        key = keys.canvas_key(d)
        images[item.key] = key
        if not store.exists(key):
            todo.append((item, key))
    log(f"{len(plans.items)} planned canvases: {len(plans.items) - len(todo)} already in the store, {len(todo)} to generate")
    _record_orphans(plans, masks, images, {key for _, key in todo}, generator_id, db, log)
    batch_size = max(1, generator_res.batch_size)
    batches = shape_batches(todo, getattr(generator, "generation_shape", default_generation_shape), batch_size)
    done, records, started = 0, [], time.perf_counter()
    gated, retried, failed = 0, 0, []
    last_log = started
    pixels: OrderedDict[str, ProductPixels] = OrderedDict()  # a few products, least recently used out
    for batch in batches:
        jobs, contexts = [], []
        for item, key in batch:
            pid = item.product_id
            if pid not in pixels:
                pixels[pid] = load_product_pixels(masks.products[pid], masker, store)
                if len(pixels) > PIXEL_CACHE_PRODUCTS:
                    pixels.popitem(last=False)
            pixels.move_to_end(pid)
            lay = item.layout
            rgb, alpha = pixels[pid].at((lay.product_w, lay.product_h))
            canvas, canvas_alpha = place_on_canvas(rgb, alpha, lay)
            prompt = plans.prompt(item.prompt_id)
            jobs.append(GenerationJob(canvas, canvas_alpha >= 0.5, prompt.text, prompt.negative, _seed(masks, item),
                                      prompt.id, prompt.style, prompt.palette))
            contexts.append((item, key, rgb, alpha, lay))
        raw = generator.generate(jobs)
        results = gate(generator, jobs, raw) if gate is not None else [(img, 1, {}, j.seed) for j, img in zip(jobs, raw)]
        for (generated, attempts, metrics, seed), (item, key, rgb, alpha, lay) in zip(results, contexts):
            if metrics:
                gated += 1
                retried += attempts > 1
                if not metrics["passed"]:
                    failed.append(GateFailure(item=item.key, reasons=metrics["reasons"]))
            composited = cut_back(generated, rgb, alpha, lay)
            store.put_bytes(key, encode_png(composited), "image/png")
            records.append(_generated_row(plans, item, key, generator_id, seed, attempts, metrics))
        done += len(batch)
        now = time.perf_counter()
        if now - last_log >= PROGRESS_EVERY_S or done == len(todo):  # progress, not one event per batch
            last_log = now
            log(f"generated {done}/{len(todo)} canvases ({done / max(1e-9, now - started):.2f}/s)")
        if len(records) >= 64:
            db.record_generated(records)
            records = []
    db.record_generated(records)
    fill = sum(len(b) for b in batches) / (batch_size * len(batches)) if batches else 0.0
    return GenerationManifest(generator_id=generator_id, images=images, generated=len(todo),
                              reused=len(images) - len(todo),
                              gates=GateStats(gated=gated, retried=retried, failed=failed),
                              batches=len(batches), batch_fill=fill)


PIXEL_CACHE_PRODUCTS = 16  # products whose decoded pixels generate_step keeps (batches mix products)


def default_generation_shape(canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """For a generator that names no shapes (the template renders any size): the diffusion
    defaults' shapes, so that batches are grouped the same way."""
    return generation_shape(canvas_w, canvas_h, DiffusionConfig.pixel_budget, DiffusionConfig.max_aspect,
                            DiffusionConfig.shape_multiple)


def shape_batches(todo: list, shape_of: Callable[[int, int], tuple[int, int]], batch_size: int) -> list[list]:
    """The partition's (item, key) jobs grouped by generation shape, then cut into batches of
    batch_size: every batch is full but at most the last one of each shape. Within a shape, by
    product and canvas (neighbouring jobs share a product's decoded pixels)."""
    by_shape: dict[tuple[int, int], list] = {}
    for job in todo:
        by_shape.setdefault(shape_of(*job[0].canvas), []).append(job)
    out = []
    for shape in sorted(by_shape):
        jobs = sorted(by_shape[shape], key=lambda t: (t[0].product_id, t[0].canvas, t[0].key))
        out += [jobs[k:k + batch_size] for k in range(0, len(jobs), batch_size)]
    return out


def _record_orphans(plans: PlanManifest, masks: MaskManifest, images: dict[str, str], todo_keys: set[str],
                    generator_id: str, db: MetadataDB, log: Log) -> None:
    """Canvases in the store without their generated_images row: an earlier attempt stored them and
    died (DB down, process killed) before recording. Record them now, so no row is lost on a rerun."""
    stored = {k: key for k, key in images.items() if key not in todo_keys}
    if not stored:
        return
    have = db.generated_keys(sorted(set(stored.values())))
    by_key = {i.key: i for i in plans.items}
    rows = []
    for k, key in stored.items():
        if key in have:
            continue
        item = by_key[k]
        rows.append(_generated_row(plans, item, key, generator_id, _seed(masks, item), 1, {"recovered": True}))
        have.add(key)
    if rows:
        log(f"recorded {len(rows)} canvases that an earlier attempt stored without recording them")
        db.record_generated(rows)


def fidelity_step(plans: PlanManifest, generated: GenerationManifest, masks: MaskManifest, masker: MaskerResource,
                  store: ObjectStore, sample: int = 48, erode_px: int = 1) -> FidelityReport:
    """Product fidelity on up to `sample` canvases (spread over products): inside the eroded mask the
    stored canvas must equal the resampled source product."""
    items = plans.items
    if len(items) > sample:
        step = len(items) / sample
        items = [items[int(i * step)] for i in range(sample)]
    worst, failures, checked = 0, [], 0
    pixels: Optional[tuple[str, ProductPixels]] = None
    for item in sorted(items, key=lambda it: it.product_id):
        pid = item.product_id
        if pixels is None or pixels[0] != pid:
            pixels = (pid, load_product_pixels(masks.products[pid], masker, store))
        lay = item.layout
        rgb, alpha = pixels[1].at((lay.product_w, lay.product_h))
        canvas = decode_png(store.get_bytes(generated.images[item.key]), cv2.IMREAD_COLOR)
        err = fidelity_error(canvas, rgb, alpha, lay, erode_px)
        worst = max(worst, err)
        checked += 1
        if err:
            failures.append(FidelityFailure(product_id=pid, bucket_id=item.bucket_id, prompt_id=item.prompt_id,
                                            max_diff=err))
    return FidelityReport(checked=checked, max_abs_diff=worst, failures=failures[:20])


# -- serving index -------------------------------------------------------------------------------
def index_document(plans: PlanManifest, generated: GenerationManifest, masks: MaskManifest,
                   catalog: CatalogManifest) -> IndexDocument:
    """The partition's index: every planned canvas that was generated, and every masked product."""
    rows = {p.product_id: p for p in catalog.products}
    entries = {item.key: IndexEntry(image_key=generated.images[item.key], canvas=item.canvas,
                                    product_box=item.product_box)
               for item in plans.items if item.key in generated.images}
    products = {}
    for pid, m in masks.products.items():
        row = rows.get(pid)
        products[pid] = IndexProduct(bbox=m.bbox, cutout_key=m.cutout_key, image_hash=m.image_hash,
                                     title=row.title if row else "", subcategory=row.subcategory if row else "",
                                     colour=row.colour if row else "")
    return IndexDocument(merchant=plans.merchant, category=plans.category, bucket_ratio=plans.bucket_ratio,
                         canvas_pixels=plans.canvas_pixels, bucketing=plans.bucketing, bounds=plans.bounds, generator_id=generated.generator_id,
                         prompts=[p.id for p in plans.prompts], products=products, entries=entries)


def index_step(plans: PlanManifest, generated: GenerationManifest, masks: MaskManifest, catalog: CatalogManifest,
               store: ObjectStore, miss_queue: MissQueue, warn: Callable[[str], None] = log.warning) -> IndexPublication:
    pointer = serving_index.publish(store, index_document(plans, generated, masks, catalog))
    # Misses this plan covered are served now, unless requested again since the plan was made.
    served = 0
    if plans.miss_keys:
        try:
            served = miss_queue.mark_done(list(plans.miss_keys), served_before=plans.planned_at)
        except _queue_down_errors() as exc:  # the index is live; the claims lapse and come back
            warn(f"miss queue unavailable ({describe_queue(miss_queue)}: {type(exc).__name__}: {exc}); "
                 f"{len(plans.miss_keys)} served misses not marked done, a later run plans them again")
    return IndexPublication(version=pointer.version, key=pointer.key, entries=pointer.entries, misses_served=served)
