"""The serving API (FastAPI on uvicorn): creatives with personalised themes, click feedback, preview.

    GET  /creative   merchant, product, width, height [, fill, anchor] [, country, region, gender,
                     device, user_id] -> image bytes (JPEG or WebP by Accept); headers
                     X-Impression-Id, X-Variant, X-Theme, X-Policy, X-Bucket, X-Cache (hit|miss)
    POST /events     {"impression_id": ..., "event": "click"} -> records the click (first one counts)
    GET  /health     status, cache and queue figures
    GET  /preview    HTML grid of a product's creatives: placements x themes, hits shown, misses marked
    GET  /preview/image   one preview cell (no impression, no miss recorded)
    GET  /docs, /openapi.json   FastAPI's own

The request path never touches the DB: impressions and misses are buffered and written in batches
by a background thread, which also publishes the bandit deltas and loads the merged state.

    bggen-serve [--host 127.0.0.1] [--port 8080] [--config serving.yaml]
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from resources.metadata_db import Miss

from ..core.compositing import fallback_creative
from ..core.geometry import GeometryError, Placement, bucket_for, place_product
from ..core.keys import InvalidName, check_name, source_key
from .creative import FORMATS, JPEG_QUALITY, Creative, CreativeService, LRUBytes, NotFound, keep_pillow_blocks
from .personalize import (
    THEMED,
    Personalizer,
    ServingConfig,
    assign_variant,
    build_features,
    device_from_user_agent,
    features_json,
    user_hash,
)

log = logging.getLogger("bggen.serving")

MIN_SIDE, MAX_SIDE = 8, 4096
MAX_PIXELS = 4096 * 2048
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
IMPRESSION_RE = r"^[0-9a-f]{32}$"
LABEL = r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,31}$"
ANCHORS = {
    "center": (0.5, 0.5), "centre": (0.5, 0.5), "top": (0.5, 0.0), "bottom": (0.5, 1.0), "left": (0.0, 0.5),
    "right": (1.0, 0.5), "top-left": (0.0, 0.0), "top-right": (1.0, 0.0), "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}


class BadRequest(ValueError):
    """A request parameter that is well-formed but not acceptable (answered 400)."""


class NotAcceptable(ValueError):
    """An Accept header that allows no image format we produce (answered 406)."""


# ------------------------------------------------------------------------------- helpers
def parse_anchor(value: Optional[str]) -> Optional[tuple[float, float]]:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ANCHORS:
        return ANCHORS[v]
    parts = v.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        ax, ay = float(parts[0]), float(parts[1])
    except ValueError:
        raise BadRequest(f"anchor must be 'ax,ay' with both in [0, 1] or one of {', '.join(ANCHORS)}; got {value!r}") from None
    if not (0.0 <= ax <= 1.0 and 0.0 <= ay <= 1.0):
        raise BadRequest(f"anchor values must be in [0, 1], got {value!r}")
    return ax, ay


def negotiate(accept: Optional[str]) -> str:
    """'jpeg' or 'webp' from an Accept header (highest q wins; ties and no header: JPEG)."""
    if not accept:
        return "jpeg"
    best, best_q = None, 0.0
    for part in accept.split(",")[:32]:
        fields = part.strip().split(";")
        media = fields[0].strip().lower()
        q = 1.0
        for p in fields[1:]:
            p = p.strip()
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        for fmt, mt, spec in (("jpeg", "image/jpeg", 3), ("webp", "image/webp", 3), ("jpeg", "image/*", 1),
                              ("jpeg", "*/*", 0)):
            if media == mt and q > 0:
                # an exact type beats a wildcard of the same q; WebP only when asked for by name
                score = q + spec * 1e-3 + (1e-4 if fmt == "webp" else 0.0)
                if score > best_q:
                    best, best_q = fmt, score
    if best is None:
        raise NotAcceptable(f"Accept {accept[:200]!r} allows neither image/jpeg nor image/webp")
    return best


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
    """Everything a request needs; shared by the endpoints of one app."""

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
    def _encode_cached(self, key: Optional[tuple], render, fmt: str) -> bytes:
        if self.responses is not None and key is not None:
            body = self.responses.get(key)
            if body is not None:
                return body
        body = self.service.encode(render(), fmt)
        if self.responses is not None and key is not None:
            self.responses.put(key, body, len(body))
        return body

    def control(self, doc: dict, product_id: str, width: int, height: int, fmt: str) -> bytes:
        key = source_key(doc["products"][product_id]["image_hash"])
        return self._encode_cached(("control", key, width, height, fmt),
                                   lambda: fit_photo(self.service._photo(key), width, height), fmt)

    def positioned(self, doc: dict, product_id: str, placement: Placement, fmt: str) -> tuple[bytes, str]:
        product = doc["products"][product_id]
        bw, bh = product["bbox"][2:]
        placed = place_product(bw, bh, placement)
        bucket = bucket_for(placed, doc["bucket_ratio"])
        body = self._encode_cached(
            ("positioned", product["cutout_key"], placement, fmt),
            lambda: Image.fromarray(fallback_creative(self.service._cutout(product["cutout_key"]), placed)), fmt)
        return body, bucket.id


# ------------------------------------------------------------------------------- app
MAX_QUERY = 2048


class QueryLimit:
    """Pure ASGI middleware: a query string over `max_bytes` is answered 414 before any parsing."""

    def __init__(self, app, max_bytes: int = MAX_QUERY):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and len(scope.get("query_string", b"")) > self.max_bytes:
            resp = _error(414, f"query string longer than {self.max_bytes} bytes")
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ClickEvent(BaseModel):
    impression_id: str = Field(..., pattern=IMPRESSION_RE, description="the X-Impression-Id of the creative")
    event: str = Field("click", pattern=r"^click$", description="only 'click' for now")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _log_errors(fn):
    def run():
        try:
            fn()
        except Exception:  # a background warm-up failing must not take the API down; requests load lazily
            log.exception("%s failed", fn.__name__)
    return run


def create_app(store, miss_queue, bandit_store=None, creative_config=None, serving_config: Optional[ServingConfig] = None,
               *, service: Optional[CreativeService] = None, cache_bytes: int = 512 * 2**20,
               response_cache_bytes: int = 0, index_ttl_s: float = 5.0, jpeg_quality: int = JPEG_QUALITY,
               background: bool = True, prefetch: bool = True) -> FastAPI:
    """The API over an object store (serving indexes, images), a miss queue and (optionally) a
    :class:`resources.bandit_store.BanditStore` for bandit state, impressions and clicks.

    ``response_cache_bytes`` > 0 also keeps encoded responses of deterministic creatives (same
    image, placement, format -> same bytes) in an LRU. ``background=False`` leaves flushing to
    the caller (``app.state.serving.flush()``), for tests. ``prefetch`` decodes the canvases of each
    newly read index version in the background (see :class:`CreativeService`).
    """
    serving_config = serving_config or ServingConfig()
    keep_pillow_blocks()
    service = service or CreativeService(store, miss_queue, creative_config, cache_bytes=cache_bytes,
                                         index_ttl_s=index_ttl_s, jpeg_quality=jpeg_quality, prefetch=prefetch)
    misses = BufferedMissQueue(miss_queue)
    service.miss_queue = misses  # the service records misses through the buffer: never blocks
    state = ServingState(service, Personalizer(serving_config, bandit_store), misses, ImpressionLog(bandit_store),
                         creative_config, response_cache_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        flusher = Flusher(state, serving_config.flush_interval_s) if background else None
        if flusher:
            flusher.start()
        if service.prefetch:  # read every index at start-up, so its canvases are decoded before traffic
            threading.Thread(target=_log_errors(service.load_all_indexes), name="load-indexes", daemon=True).start()
        try:
            yield
        finally:
            if flusher:
                flusher.stop()
            state.flush()

    app = FastAPI(title="bggen serving API", version="1.0",
                  description="Ad creatives with generated backgrounds; LinUCB theme personalisation; A/B logging.",
                  lifespan=lifespan)
    app.state.serving = state
    app.add_middleware(QueryLimit, max_bytes=MAX_QUERY)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
            problems.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return _error(400, "; ".join(problems), details=[{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                                                          for e in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: logged, answered without internals
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal error")

    def _lookup(merchant: str, product: str) -> tuple[str, dict]:
        try:
            check_name("merchant", merchant)
        except InvalidName as exc:
            raise BadRequest(str(exc)) from None
        if not ID_RE.match(product):
            raise BadRequest(f"product id {product[:140]!r} is not allowed: 1-128 letters, digits, '.', '_', ':' or '-'")
        return service.find_product(merchant, product)

    def _placement(merchant: str, width: int, height: int, fill: Optional[float], anchor: Optional[str]) -> Placement:
        if width * height > MAX_PIXELS:
            raise BadRequest(f"width x height must be at most {MAX_PIXELS} pixels, got {width}x{height}")
        ax_ay = parse_anchor(anchor)
        base = service.default_placement(merchant, width, height)
        try:
            return Placement(width, height, base.fill if fill is None else fill,
                             *(ax_ay if ax_ay is not None else (base.anchor_x, base.anchor_y)))
        except GeometryError as exc:
            raise BadRequest(str(exc)) from None

    def _guard(fn):
        """Map the serving layer's errors to 4xx answers."""
        try:
            return fn()
        except NotFound as exc:
            return _error(404, str(exc.args[0]) if exc.args else "not found")
        except NotAcceptable as exc:
            return _error(406, str(exc))
        except (BadRequest, GeometryError, InvalidName) as exc:
            return _error(400, str(exc))

    @app.get("/health", summary="Liveness and serving figures")
    def health() -> dict:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - state.started, 1),
            "served": dict(state.served),
            "cache_bytes": service.cache.size,
            "prefetched_canvases": service.prefetched,
            "prefetching": service.prefetching > 0,
            "pending_impressions": len(state.impressions),
            "pending_misses": len(state.misses),
            "policies": state.personalizer.snapshot(),
        }

    @app.get("/creative", summary="The creative for one impression",
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}, "image/webp": {}},
                              "description": "the image; headers X-Impression-Id, X-Variant, X-Theme, X-Policy, X-Bucket, X-Cache"},
                        400: {"description": "bad parameter"}, 404: {"description": "unknown merchant or product"},
                        406: {"description": "Accept allows no image format we produce"}})
    def creative(
        request: Request,
        merchant: str = Query(..., min_length=1, max_length=64, description="merchant name"),
        product: str = Query(..., min_length=1, max_length=128, description="product id"),
        width: int = Query(..., ge=MIN_SIDE, le=MAX_SIDE),
        height: int = Query(..., ge=MIN_SIDE, le=MAX_SIDE),
        fill: Optional[float] = Query(None, gt=0.0, le=1.0, description="fraction of the limiting side the product fills"),
        anchor: Optional[str] = Query(None, max_length=32, description="'ax,ay' in [0,1]^2 or center|top|bottom|left|right|top-left|..."),
        country: Optional[str] = Query(None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2"),
        region: Optional[str] = Query(None, pattern=LABEL),
        gender: Optional[str] = Query(None, pattern=LABEL),
        device: Optional[str] = Query(None, pattern=LABEL, description="mobile|desktop|tablet (else from User-Agent)"),
        user_id: Optional[str] = Query(None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$"),
    ):
        def run():
            fmt = negotiate(request.headers.get("accept"))
            category, doc = _lookup(merchant, product)
            placement = _placement(merchant, width, height, fill, anchor)
            impression_id = secrets.token_hex(16)
            variant = assign_variant(user_id or impression_id, serving_config)
            info = doc["products"][product]
            features = build_features(country=country, region=region, gender=gender,
                                      device=device or device_from_user_agent(request.headers.get("user-agent")),
                                      subcategory=info.get("subcategory"), colour=info.get("colour"),
                                      width=width, height=height)
            arms = doc["prompts"]
            choice = state.personalizer.choose(variant, merchant, category, arms, doc["products"], features)
            if variant == "control":
                body, hit, bucket_id, theme = state.control(doc, product, width, height, fmt), True, "none", "none"
            elif variant == "positioned":
                body, bucket_id = state.positioned(doc, product, placement, fmt)
                hit, theme = True, "none"
            else:
                c: Creative = service.serve(merchant, product, width, height, prompt_id=choice.theme,
                                            fill=placement.fill, anchor=(placement.anchor_x, placement.anchor_y), fmt=fmt)
                body, hit, bucket_id, theme = c.body, c.hit, c.bucket_id, c.prompt_id
                state.personalizer.record_impression(choice, merchant, category, arms, doc["products"], hit)
            state.served["hit" if hit else "miss"] += 1
            state.impressions.add({
                "impression_id": impression_id, "ts": time.time(), "merchant": merchant, "category": category,
                "product_id": product, "variant": variant, "theme": theme, "policy": choice.policy,
                "bucket_id": bucket_id, "hit": hit, "width": width, "height": height,
                "user_hash": user_hash(user_id), "context": features_json(features),
            })
            return Response(body, media_type=FORMATS[fmt], headers={
                "X-Impression-Id": impression_id, "X-Variant": variant, "X-Theme": theme, "X-Policy": choice.policy,
                "X-Bucket": bucket_id, "X-Cache": "hit" if hit else "miss", "Cache-Control": "private, no-store",
                "Vary": "Accept"})

        return _guard(run)

    @app.post("/events", summary="Record a click on an impression", status_code=200,
              responses={404: {"description": "unknown impression id"}, 400: {"description": "bad body"}})
    def events(event: ClickEvent):
        def run():
            row = state.impressions.get(event.impression_id)
            if row is None:
                raise NotFound(f"unknown impression id {event.impression_id!r} (never served, or not flushed yet "
                               f"by the replica that served it)")
            first = state.impressions.first_click(event.impression_id)
            learned = False
            if first and row["hit"] and row["variant"] in THEMED:
                doc = service.index(row["merchant"], row["category"])
                if doc is not None:
                    import json

                    features = json.loads(row["context"]) if isinstance(row["context"], str) else row["context"]
                    state.personalizer.record_click(
                        variant=row["variant"], merchant=row["merchant"], category=row["category"],
                        policy=row["policy"], theme=row["theme"], features=features, arms=doc["prompts"],
                        products=doc["products"])
                    learned = True
            return {"recorded": True, "first_click": first, "impression_id": event.impression_id,
                    "variant": row["variant"], "theme": row["theme"], "bandit_updated": learned}

        return _guard(run)

    from .preview import register_preview

    register_preview(app, state, _lookup, _guard, negotiate)
    return app


# ------------------------------------------------------------------------------- CLI
def app_from_env(config_path: Optional[str] = None, env: Optional[dict] = None, **kwargs) -> FastAPI:
    """The app over the resources of `bggen_assets.definitions` (BGGEN_* environment)."""
    from resources.bandit_store import BanditStore

    from ..definitions import build_resources

    res = build_resources(env)
    cfg_path = config_path or (env or os.environ).get("BGGEN_SERVING_CONFIG")
    config = ServingConfig.from_file(cfg_path) if cfg_path else ServingConfig()
    bandit_store = res.get("bandit_store") or BanditStore(metadata_db=res["metadata_db"])
    return create_app(res["store"], res["miss_queue"], bandit_store,
                      res["creative_config"], config, **kwargs)


def main(argv=None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--config", help="serving config YAML (variant shares, policies per merchant, alpha)")
    p.add_argument("--cache-mb", type=int, default=512, help="decoded canvas LRU size")
    p.add_argument("--response-cache-mb", type=int, default=0, help="encoded response LRU size (0: off)")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    app = app_from_env(a.config, cache_bytes=a.cache_mb * 2**20, response_cache_bytes=a.response_cache_mb * 2**20)
    uvicorn.run(app, host=a.host, port=a.port, workers=1, log_level=a.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
