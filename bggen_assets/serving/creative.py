"""Serving: (merchant, product, W x H, prompt) -> image bytes cut from the bucket canvas.

A hit crops and resizes the bucket canvas (decoded canvases and their 2x/4x reductions are kept in
a memory-bounded LRU). A miss records the miss for generation and answers at once with the
fallback: the positioned product on a plain background. The published index of each partition is
re-read when its pointer changes, so a new version is picked up without a restart.

When the store is down (:class:`~bggen_assets.core.store.StoreUnavailable`) serving degrades and
never fails: the indexes and canvases it holds keep serving (hits stay hits), a canvas it does not
hold is answered with the fallback, and a fallback whose cutout cannot be read with a plain
placeholder. The request path then stops calling the store at all; :class:`StoreHealth` retries it
in the background with exponential backoff and, once it answers, the indexes are checked again.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from resources.metadata_db import Miss, TransientDBError, is_transient

from ..core import serving_index
from ..core.compositing import (FALLBACK_BACKGROUND, PYRAMID_LEVELS, CanvasPyramid, canvas_pyramid, crop_placement,
                                 fallback_creative)
from ..core.geometry import Placement, place_product
from ..core.image_io import composite_xmp, decode_png, serving_xmp
from ..core.keys import check_name
from ..core.manifests import IndexDocument
from ..core.store import ObjectNotFound, ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)
FORMATS = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
JPEG_QUALITY = 85
#: encoded hits kept by default: ~400 1080x1080 JPEGs at q85, or thousands of banner sizes
CREATIVE_CACHE_BYTES = 64 * 2**20


def keep_pillow_blocks(blocks: int = 8) -> None:
    """Let Pillow keep freed image memory blocks for reuse (process-wide; Pillow's default is 0).

    Without it every crop allocates fresh pages for its output and page-faults them in: about 3 ms
    of a 1080x1080 hit on the dev machine. Each kept block is at most 16 MB (Pillow's block size),
    so the pool holds at most blocks x 16 MB. Same as PILLOW_BLOCKS_MAX=8 in the environment."""
    Image.core.set_blocks_max(max(blocks, Image.core.get_blocks_max()))


def _pyramid_key(image_key: str) -> str:
    return f"pyramid:{image_key}"


class NotFound(LookupError):
    """Unknown merchant, product or prompt (an API answers 404)."""


@dataclass
class Creative:
    body: bytes
    content_type: str
    hit: bool
    merchant: str
    category: str
    product_id: str
    bucket_id: str
    prompt_id: str
    width: int
    height: int
    image_key: Optional[str] = None


class LRUBytes:
    """An LRU of decoded images (or encoded bodies) bounded by their total size in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[str, object] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return value

    def drop(self, predicate) -> int:
        """Remove every entry whose key satisfies `predicate`; returns how many."""
        with self._lock:
            gone = [k for k in self._items if predicate(k)]
            for k in gone:
                del self._items[k]
                self.size -= self._sizes.pop(k)
            return len(gone)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:  # without touching its recency
        with self._lock:
            return key in self._items

    def put(self, key: str, value, nbytes: int) -> None:
        with self._lock:
            if key in self._items or nbytes > self.max_bytes:
                return
            self._items[key] = value
            self._sizes[key] = nbytes
            self.size += nbytes
            while self.size > self.max_bytes:
                old, _ = self._items.popitem(last=False)
                self.size -= self._sizes.pop(old)


def placeholder(width: int, height: int) -> Image.Image:
    """A plain image of the size: the answer when not even the product's cutout can be read."""
    return Image.new("RGB", (width, height), FALLBACK_BACKGROUND)


class DBUnavailable(ConnectionError):
    """The metadata DB is known to be down: refused at once, not after a connect timeout."""


class StoreHealth:
    """Whether a backing service (the object store, the metadata DB) answers, as serving last saw it.

    The first failure marks it degraded and starts one background thread that probes the service
    (`probe`: any cheap call that raises while it is down) after `backoff_s`, doubling up to
    `max_backoff_s`; the first probe that succeeds clears the state and calls `on_recover`. While
    degraded, :meth:`check` raises `error` at once, so requests never wait on a dead service."""

    def __init__(self, probe, on_recover=lambda: None, backoff_s: float = 0.25, max_backoff_s: float = 5.0,
                 name: str = "object store", error: type[Exception] = StoreUnavailable):
        self._probe = probe
        self._on_recover = on_recover
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.name = name
        self.error = error
        self.degraded = False
        self.since: Optional[float] = None
        self.errors = 0  # calls that failed, the background probes' included
        self.outages = 0
        self.last_error = ""
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise `error` while the service is known to be down."""
        if self.degraded:
            raise self.error(f"{self.name} unavailable since {self.since:.0f} ({self.last_error})")

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.degraded:
                return
            self.degraded, self.since = True, time.time()
            self.outages += 1
        log.warning("%s unavailable, serving from memory: %s", self.name, self.last_error)
        threading.Thread(target=self._retry, name=f"{self.name.replace(' ', '-')}-retry", daemon=True).start()

    def _retry(self) -> None:
        delay = self.backoff_s
        while True:
            time.sleep(delay)
            try:
                self._probe()
            except Exception as exc:  # still down (or worse): keep backing off
                with self._lock:
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = min(2 * delay, self.max_backoff_s)
                continue
            with self._lock:
                self.degraded, self.since = False, None
            log.warning("%s answers again: serving recovered", self.name)
            self._on_recover()
            return

    def snapshot(self) -> dict:
        return {"degraded": self.degraded, "since": self.since, "errors": self.errors, "outages": self.outages,
                "last_error": self.last_error}


def db_down(exc: BaseException) -> bool:
    """An error that means the DB is unreachable (not a bug or a bad row): serving degrades on it."""
    return isinstance(exc, (DBUnavailable, TransientDBError)) or is_transient(exc)


def note_db_error(health: Optional[StoreHealth], exc: BaseException) -> None:
    """Mark the DB down if `exc` says it is (the health's background probe then waits for it)."""
    if health is not None and db_down(exc):
        health.failed(exc)


@dataclass
class _Index:
    pointer_key: str
    version: int
    doc: IndexDocument
    checked_at: float


class CreativeService:
    """``prefetch``: when a new index version is read, decode its canvases into the cache in a
    background thread (until the cache is 90% full), so the first impressions after a publish do
    not each pay a PNG decode (~20-30 ms for a production-size canvas); then encode the hits of
    the merchant's configured placements into the encoded-creative LRU (:meth:`_prerender`)."""

    def __init__(self, store: ObjectStore, miss_queue, creative_config=None, cache_bytes: int = 512 * 2**20,
                 index_ttl_s: float = 5.0, jpeg_quality: int = JPEG_QUALITY, prefetch: bool = False,
                 creative_cache_bytes: int = CREATIVE_CACHE_BYTES):
        self.store = store
        self.miss_queue = miss_queue
        self.creative_config = creative_config
        self.cache = LRUBytes(cache_bytes)
        # Encoded hits: the same (canvas, placed box, format, quality) is the same bytes, and ad
        # traffic repeats them, so a repeat skips the crop and the encode (most of a large hit).
        # Keyed by the index version too, and the old version's entries are dropped when a new one
        # is read: a republished canvas key can never serve stale bytes.
        self.creatives = LRUBytes(creative_cache_bytes) if creative_cache_bytes > 0 else None
        self.index_ttl_s = index_ttl_s
        self.jpeg_quality = jpeg_quality
        self._indexes: dict[tuple[str, str], _Index] = {}
        self._lookups: dict[tuple[str, str], serving_index.CanvasLookup] = {}
        self._categories: dict[str, tuple[float, list[str]]] = {}
        self._placements: dict[str, list[Placement]] = {}
        self._lock = threading.Lock()
        self.prefetch = prefetch
        self.prefetched = 0  # canvases decoded ahead of their first request
        self.prerendered = 0  # hits of configured placements encoded ahead of their first request
        self.prefetching = 0  # index loads and prefetch threads under way
        self.fallbacks = 0  # misses answered with the fallback (placeholders included)
        self.placeholders = 0  # answered with a plain placeholder: not even the cutout could be read
        self.health = StoreHealth(self._probe_store, self._recheck_indexes)

    # -- the store, through its health -----------------------------------------------------------
    def _probe_store(self) -> None:
        # a HEAD of a key no partition uses: found or not, an answer means the store is back
        self.store.exists(f"{serving_index.ROOT}/{serving_index.POINTER_NAME}")

    def _recheck_indexes(self) -> None:
        """After an outage: every held index and category list is checked on its next request."""
        with self._lock:
            for held in self._indexes.values():
                held.checked_at = float("-inf")
            self._categories.clear()

    def _read(self, read, *args):
        """A store read, refused at once while the store is down; a failure marks it down."""
        self.health.check()
        try:
            return read(*args)
        except StoreUnavailable as exc:
            self.health.failed(exc)
            raise

    # -- index -----------------------------------------------------------------------------------
    def categories(self, merchant: str) -> list[str]:
        check_name("merchant", merchant)
        cached = self._categories.get(merchant)
        if cached and (time.monotonic() - cached[0] < self.index_ttl_s or self.health.degraded):
            return cached[1]
        try:
            cats = self._read(serving_index.categories, self.store, merchant)
        except StoreUnavailable:
            if cached:
                return cached[1]
            # never listed, but its indexes may be held (read at start-up): those still serve
            with self._lock:
                return sorted({c for m, c in self._indexes if m == merchant})
        self._categories[merchant] = (time.monotonic(), cats)
        return cats

    def index(self, merchant: str, category: str) -> Optional[IndexDocument]:
        key = (merchant, category)
        now = time.monotonic()
        current = self._indexes.get(key)
        if current and (now - current.checked_at < self.index_ttl_s or self.health.degraded):
            return current.doc
        try:
            pointer = self._read(serving_index.read_pointer, self.store, merchant, category)
            if pointer is None:
                return None
            if current and current.version == pointer.version:
                current.checked_at = now
                return current.doc
            doc = self._read(serving_index.read_document, self.store, pointer)
        except StoreUnavailable:
            return current.doc if current else None  # keep serving the version held
        with self._lock:
            self._indexes[key] = _Index(pointer.key, pointer.version, doc, now)
        if self.creatives is not None and current is not None:
            self.creatives.drop(lambda k: k[:2] == key and k[2] != pointer.version)
        if self.prefetch:
            self._prefetch_started()
            threading.Thread(target=self._prefetch, args=(doc,), name=f"prefetch-{merchant}-{category}",
                             daemon=True).start()
        return doc

    def lookup(self, merchant: str, category: str, doc: IndexDocument) -> serving_index.CanvasLookup:
        """The containment lookup of this index version (its per-product arrays built once)."""
        found = self._lookups.get((merchant, category))
        if found is None or found.doc is not doc:
            found = serving_index.CanvasLookup(doc)
            self._lookups[(merchant, category)] = found
        return found

    def load_all_indexes(self) -> int:
        """Read every published index now (and, with ``prefetch``, start decoding its canvases)."""
        n = 0
        self._prefetch_started()
        try:
            for merchant, category in serving_index.published_partitions(self.store):
                n += self.index(merchant, category) is not None
        finally:
            self._prefetch_done()
        return n

    def _prefetch_started(self) -> None:
        with self._lock:
            self.prefetching += 1

    def _prefetch_done(self) -> None:
        with self._lock:
            self.prefetching -= 1

    def _prefetch(self, doc: IndexDocument) -> None:
        try:
            self._prefetch_entries(doc)
            self._prerender(doc)
        finally:
            self._prefetch_done()

    def _prerender(self, doc: IndexDocument) -> None:
        """Encode the hits of the merchant's configured placements (every product x theme, JPEG,
        the placement as configured) into the encoded-creative LRU, so even the first impression
        of a declared placement skips the crop and the encode. Stops at 90% of the LRU, like the
        canvas prefetch, and when the index is no longer the version held."""
        if self.creatives is None or self.creative_config is None:
            return
        try:
            placements = self.creative_config.placements(doc.merchant)
        except Exception as exc:  # a config problem must not break serving
            log.warning("prerender of %s/%s skipped: %s", doc.merchant, doc.category, exc)
            return
        lookup = self.lookup(doc.merchant, doc.category, doc)
        for product_id, product in doc.products.items():
            _, _, bw, bh = product.bbox
            for placement in placements:
                placed = place_product(bw, bh, placement)
                for prompt_id in doc.prompts:
                    if self.creatives.size >= 0.9 * self.creatives.max_bytes:
                        return
                    found = lookup.find(product_id, prompt_id, placement)
                    if found is None:
                        continue  # not generated yet: a miss, nothing to render
                    key = self._creative_key(doc.merchant, doc.category, doc, found.entry, placed, "jpeg")
                    if key is None:
                        return  # a newer version is held: its own prefetch renders it
                    if key in self.creatives:
                        continue
                    try:
                        canvas = self._pyramid(found.entry.image_key)
                    except StoreUnavailable:
                        return
                    except Exception as exc:  # a missing or broken canvas is served as a miss later
                        log.warning("prerender of %s failed: %s", found.entry.image_key, exc)
                        continue
                    body = self.encode(crop_placement(canvas, found.entry.layout, placed), "jpeg",
                                       serving_xmp(doc.generator_id))
                    self.creatives.put(key, body, len(body))
                    with self._lock:
                        self.prerendered += 1

    def _prefetch_entries(self, doc: IndexDocument) -> None:
        for entry in doc.entries.values():
            if self.cache.size >= 0.9 * self.cache.max_bytes:
                return  # never evict what requests are using to make room for guesses
            try:
                if _pyramid_key(entry.image_key) not in self.cache:
                    self._pyramid(entry.image_key)
                    with self._lock:  # two prefetch threads may run (two partitions published)
                        self.prefetched += 1
            except StoreUnavailable:
                return  # the store is down: the requests will load what they need once it is back
            except Exception as exc:  # a missing or broken image is served as a miss later
                log.warning("prefetch of %s failed: %s", entry.image_key, exc)

    def find_product(self, merchant: str, product_id: str) -> tuple[str, IndexDocument]:
        for category in self.categories(merchant):
            doc = self.index(merchant, category)
            if doc is not None and product_id in doc.products:
                return category, doc
        if not self.categories(merchant):
            if self.health.degraded:  # what it holds is all it can know: an unknown merchant is a 404
                raise NotFound(f"unknown merchant {merchant!r}: no index held for it, and the object store is "
                               f"unavailable (an index published since cannot be read yet)")
            raise NotFound(f"unknown merchant {merchant!r} (no published index)")
        raise NotFound(f"unknown product {product_id!r} for merchant {merchant!r}")

    def default_placement(self, merchant: str, width: int, height: int) -> Placement:
        """The merchant's configured fill and anchor for this size, else fill 0.8 centred."""
        if self.creative_config is not None and merchant not in self._placements:
            try:
                self._placements[merchant] = self.creative_config.placements(merchant)
            except Exception:  # a config problem must not break serving: fall back to defaults
                self._placements[merchant] = []
        for p in self._placements.get(merchant, []):
            if (p.width, p.height) == (width, height):
                return p
        return Placement(width, height)

    # -- images ----------------------------------------------------------------------------------
    def _decoded(self, cache_key: str, key: str, levels: int) -> CanvasPyramid:
        """The image at key decoded to RGB with ``levels`` pyramid levels, cached under cache_key."""
        pyramid = self.cache.get(cache_key)
        if pyramid is None:
            img = Image.open(io.BytesIO(self._read(self.store.get_bytes, key)))
            img.load()
            pyramid = canvas_pyramid(img.convert("RGB"), levels)
            self.cache.put(cache_key, pyramid, pyramid.nbytes)
        return pyramid

    def _photo(self, key: str) -> Image.Image:
        return self._decoded(key, key, levels=1).levels[0]

    def _pyramid(self, key: str) -> CanvasPyramid:
        """A bucket canvas with its reductions, cached as one entry (see compositing.crop_placement)."""
        return self._decoded(_pyramid_key(key), key, levels=PYRAMID_LEVELS)

    def _cutout(self, key: str) -> np.ndarray:
        arr = self.cache.get(key)
        if arr is None:
            arr = decode_png(self._read(self.store.get_bytes, key))  # an RGBA cutout
            self.cache.put(key, arr, arr.nbytes)
        return arr

    def fallback(self, cutout_key: str, placed) -> Image.Image:
        """The positioned product on a plain background; a plain placeholder while the store is
        down and the cutout is not held."""
        try:
            return Image.fromarray(fallback_creative(self._cutout(cutout_key), placed))
        except StoreUnavailable:
            with self._lock:
                self.placeholders += 1
            return placeholder(placed.canvas_w, placed.canvas_h)

    def encode(self, img: Image.Image, fmt: str, xmp: Optional[bytes] = None) -> bytes:
        """``xmp``: a packet to embed in JPEG/WebP (what the image is: core/image_io.serving_xmp);
        None for none (the control variant's product photo)."""
        buf = io.BytesIO()
        extra = {"xmp": xmp} if xmp else {}
        if fmt == "jpeg":
            img.save(buf, "JPEG", quality=self.jpeg_quality, **extra)
        elif fmt == "webp":
            img.save(buf, "WEBP", quality=self.jpeg_quality, method=0, **extra)
        elif fmt == "png":
            img.save(buf, "PNG", compress_level=1)
        else:
            raise ValueError(f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")
        return buf.getvalue()

    def _creative_key(self, merchant: str, category: str, doc: IndexDocument, entry, placed, fmt: str):
        """The encoded-creative LRU's key of a hit (None: no cache, or doc is not the version held)."""
        held = self._indexes.get((merchant, category))
        if self.creatives is None or held is None or held.doc is not doc:
            return None
        return (merchant, category, held.version, entry.image_key, tuple(placed), fmt, self.jpeg_quality)

    # -- serving ---------------------------------------------------------------------------------
    def serve(self, merchant: str, product_id: str, placement: Placement, prompt_id: Optional[str] = None,
              fmt: str = "jpeg", record_miss: bool = True, user: str = "") -> Creative:
        """The creative of ``placement`` (see ``default_placement`` for a merchant's configured fill
        and anchor of a size). ``record_miss=False`` answers a miss with the fallback without
        queueing it (previews).

        A miss queues the requested canvas for every theme of the category (the bandit will try
        them all); through the API's buffer (``record_request``) only if the miss policy admits it."""
        if fmt not in FORMATS:
            raise ValueError(f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")
        category, doc = self.find_product(merchant, product_id)
        width, height = placement.width, placement.height
        if prompt_id is None:
            prompt_id = doc.prompts[0]
        elif prompt_id not in doc.prompts:
            raise NotFound(f"unknown prompt {prompt_id!r} for category {category!r}; known: {', '.join(doc.prompts)}")
        product = doc.products[product_id]
        _, _, bw, bh = product.bbox
        placed = place_product(bw, bh, placement)
        lookup = self.lookup(merchant, category, doc)
        found = lookup.find(product_id, prompt_id, placement)  # own canvas, else any that covers it
        if found is not None:
            key = self._creative_key(merchant, category, doc, found.entry, placed, fmt)
            body = self.creatives.get(key) if key is not None else None
            if body is None:
                try:
                    canvas = self._pyramid(found.entry.image_key)
                except ObjectNotFound:
                    found = None  # index ahead of the store (should not happen): treat as a miss
                except StoreUnavailable:
                    found = None  # a canvas not held while the store is down: the fallback, queued as a miss
                else:
                    body = self.encode(crop_placement(canvas, found.entry.layout, placed), fmt,
                                       serving_xmp(doc.generator_id))
                    if key is not None:
                        self.creatives.put(key, body, len(body))
        if found is not None:
            return Creative(body, FORMATS[fmt], True, merchant, category, product_id, found.canvas_id, prompt_id,
                            width, height, found.entry.image_key)
        requested = lookup.requested_id(product_id, placement)
        if record_miss:
            themed = [Miss(merchant, category, product_id, requested, p) for p in doc.prompts]
            self.miss_queue.record_request(themed, width, height, user)
        with self._lock:
            self.fallbacks += 1
        img = self.fallback(product.cutout_key, placed)
        return Creative(self.encode(img, fmt, composite_xmp()), FORMATS[fmt], False, merchant, category, product_id, requested,
                        prompt_id, width, height)
