"""``GET /health``: liveness and the serving figures (served, cache, buffers, policies, the store's
health); ``/health/live`` (the process answers: always 200) and ``/health/ready`` (503 while the
object store or the metadata DB is down and serving is degraded: a load balancer may prefer a healthy replica, though
this one still answers every request, from memory and with fallbacks)."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..state import ServingState, serving_state

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness and serving figures")
def health(state: Annotated[ServingState, Depends(serving_state)]) -> dict:
    service = state.service
    return {
        "status": "degraded" if state.degraded else "ok",
        "uptime_s": round(time.time() - state.started, 1),
        "served": dict(state.served),
        "cache_bytes": service.cache.size,
        "creative_cache": ({"bytes": service.creatives.size, "entries": len(service.creatives),
                            "hits": service.creatives.hits, "misses": service.creatives.misses}
                           if service.creatives is not None else None),
        "prefetched_canvases": service.prefetched,
        "prerendered_creatives": service.prerendered,
        "prefetching": service.prefetching > 0,
        "pending_impressions": len(state.impressions),
        "pending_misses": len(state.misses),
        "misses": state.misses.stats(),
        "buffered_clicks": len(state.clicks),
        "policies": state.personalizer.snapshot(),
        "store": service.health.snapshot(),
        "db": state.db.snapshot(),
        "fallbacks": service.fallbacks,
        "placeholders": service.placeholders,
    }


@router.get("/health/live", summary="Liveness: the process answers")
def live() -> dict:
    return {"status": "ok"}


@router.get("/health/ready", summary="Readiness: 503 while the object store or the metadata DB is down (serving degraded)",
            responses={503: {"description": "degraded: serving from memory, the store and DB are retried"}})
def ready(state: Annotated[ServingState, Depends(serving_state)]):
    if state.degraded:
        return JSONResponse({"status": "degraded", "store": state.service.health.snapshot(), "db": state.db.snapshot()},
                            status_code=503)
    return {"status": "ok"}
