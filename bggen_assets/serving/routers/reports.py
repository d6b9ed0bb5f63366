"""``GET /reports/ab``: the A/B report's numbers as JSON (what the ``ab_report`` asset last wrote)."""
from __future__ import annotations

import json
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from ...core.store import ObjectNotFound
from ..creative import NotFound
from ..state import ServingState, serving_state

router = APIRouter(tags=["reports"])
AB_REPORT_KEY = "reports/ab/latest.json"


@router.get("/reports/ab", summary="The A/B report: CTR and uplift per window, merchant, category, placement size",
            responses={404: {"description": "no report materialized yet"}})
async def ab_report(state: Annotated[ServingState, Depends(serving_state)],
                    window: Optional[str] = Query(None, max_length=32, description="1d, 7d, 28d or a date range"),
                    dimension: Optional[str] = Query(None, pattern=r"^(all|merchant|category|placement)$"),
                    group: Optional[str] = Query(None, max_length=160)) -> dict:
    try:
        body = await run_in_threadpool(state.service.store.get_bytes, AB_REPORT_KEY)
    except ObjectNotFound:
        raise NotFound("no A/B report yet: materialize the ab_report asset (it runs daily)") from None
    doc = json.loads(body)
    rows = [r for r in doc["rows"] if (window is None or r["window"] == window)
            and (dimension is None or r["dimension"] == dimension) and (group is None or r["group"] == group)]
    return {**{k: v for k, v in doc.items() if k != "rows"}, "rows": rows}
