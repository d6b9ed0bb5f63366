"""``POST /events``: impressions and clicks from an ad server (batches), or one click on an
impression this API served.

* A batch: a JSON array of events, or JSON lines (one event per line). Each event has its own
  ``id`` and ``ts`` (epoch seconds or ISO 8601) and a ``type``: ``impression`` (merchant,
  product, width, height, variant, theme, optional policy, propensity, user_id and ``context``
  {country, region, gender, device}) or ``click`` (``impression_id``: the impression's id).
  Taken event by event (:mod:`bggen_assets.serving.ingest`): the answer counts what was taken
  and lists every rejected event with its index and reason; duplicates (an id already stored, a
  second click on an impression) change nothing. 200 when all was stored, 202 when clicks were
  buffered because the DB is unreachable (applied when it is back), 400 when no event could be
  taken, 503 when impressions could not be stored (send the batch again: it is idempotent).
* One click, the original form: ``{"impression_id": "<X-Impression-Id>", "event": "click"}``;
  200 with the click's effect, 202 when buffered, 404 for an impression never served.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ...core.events import EventError, split_body
from ..creative import NotFound, note_db_error
from ..http import IMPRESSION_RE, BadRequest, error_response
from ..state import ServingState, serving_state

router = APIRouter(tags=["events"])
log = logging.getLogger("bggen.serving")

#: a batch body above this is answered 413 (about 5,000 events of 1 KB)
MAX_EVENTS_BODY = 8 * 2**20
_IMPRESSION = re.compile(IMPRESSION_RE)


def _one_click(state: ServingState, body: dict) -> JSONResponse:
    imp = body.get("impression_id")
    if not isinstance(imp, str) or not _IMPRESSION.match(imp):
        raise BadRequest(f"impression_id: must be 32 lowercase hex characters (the X-Impression-Id), got {imp!r}")
    if body.get("event", "click") != "click":
        raise BadRequest(f"event: only 'click' is accepted, got {body.get('event')!r}")
    extra = set(body) - {"impression_id", "event"}
    if extra:
        raise BadRequest(f"unknown fields {sorted(extra)}; a batch of events needs a 'type' per event")
    now = time.time()
    try:
        state.db.check()  # known down: buffered at once, no wait for a connect timeout
        out = state.ingest.apply_click(imp, now)
    except Exception as exc:  # the DB is unreachable: keep the click, apply it when it is back
        note_db_error(state.db, exc)
        log.warning("click on %s buffered: %s", imp, exc)
        state.clicks.add(imp, now)
        return JSONResponse({"recorded": True, "buffered": True, "impression_id": imp}, status_code=202)
    if out.status == "rejected":
        if out.row is None:
            raise NotFound(f"unknown impression id {imp!r} (never served, or not flushed yet by the replica "
                           f"that served it)")
        return error_response(422, out.reason)
    return JSONResponse({"recorded": True, "first_click": out.status == "recorded", "impression_id": imp,
                         "variant": out.row["variant"], "theme": out.row["theme"],
                         "bandit_updated": out.bandit_updated})


def _batch(state: ServingState, events: list) -> JSONResponse:
    if state.impressions.bandit_store is None:
        return error_response(503, "no event store configured (the API runs without a bandit store)")
    try:
        state.db.check()
        res = state.ingest.ingest(events, source="posted", buffer_click=state.clicks.add)
    except Exception as exc:
        note_db_error(state.db, exc)
        log.warning("event batch not taken: %s", exc)
        return error_response(503, "the event store is unreachable: the batch was not taken; send it again "
                                   "(events are idempotent by id)")
    body = res.as_dict()
    if res.rejected and res.received == len(res.rejected):
        return JSONResponse({"error": f"no event of the batch could be taken ({len(res.rejected)} rejected)", **body},
                            status_code=400)
    return JSONResponse(body, status_code=202 if res.buffered else 200)


@router.post("/events", summary="Impressions and clicks: a batch from an ad server, or one click",
             status_code=200,
             responses={202: {"description": "clicks buffered: the DB is unreachable, they are applied when it is back"},
                        400: {"description": "bad body, or no event of the batch could be taken"},
                        404: {"description": "unknown impression id (one click)"},
                        413: {"description": "body too large"},
                        422: {"description": "click outside the attribution window (one click)"},
                        503: {"description": "impressions could not be stored; send the batch again"}})
async def events(request: Request, state: Annotated[ServingState, Depends(serving_state)]):
    body = await request.body()
    if len(body) > MAX_EVENTS_BODY:
        return error_response(413, f"body larger than {MAX_EVENTS_BODY} bytes: send smaller batches")
    try:
        items = list(split_body(body))
    except (EventError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: {exc}") from None
    if not items:
        raise BadRequest("body: the batch is empty")
    if len(items) == 1 and isinstance(items[0], dict) and "type" not in items[0] and body.lstrip()[:1] == b"{":
        return await run_in_threadpool(_one_click, state, items[0])
    return await run_in_threadpool(_batch, state, items)
