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

    bggen-serve [--host 127.0.0.1] [--port 8080] [--workers 1] [--config serving.yaml]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI

from resources.miss_queue import DbMissQueue

from .creative import CREATIVE_CACHE_BYTES, JPEG_QUALITY, CreativeService, keep_pillow_blocks
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
               background: bool = True, prefetch: bool = True,
               creative_cache_bytes: int = CREATIVE_CACHE_BYTES) -> FastAPI:
    """The API over an object store (serving indexes, images), a miss queue and (optionally) a
    :class:`resources.bandit_store.BanditStore` for bandit state, impressions and clicks.

    ``creative_cache_bytes`` bounds the LRU of encoded hits (0: off; see :class:`CreativeService`).
    ``response_cache_bytes`` > 0 also keeps encoded responses of deterministic creatives (same
    image, placement, format -> same bytes) in an LRU. ``background=False`` leaves flushing to
    the caller (``app.state.serving.flush()``), for tests. ``prefetch`` decodes the canvases of each
    newly read index version in the background (see :class:`CreativeService`).
    """
    serving_config = serving_config or ServingConfig()
    keep_pillow_blocks()
    service = service or CreativeService(store, miss_queue, creative_config, cache_bytes=cache_bytes,
                                         index_ttl_s=index_ttl_s, jpeg_quality=jpeg_quality, prefetch=prefetch,
                                         creative_cache_bytes=creative_cache_bytes)
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
    # The API's own DB client: reads and writes bounded, so a DB that hangs (rather than refusing)
    # is seen as down by the flusher after API_DB_IO_TIMEOUT_S instead of blocking it for good.
    db = res["metadata_db"]
    if not db.io_timeout:
        db = db.model_copy(update={"io_timeout": API_DB_IO_TIMEOUT_S})
    miss_queue = DbMissQueue(metadata_db=db) if isinstance(res["miss_queue"], DbMissQueue) else res["miss_queue"]
    bandit_store = res.get("bandit_store")
    bandit_store = bandit_store.model_copy(update={"metadata_db": db}) if bandit_store else BanditStore(metadata_db=db)
    return create_app(res["store"], miss_queue, bandit_store,
                      res["creative_config"], config, **kwargs)


#: seconds a DB read or write of the API may wait (MetadataDB.io_timeout) unless configured
API_DB_IO_TIMEOUT_S = 5

#: the options of `bggen-serve --workers N` for its worker processes (JSON; each builds its own app)
WORKER_ARGS_ENV = "BGGEN_SERVE_WORKER_ARGS"
_journal_locks: list[int] = []  # held for the life of the process


def claim_journal(base: str, slots: int = 256) -> str:
    """A click journal of this process's own, for one of several workers: the first of
    ``base.0``, ``base.1``, ... whose lock file it can lock (flock, released when the process dies).
    A worker started later takes a free slot and replays what that slot's last owner left; two
    live workers never share one (a journal is renamed and rewritten by its owner)."""
    import fcntl

    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        path = f"{base}.{i}"
        fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _journal_locks.append(fd)
        return path
    raise RuntimeError(f"no free click journal slot among {base}.0 .. {base}.{slots - 1}: {slots} live workers")


def worker_app() -> FastAPI:
    """uvicorn's app factory for ``--workers N``: every worker process builds its own app (caches,
    buffers, flusher, click journal) over the same stores and DB, as replicas behind one index do."""
    args = json.loads(os.environ[WORKER_ARGS_ENV])
    config = args.pop("config")
    journal = os.environ.get("BGGEN_CLICK_JOURNAL", "bggen_data/serving/clicks.journal")
    return app_from_env(config, env={**os.environ, "BGGEN_CLICK_JOURNAL": claim_journal(journal)}, **args)


def main(argv=None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (uvicorn's); each holds its own caches, so memory grows with N")
    p.add_argument("--config", help="serving config YAML (variant shares, policies per merchant, alpha)")
    p.add_argument("--cache-mb", type=int, default=512, help="decoded canvas LRU size")
    p.add_argument("--creative-cache-mb", type=int, default=CREATIVE_CACHE_BYTES // 2**20,
                   help="encoded hit LRU size (0: off)")
    p.add_argument("--response-cache-mb", type=int, default=0, help="encoded control/positioned LRU size (0: off)")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers must be at least 1, got {a.workers}")
    kwargs = {"cache_bytes": a.cache_mb * 2**20, "creative_cache_bytes": a.creative_cache_mb * 2**20,
              "response_cache_bytes": a.response_cache_mb * 2**20}
    if a.workers == 1:
        app = app_from_env(a.config, **kwargs)
        uvicorn.run(app, host=a.host, port=a.port, workers=1, log_level=a.log_level, access_log=False)
        return 0
    os.environ[WORKER_ARGS_ENV] = json.dumps({"config": a.config, **kwargs})
    uvicorn.run("bggen_assets.serving.api:worker_app", factory=True, host=a.host, port=a.port, workers=a.workers,
                log_level=a.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
