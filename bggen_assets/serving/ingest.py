"""Events from an ad server: validated, deduplicated by id, stored, and taught to the bandit
exactly like the impressions and clicks this API serves itself.

Used by ``POST /events`` (:mod:`.routers.events`) and by the ``ad_events`` asset
(:mod:`bggen_assets.assets.ad_events`). One :class:`EventIngest` holds what both need: the
creative service (to find the product's category, themes and features in the serving index),
the personalizer (whose deltas go to the bandit state) and the bandit store (impressions,
clicks). Validation of one event is :func:`bggen_assets.core.events.parse_event`.

A batch is taken event by event: a bad event is rejected with its reason and the others are
kept; an impression or click whose id is already stored is a duplicate and changes nothing, so an
ad server may send a batch again after a timeout. Impressions are applied before clicks, so a
click may come in the same batch as its impression.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..core.events import ClickEvent, EventError, ImpressionEvent, attribution_problem, parse_event
from .creative import NotFound
from .personalize import POLICY_KINDS, THEMED, VARIANTS, Choice, build_features, features_json, user_hash

log = logging.getLogger("bggen.serving")


@dataclass
class BatchResult:
    """What became of a batch: counts, and each rejected event with its position and reason."""

    impressions: int = 0
    clicks: int = 0
    duplicates: int = 0
    buffered: int = 0
    rejected: list[dict] = field(default_factory=list)

    @property
    def received(self) -> int:
        return self.impressions + self.clicks + self.duplicates + self.buffered + len(self.rejected)

    def as_dict(self) -> dict:
        return {"received": self.received, "impressions": self.impressions, "clicks": self.clicks,
                "duplicates": self.duplicates, "buffered": self.buffered, "rejected": self.rejected}


@dataclass(frozen=True)
class ClickOutcome:
    """One click applied to the store: ``status`` is ``recorded`` (its impression's first click),
    ``duplicate`` (the impression was clicked already), or ``rejected`` with a ``reason``."""

    status: str
    row: Optional[dict] = None
    reason: str = ""
    bandit_updated: bool = False


class EventIngest:
    """Impressions and clicks into the bandit store and the policies (see the module doc)."""

    def __init__(self, service, personalizer, bandit_store, recent=None, window_s: Optional[float] = None):
        self.service = service
        self.personalizer = personalizer
        self.bandit_store = bandit_store
        self.recent = recent  # ImpressionLog: impressions served but maybe not flushed yet
        self.window_s = window_s or personalizer.config.attribution_window_s

    # -- impressions -----------------------------------------------------------------------------
    def _impression_row(self, ev: ImpressionEvent, source: str) -> tuple[dict, Any, str, Any]:
        try:
            category, doc = self.service.find_product(ev.merchant, ev.product)
        except NotFound as exc:
            raise EventError(f"product: {exc.args[0]}") from None
        if ev.variant in THEMED and ev.theme not in doc.prompts:
            raise EventError(f"theme: {ev.theme!r} is not a theme of {ev.merchant}/{category} "
                             f"(themes: {', '.join(doc.prompts)})")
        info = doc.products[ev.product]
        ctx = ev.context
        features = build_features(country=ctx.get("country"), region=ctx.get("region"), gender=ctx.get("gender"),
                                  device=ctx.get("device"), subcategory=info.subcategory, colour=info.colour,
                                  width=ev.width, height=ev.height)
        if ev.variant in THEMED:
            policy = ev.policy or ("random" if ev.variant == "random" else
                                   self.personalizer.config.policy_for(ev.merchant))
        else:
            policy = "none"
        row = {"impression_id": ev.impression_id, "ts": ev.ts, "merchant": ev.merchant, "category": category,
               "product_id": ev.product, "variant": ev.variant, "theme": ev.theme if ev.variant in THEMED else "none",
               "policy": policy, "bucket_id": "external", "hit": True, "width": ev.width, "height": ev.height,
               "user_hash": user_hash(ev.user_id), "context": features_json(features),
               "propensity": ev.propensity, "source": source}
        return row, doc, category, features

    def _teach_impression(self, row: dict, doc, category: str, features: dict) -> None:
        if row["variant"] not in THEMED:
            return
        slot = self.personalizer.slot(row["merchant"], category, row["policy"], doc.prompts, doc.products)
        choice = Choice(row["variant"], row["theme"], row["policy"], slot.schema.encode(features), row["propensity"])
        self.personalizer.record_impression(choice, row["merchant"], category, doc.prompts, doc.products, True)

    # -- clicks ----------------------------------------------------------------------------------
    def find_impression(self, impression_id: str) -> Optional[dict]:
        if self.recent is not None:
            return self.recent.get(impression_id)
        return self.bandit_store.get_impression(impression_id)

    def apply_click(self, impression_id: str, ts: float, row: Optional[dict] = None) -> ClickOutcome:
        """Attribute one click and, if it is its impression's first, teach the bandit. Raises what
        the DB raises (the caller buffers the click and tries again later)."""
        row = row if row is not None else self.find_impression(impression_id)
        if row is None:
            return ClickOutcome("rejected", reason="click without impression: no impression with this id "
                                                   "(never served or sent, or not stored yet)")
        problem = attribution_problem(ts, float(row["ts"]), self.window_s)
        if problem:
            return ClickOutcome("rejected", row, problem)
        if not self.bandit_store.record_click(impression_id, ts):
            return ClickOutcome("duplicate", row, "the impression was clicked already")
        learned = False
        if row["hit"] and row["variant"] in THEMED:
            doc = self.service.index(row["merchant"], row["category"])
            if doc is not None:
                features = row["context"]
                if isinstance(features, str):
                    features = json.loads(features)
                self.personalizer.record_click(
                    variant=row["variant"], merchant=row["merchant"], category=row["category"],
                    policy=row["policy"], theme=row["theme"], features=features, arms=doc.prompts,
                    products=doc.products)
                learned = True
        return ClickOutcome("recorded", row, bandit_updated=learned)

    # -- batches ---------------------------------------------------------------------------------
    def ingest(self, raw_events: Iterable[Any], source: str = "posted", now: Optional[float] = None,
               buffer_click=None) -> BatchResult:
        """Take a batch (see the module doc). ``buffer_click(impression_id, ts)`` keeps a click
        the DB could not take (answered as buffered); without it a DB error propagates."""
        now = time.time() if now is None else now
        res = BatchResult()
        imps: list[tuple[int, ImpressionEvent]] = []
        clicks: list[tuple[int, ClickEvent]] = []
        for i, raw in enumerate(raw_events):
            try:
                if isinstance(raw, EventError):
                    raise raw
                ev = parse_event(raw, now, VARIANTS, POLICY_KINDS)
            except EventError as exc:
                rid = raw.get("id") if isinstance(raw, dict) else None
                res.rejected.append({"index": i, "id": rid if isinstance(rid, str) else None, "reason": str(exc)})
                continue
            (imps if isinstance(ev, ImpressionEvent) else clicks).append((i, ev))

        rows, prepared, seen = [], [], set()
        for i, ev in imps:
            if ev.impression_id in seen:
                res.duplicates += 1
                continue
            try:
                row, doc, category, features = self._impression_row(ev, source)
            except EventError as exc:
                res.rejected.append({"index": i, "id": ev.event_id, "reason": str(exc)})
                continue
            seen.add(ev.impression_id)
            rows.append(row)
            prepared.append((row, doc, category, features))
        batch_rows = {r["impression_id"]: r for r in rows}
        for (row, doc, category, features), new in zip(prepared, self.bandit_store.insert_new_impressions(rows)):
            if not new:
                res.duplicates += 1
                continue
            res.impressions += 1
            self._teach_impression(row, doc, category, features)

        clicked = set()
        for i, ev in clicks:
            if ev.impression_id in clicked:
                res.duplicates += 1
                continue
            clicked.add(ev.impression_id)
            try:
                out = self.apply_click(ev.impression_id, ev.ts, batch_rows.get(ev.impression_id))
            except Exception as exc:  # the DB is down: keep the click, apply it when the DB is back
                if buffer_click is None:
                    raise
                log.warning("click %s buffered: %s", ev.event_id, exc)
                buffer_click(ev.impression_id, ev.ts)
                res.buffered += 1
                continue
            if out.status == "recorded":
                res.clicks += 1
            elif out.status == "duplicate":
                res.duplicates += 1
            else:
                res.rejected.append({"index": i, "id": ev.event_id, "reason": out.reason})
        res.rejected.sort(key=lambda r: r["index"])
        return res
