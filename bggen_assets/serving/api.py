"""The serving API (FastAPI on uvicorn): creatives with personalised themes, click feedback, preview.

    GET  /creative   merchant, product, width, height [, fill, anchor] [, country, region, gender,
                     device, user_id] -> image bytes (JPEG or WebP by Accept); headers
                     X-Impression-Id, X-Variant, X-Theme, X-Policy, X-Bucket, X-Cache (hit|miss)
    POST /events     {"impression_id": ..., "event": "click"} -> records the click (first one counts);
                     or a batch of impressions and clicks (JSON array / JSON lines) from an ad server
    GET  /reports/ab the A/B report's numbers (windows, merchant / category / placement breakdowns)
    GET  /health     status, cache and queue figures; /health/live, /health/ready (503 while degraded)
    GET  /metrics    Prometheus metrics (requests by route and status, latency, hits, misses, caches, store)
    GET  /preview    HTML grid of a product's creatives: placements x themes, hits shown, misses marked
    GET  /preview/image   one preview cell (no impression, no miss recorded)
    GET  /docs, /openapi.json   FastAPI's own

This module assembles the app: the shared state (:mod:`.state`), the routers (:mod:`.routers`),
the error handlers and limits (:mod:`.http`). The request path never touches the DB: impressions
and misses are buffered and written in batches by a background thread, which also publishes the
bandit deltas and loads the merged state.

    bggen-serve [--host 127.0.0.1] [--port 8080] [--config serving.yaml]
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI

from resources.miss_queue import DbMissQueue

from .creative import JPEG_QUALITY, CreativeService, keep_pillow_blocks
from .http import MAX_QUERY, QueryLimit, install_error_handlers
from .metrics import Metrics, RequestMetrics
from .personalize import Personalizer, ServingConfig
from .routers import ROUTERS
from .state import BufferedMissQueue, Flusher, ImpressionLog, ServingState, db_health

log = logging.getLogger("bggen.serving")


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
    def declared(merchant: str):
        if creative_config is None:
            return ()
        return [(p.width, p.height) for p in creative_config.placements(merchant)]

    db = db_health(bandit_store)
    misses = BufferedMissQueue(miss_queue, policy=serving_config.miss_policy(), declared=declared)
    if isinstance(miss_queue, DbMissQueue):  # its writes wait for the DB: skipped while it is down
        misses.health = db
    service.miss_queue = misses  # the service records misses through the buffer: never blocks
    state = ServingState(service, Personalizer(serving_config, bandit_store, health=db), misses,
                         ImpressionLog(bandit_store, health=db), creative_config, response_cache_bytes, db=db)

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
            state.close()

    app = FastAPI(title="bggen serving API", version="1.0",
                  description="Ad creatives with generated backgrounds; LinUCB theme personalisation; A/B logging.",
                  lifespan=lifespan)
    app.state.serving = state
    app.state.metrics = Metrics(state)
    app.add_middleware(QueryLimit, max_bytes=MAX_QUERY)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)  # outside QueryLimit: its 414s are counted
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


# ------------------------------------------------------------------------------- CLI
def app_from_env(config_path: Optional[str] = None, env: Optional[dict] = None, **kwargs) -> FastAPI:
    """The app over the deployment's resources (BGGEN_* environment, see :mod:`bggen_assets.deployment`),
    without the Dagster definitions (assets, sensors, jobs) that the API does not use. No Dagster
    run initialises these resources, so their secrets are read from the environment now."""
    from resources.bandit_store import BanditStore

    from ..deployment import build_resources

    res = build_resources(env, read_secrets_now=True)
    cfg_path = config_path or (os.environ if env is None else env).get("BGGEN_SERVING_CONFIG")
    config = ServingConfig.from_file(cfg_path) if cfg_path else ServingConfig()
    if config.click_journal is None:  # a deployed API never keeps unapplied clicks in memory only
        config.click_journal = (os.environ if env is None else env).get(
            "BGGEN_CLICK_JOURNAL", "bggen_data/serving/clicks.journal")
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
