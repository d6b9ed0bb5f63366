"""What the requests of one app share: the creative service, the personalizer, the buffers the
request path writes to (impressions, misses) and the background thread that flushes them.

The request path never touches the DB: impressions and misses are buffered here and written in
batches by :class:`Flusher`, which also publishes the bandit deltas and loads the merged state.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from fastapi import Request
from PIL import Image

from dataclasses import replace

from resources.metadata_db import Miss

from ..core.geometry import Placement, place_product
from ..core.image_io import composite_xmp
from ..core.keys import source_key
from ..core.manifests import IndexDocument
from ..core.miss_policy import QUEUED, MissGate, MissPolicy
from ..core.store import StoreUnavailable
from .creative import CreativeService, DBUnavailable, LRUBytes, StoreHealth, note_db_error, placeholder
from .ingest import EventIngest
from .personalize import Personalizer

log = logging.getLogger("bggen.serving")


def db_health(bandit_store) -> StoreHealth:
    """The metadata DB's health as the API sees it; its probe is one ``SELECT 1`` (never degraded
    without a bandit store: nothing is then written to a DB)."""
    def probe() -> None:
        if bandit_store is not None:
            with bandit_store.metadata_db.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

    return StoreHealth(probe, name="metadata DB", error=DBUnavailable)


def fit_photo(img: Image.Image, width: int, height: int, background=(255, 255, 255)) -> Image.Image:
    """The catalog photo as is, scaled to fit W x H (letterboxed): the A/B control."""
    s = min(width / img.width, height / img.height)
    w, h = max(1, round(img.width * s)), max(1, round(img.height * s))
    out = Image.new("RGB", (width, height), background)
    out.paste(img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0), ((width - w) // 2, (height - h) // 2))
    return out


class BufferedMissQueue:
    """Misses recorded without waiting: gated (:class:`~bggen_assets.core.miss_policy.MissGate`:
    size threshold, product rate limit), counted in memory (requests, distinct users), written by
    the flusher thread under the per-merchant cap."""

    def __init__(self, miss_queue, max_pending: int = 100_000, policy: Optional[MissPolicy] = None,
                 declared=lambda merchant: ()):
        self.miss_queue = miss_queue
        self.max_pending = max_pending
        self.gate = MissGate(policy or MissPolicy(), declared)
        # request key -> [miss, last request time, requests, users not yet written]
        self._pending: dict[str, list] = {}
        self._users: OrderedDict[str, set] = OrderedDict()  # users already counted per key (bounded)
        self._lock = threading.Lock()
        self.dropped = 0
        self.errors = 0
        #: the DB's health when the miss queue is the DB (set by the app): once a write finds it
        #: down, the rest of the round stays buffered instead of each write waiting for it
        self.health: Optional[StoreHealth] = None

    def record(self, miss: Miss, now: Optional[float] = None, user: str = "") -> None:
        """One themed miss that passed the gate (or bypasses it: the caller decided)."""
        now = time.time() if now is None else now
        with self._lock:
            self._add(miss, now, user)

    def _add(self, miss: Miss, now: float, user: str) -> None:
        key = miss.request_key
        cur = self._pending.get(key)
        if cur is None:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1  # the DB is far behind: shed load rather than grow without bound
                return
            cur = self._pending[key] = [miss, now, 0, set()]
        cur[1] = now
        cur[2] += 1
        if user:
            seen = self._users.get(key)
            if seen is None or user not in seen:
                cur[3].add(user)

    def record_request(self, misses: list[Miss], width: int, height: int, user: str = "",
                       now: Optional[float] = None) -> str:
        """One request that missed: every theme's miss of its bucket, if the gate admits it.
        Returns the gate's decision (``queued``, ``below_threshold``, ``rate_limited``)."""
        if not misses:
            return "queued"
        now = time.time() if now is None else now
        m = misses[0]
        with self._lock:
            decision = self.gate.admit(m.merchant, m.product_id, m.bucket_id, width, height, now)
            if decision == QUEUED:
                for miss in misses:
                    self._add(miss, now, user)
        return decision

    def _waiting(self, merchant: str) -> set[str]:
        return {m.request_key for m in self.miss_queue.pending(limit=self.gate.policy.merchant_cap, merchant=merchant)}

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, {}
        by_merchant: dict[str, list[tuple[str, list]]] = {}
        for key, item in batch.items():
            by_merchant.setdefault(item[0].merchant, []).append((key, item))
        failed, written = {}, 0
        for merchant, items in by_merchant.items():
            if self.health is not None and self.health.degraded:
                failed.update(items)
                continue
            try:
                waiting = self._waiting(merchant)
            except Exception as exc:
                note_db_error(self.health, exc)
                failed.update(items)
                continue
            new = [(k, it) for k, it in items if k not in waiting]
            with self._lock:
                allowed = self.gate.cap_allows(len(waiting), len(new))
            held = {k for k, _ in new[allowed:]}
            for key, (miss, now, count, users) in items:
                if key in held:
                    continue
                if self.health is not None and self.health.degraded:
                    failed[key] = [miss, now, count, users]
                    continue
                try:
                    self.miss_queue.record(replace(miss, request_count=count, distinct_users=len(users)), now)
                    written += 1
                except Exception as exc:  # keep it for the next round
                    note_db_error(self.health, exc)
                    failed[key] = [miss, now, count, users]
                    continue
                if users:
                    with self._lock:
                        seen = self._users.setdefault(key, set())
                        self._users.move_to_end(key)
                        if len(seen) < 10_000:
                            seen |= users
                        if len(self._users) > self.max_pending:
                            self._users.popitem(last=False)
        if failed:
            self.errors += 1
            with self._lock:
                for k, v in failed.items():
                    cur = self._pending.get(k)
                    if cur is None:
                        self._pending[k] = v
                    else:  # requests arrived meanwhile: add the unwritten ones
                        cur[2] += v[2]
                        cur[3] |= v[3]
        return written

    def stats(self) -> dict:
        return {"pending": len(self._pending), "queued_requests": self.gate.queued, "held": dict(self.gate.held),
                "dropped": self.dropped, "errors": self.errors}

    def __len__(self) -> int:
        return len(self._pending)


class ImpressionLog:
    """Impressions buffered in memory, written in batches; recent ones kept for click look-ups."""

    def __init__(self, bandit_store=None, recent: int = 50_000, max_pending: int = 200_000,
                 health: Optional[StoreHealth] = None):
        self.bandit_store = bandit_store
        self.health = health  # the DB's: a look-up while it is down is refused at once
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
            if self.health is not None:
                self.health.check()
            try:
                row = self.bandit_store.get_impression(impression_id)
            except Exception as exc:
                note_db_error(self.health, exc)
                raise
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
            # idempotent: a batch whose commit went unacknowledged (the DB hung past its timeout,
            # or died after committing) is sent again, and its stored rows must not fail it
            for i in range(0, len(batch), 2000):
                self.bandit_store.insert_new_impressions(batch[i:i + 2000])
        except Exception:
            self.errors += 1
            with self._lock:
                self._pending[:0] = batch[i:]
            raise
        self.written += len(batch)
        return len(batch)

    def __len__(self) -> int:
        return len(self._pending)


class ClickLog:
    """Clicks the DB could not take yet: bounded in memory, applied on the next flush, spilled to
    a local journal (JSON lines) when the buffer is full or the process stops, read back at start.

    A click is ``{"impression_id", "ts"}``. A flush takes the journal by renaming it to
    ``<journal>.inflight`` (new spills start a fresh journal meanwhile) and deletes that file only
    once every click in it was applied; what failed is spilled again. Applying a click twice is
    harmless (only an impression's first click counts), so a crash mid-flush loses nothing and
    counts nothing twice."""

    def __init__(self, journal_path: Optional[str] = None, max_pending: int = 100_000):
        self.journal_path = Path(journal_path) if journal_path else None
        self.max_pending = max_pending
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self.applied = 0
        self.rejected = 0
        self.spilled = 0
        self.errors = 0
        inflight = self._inflight()
        if inflight is not None and inflight.exists():  # the last process stopped mid-flush
            self._spill(self._read(inflight))
            inflight.unlink()

    def _inflight(self) -> Optional[Path]:
        return None if self.journal_path is None else self.journal_path.with_name(self.journal_path.name + ".inflight")

    @staticmethod
    def _read(path: Path) -> list[dict]:
        out = []
        for line in path.read_text().splitlines():
            try:
                c = json.loads(line)
                out.append({"impression_id": str(c["impression_id"]), "ts": float(c["ts"])})
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable line in click journal %s: %r", path, line[:200])
        return out

    def _spill(self, clicks: list[dict]) -> None:
        if not clicks:
            return
        if self.journal_path is None:
            raise RuntimeError("click buffer full and no click_journal configured")
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal_path, "a") as f:
            for c in clicks:
                f.write(json.dumps(c, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.spilled += len(clicks)

    def add(self, impression_id: str, ts: float) -> None:
        with self._lock:
            self._pending.append({"impression_id": impression_id, "ts": ts})
            if len(self._pending) > self.max_pending:  # keep the newest in memory, the rest on disk
                n = len(self._pending) - self.max_pending // 2
                self._spill(self._pending[:n])
                del self._pending[:n]

    def take_all(self) -> list[dict]:
        """Every click waiting, the journal's first; call :meth:`done` or :meth:`failed` after."""
        with self._lock:
            batch, self._pending = self._pending, []
            if self.journal_path is not None and self.journal_path.exists():
                inflight = self._inflight()
                self.journal_path.rename(inflight)
                batch = self._read(inflight) + batch
        return batch

    def done(self) -> None:
        inflight = self._inflight()
        with self._lock:
            if inflight is not None and inflight.exists():
                inflight.unlink()

    def failed(self, rest: list[dict]) -> None:
        """Clicks of a flush that could not be applied: back to the journal (or memory without one)."""
        with self._lock:
            if self.journal_path is None:
                self._pending[:0] = rest
                return
            self._spill(rest)
            inflight = self._inflight()
            if inflight.exists():
                inflight.unlink()

    def spill_all(self) -> int:
        """At shutdown: whatever is still in memory goes to the journal."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._spill(batch)
        return len(batch)

    def __len__(self) -> int:
        n = len(self._pending)
        if self.journal_path is not None and self.journal_path.exists():
            with open(self.journal_path) as f:
                n += sum(1 for _ in f)
        return n


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
                 impressions: ImpressionLog, creative_config=None, response_cache_bytes: int = 0,
                 clicks: Optional[ClickLog] = None, db: Optional[StoreHealth] = None):
        self.service = service
        #: the metadata DB's health: while it is down the flusher leaves everything buffered and
        #: the request path never calls the DB; its probe retries in the background
        self.db = db if db is not None else db_health(impressions.bandit_store)
        self.personalizer = personalizer
        self.misses = misses
        self.impressions = impressions
        cfg = personalizer.config
        self.clicks = clicks if clicks is not None else ClickLog(cfg.click_journal, cfg.max_buffered_clicks)
        self.ingest = EventIngest(service, personalizer, impressions.bandit_store, impressions)
        self.creative_config = creative_config
        self.responses = LRUBytes(response_cache_bytes) if response_cache_bytes else None
        self.started = time.time()
        self.served = {"hit": 0, "miss": 0}
        self._flush_lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        """Serving from memory: the object store or the metadata DB is down."""
        return self.service.health.degraded or self.db.degraded

    def flush(self) -> None:
        """Write what is buffered. While the DB is down nothing here calls it (the misses only when
        they go to the DB too): the health's probe finds it back and the next round writes all."""
        with self._flush_lock:
            for name, fn, uses_db in (("impressions", self.impressions.flush, True),
                                      ("clicks", self.flush_clicks, True),
                                      ("misses", self.misses.flush, self.misses.health is not None),
                                      ("bandit", self.personalizer.flush, True)):
                if uses_db and self.db.degraded:
                    continue
                try:
                    fn()
                except Exception as exc:  # logged; the data stays buffered for the next round
                    if uses_db:
                        note_db_error(self.db, exc)
                    log.warning("flush of %s failed: %s", name, exc)

    def flush_clicks(self) -> int:
        """Apply the buffered clicks (in order); on a DB error the rest go back to the buffer."""
        if self.impressions.bandit_store is None or not len(self.clicks):
            return 0
        batch = self.clicks.take_all()
        for n, c in enumerate(batch):
            try:
                out = self.ingest.apply_click(c["impression_id"], c["ts"])
            except Exception:
                self.clicks.errors += 1
                self.clicks.failed(batch[n:])
                raise
            if out.status == "rejected":
                self.clicks.rejected += 1
                log.warning("buffered click on %s dropped: %s", c["impression_id"], out.reason)
            else:
                self.clicks.applied += 1
        self.clicks.done()
        return len(batch)

    def close(self) -> None:
        """At shutdown: a last flush; clicks the DB still cannot take go to the journal."""
        self.flush()
        if self.clicks.journal_path is not None:
            self.clicks.spill_all()

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
        def render() -> Image.Image:
            try:
                return fit_photo(self.service._photo(key), width, height)
            except StoreUnavailable:  # the photo is not held and the store is down
                return placeholder(width, height)

        if self.service.health.degraded:  # a placeholder must not stay in the response cache
            return self.service.encode(render(), fmt)
        return self._encode_cached(("control", key, width, height, fmt), render, fmt)

    def positioned(self, doc: IndexDocument, product_id: str, placement: Placement, fmt: str) -> tuple[bytes, str]:
        product = doc.products[product_id]
        _, _, bw, bh = product.bbox
        placed = place_product(bw, bh, placement)
        requested = self.service.lookup(doc.merchant, doc.category, doc).requested_id(product_id, placement)
        render = lambda: self.service.fallback(product.cutout_key, placed)  # noqa: E731
        if self.service.health.degraded:  # a placeholder must not stay in the response cache
            return self.service.encode(render(), fmt, composite_xmp()), requested
        body = self._encode_cached(("positioned", product.cutout_key, placement, fmt), render, fmt, composite_xmp())
        return body, requested


def serving_state(request: Request) -> ServingState:
    """The app's :class:`ServingState` (a FastAPI dependency of every router)."""
    return request.app.state.serving
