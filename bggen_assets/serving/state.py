"""What the requests of one app share: the creative service, the personalizer, the buffers the
request path writes to (impressions, misses) and the background thread that flushes them.

The request path never touches the DB: impressions and misses are buffered here and written in
batches by :class:`Flusher`, which also publishes the bandit deltas and loads the merged state.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Optional

from fastapi import Request
from PIL import Image

from resources.metadata_db import Miss

from ..core.compositing import fallback_creative
from ..core.geometry import Placement, place_product
from ..core.image_io import composite_xmp
from ..core.keys import source_key
from ..core.manifests import IndexDocument
from .creative import CreativeService, LRUBytes
from .personalize import Personalizer

log = logging.getLogger("bggen.serving")


def fit_photo(img: Image.Image, width: int, height: int, background=(255, 255, 255)) -> Image.Image:
    """The catalog photo as is, scaled to fit W x H (letterboxed): the A/B control."""
    s = min(width / img.width, height / img.height)
    w, h = max(1, round(img.width * s)), max(1, round(img.height * s))
    out = Image.new("RGB", (width, height), background)
    out.paste(img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0), ((width - w) // 2, (height - h) // 2))
    return out


class BufferedMissQueue:
    """Misses recorded without waiting: deduplicated in memory, written by the flusher thread."""

    def __init__(self, miss_queue, max_pending: int = 100_000):
        self.miss_queue = miss_queue
        self.max_pending = max_pending
        self._pending: dict[str, tuple[Miss, float]] = {}
        self._lock = threading.Lock()
        self.dropped = 0
        self.errors = 0

    def record(self, miss: Miss, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            if len(self._pending) >= self.max_pending and miss.request_key not in self._pending:
                self.dropped += 1  # the DB is far behind: shed load rather than grow without bound
                return
            self._pending[miss.request_key] = (miss, now)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, {}
        failed = {}
        for key, (miss, now) in batch.items():
            try:
                self.miss_queue.record(miss, now)
            except Exception:  # keep it for the next round
                failed[key] = (miss, now)
        if failed:
            self.errors += 1
            with self._lock:
                for k, v in failed.items():
                    self._pending.setdefault(k, v)
        return len(batch) - len(failed)

    def __len__(self) -> int:
        return len(self._pending)


class ImpressionLog:
    """Impressions buffered in memory, written in batches; recent ones kept for click look-ups."""

    def __init__(self, bandit_store=None, recent: int = 50_000, max_pending: int = 200_000):
        self.bandit_store = bandit_store
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, dict] = OrderedDict()
        self._recent_max = recent
        self.max_pending = max_pending
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._clicked: set[str] = set()  # click dedupe when there is no DB

    def add(self, row: dict) -> None:
        with self._lock:
            self._recent[row["impression_id"]] = row
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
            if self.bandit_store is not None:
                if len(self._pending) < self.max_pending:
                    self._pending.append(row)
                else:
                    self.dropped += 1

    def get(self, impression_id: str) -> Optional[dict]:
        row = self._recent.get(impression_id)
        if row is None and self.bandit_store is not None:
            row = self.bandit_store.get_impression(impression_id)
        return row

    def first_click(self, impression_id: str) -> bool:
        if self.bandit_store is not None:
            return self.bandit_store.record_click(impression_id)
        with self._lock:
            if impression_id in self._clicked:
                return False
            self._clicked.add(impression_id)
            return True

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            for i in range(0, len(batch), 2000):
                self.bandit_store.log_impressions(batch[i:i + 2000])
        except Exception:
            self.errors += 1
            with self._lock:
                self._pending[:0] = batch[i:]
            raise
        self.written += len(batch)
        return len(batch)

    def __len__(self) -> int:
        return len(self._pending)


class Flusher(threading.Thread):
    """Every `interval_s`: impressions, misses, bandit deltas to the DB (each failure isolated)."""

    def __init__(self, app_state: "ServingState", interval_s: float):
        super().__init__(name="bggen-flusher", daemon=True)
        self.s = app_state
        self.interval_s = interval_s
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.s.flush()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class ServingState:
    """Everything a request needs; shared by the routers of one app (``app.state.serving``)."""

    def __init__(self, service: CreativeService, personalizer: Personalizer, misses: BufferedMissQueue,
                 impressions: ImpressionLog, creative_config=None, response_cache_bytes: int = 0):
        self.service = service
        self.personalizer = personalizer
        self.misses = misses
        self.impressions = impressions
        self.creative_config = creative_config
        self.responses = LRUBytes(response_cache_bytes) if response_cache_bytes else None
        self.started = time.time()
        self.served = {"hit": 0, "miss": 0}
        self._flush_lock = threading.Lock()

    def flush(self) -> None:
        with self._flush_lock:
            for name, fn in (("impressions", self.impressions.flush), ("misses", self.misses.flush),
                             ("bandit", self.personalizer.flush)):
                try:
                    fn()
                except Exception as exc:  # logged; the data stays buffered for the next round
                    log.warning("flush of %s failed: %s", name, exc)

    # -- rendering -------------------------------------------------------------------------------
    def _encode_cached(self, key: Optional[tuple], render, fmt: str, xmp: Optional[bytes] = None) -> bytes:
        if self.responses is not None and key is not None:
            body = self.responses.get(key)
            if body is not None:
                return body
        body = self.service.encode(render(), fmt, xmp)
        if self.responses is not None and key is not None:
            self.responses.put(key, body, len(body))
        return body

    def control(self, doc: IndexDocument, product_id: str, width: int, height: int, fmt: str) -> bytes:
        key = source_key(doc.products[product_id].image_hash)
        return self._encode_cached(("control", key, width, height, fmt),
                                   lambda: fit_photo(self.service._photo(key), width, height), fmt)

    def positioned(self, doc: IndexDocument, product_id: str, placement: Placement, fmt: str) -> tuple[bytes, str]:
        product = doc.products[product_id]
        _, _, bw, bh = product.bbox
        placed = place_product(bw, bh, placement)
        requested = self.service.lookup(doc.merchant, doc.category, doc).requested_id(product_id, placement)
        body = self._encode_cached(
            ("positioned", product.cutout_key, placement, fmt),
            lambda: Image.fromarray(fallback_creative(self.service._cutout(product.cutout_key), placed)), fmt,
            composite_xmp())
        return body, requested


def serving_state(request: Request) -> ServingState:
    """The app's :class:`ServingState` (a FastAPI dependency of every router)."""
    return request.app.state.serving
