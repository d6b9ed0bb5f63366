"""``GET /health``: liveness, and the serving figures (served, cache, buffers, policies)."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from ..state import ServingState, serving_state

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness and serving figures")
def health(state: Annotated[ServingState, Depends(serving_state)]) -> dict:
    service = state.service
    return {
        "status": "ok",
        "uptime_s": round(time.time() - state.started, 1),
        "served": dict(state.served),
        "cache_bytes": service.cache.size,
        "prefetched_canvases": service.prefetched,
        "prefetching": service.prefetching > 0,
        "pending_impressions": len(state.impressions),
        "pending_misses": len(state.misses),
        "misses": state.misses.stats(),
        "buffered_clicks": len(state.clicks),
        "policies": state.personalizer.snapshot(),
    }
