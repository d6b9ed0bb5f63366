"""``POST /events``: a click on an impression; the first click of a themed hit rewards the bandit."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ..creative import NotFound
from ..http import IMPRESSION_RE
from ..personalize import THEMED
from ..state import ServingState, serving_state

router = APIRouter(tags=["events"])


class ClickEvent(BaseModel):
    impression_id: str = Field(..., pattern=IMPRESSION_RE, description="the X-Impression-Id of the creative")
    event: str = Field("click", pattern=r"^click$", description="only 'click' for now")


@router.post("/events", summary="Record a click on an impression", status_code=200,
             responses={404: {"description": "unknown impression id"}, 400: {"description": "bad body"}})
def events(event: ClickEvent, state: Annotated[ServingState, Depends(serving_state)]) -> dict:
    row = state.impressions.get(event.impression_id)
    if row is None:
        raise NotFound(f"unknown impression id {event.impression_id!r} (never served, or not flushed yet "
                       f"by the replica that served it)")
    first = state.impressions.first_click(event.impression_id)
    learned = False
    if first and row["hit"] and row["variant"] in THEMED:
        doc = state.service.index(row["merchant"], row["category"])
        if doc is not None:
            features = json.loads(row["context"]) if isinstance(row["context"], str) else row["context"]
            state.personalizer.record_click(
                variant=row["variant"], merchant=row["merchant"], category=row["category"],
                policy=row["policy"], theme=row["theme"], features=features, arms=doc.prompts,
                products=doc.products)
            learned = True
    return {"recorded": True, "first_click": first, "impression_id": event.impression_id,
            "variant": row["variant"], "theme": row["theme"], "bandit_updated": learned}
