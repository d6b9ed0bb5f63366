"""Ad-server events (impressions and clicks) as typed values: parsing, validation, attribution.

An ad server that renders bggen's creatives in its own templates sends its own log: impressions
(which theme of which product it showed, to whom, in which placement, with which probability)
and clicks (on an impression, by the impression's id).  This module turns one raw event (a JSON
object, from ``POST /events`` or from a log file the ``ad_events`` asset imports) into an
:class:`ImpressionEvent` or a :class:`ClickEvent`, or an :class:`EventError` whose message says
what is wrong with it; it knows nothing of HTTP, databases or files.

Ids: an event id is 1-128 printable characters chosen by the ad server.  The impressions table
keys rows by 32 hex characters (the ids this API issues): an external id of that form is kept as
is, any other is mapped to ``sha256("bggen-event", id)[:32]`` (:func:`impression_key`) so that a
click names its impression by the same id the ad server used.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

__all__ = ["EventError", "ImpressionEvent", "ClickEvent", "Event", "parse_event", "split_body",
           "impression_key", "attribution_problem", "flat_record", "CONTEXT_FIELDS",
           "DEFAULT_ATTRIBUTION_WINDOW_S"]

DEFAULT_ATTRIBUTION_WINDOW_S = 24 * 3600.0
#: a click may be stamped this much before its impression (clocks of two machines) and still count
CLOCK_SKEW_S = 300.0
#: the user context an impression may carry (the product and placement features come from the
#: product and the size)
CONTEXT_FIELDS = ("country", "region", "gender", "device")
EVENT_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}$")
MIN_SIDE, MAX_SIDE = 8, 4096


class EventError(ValueError):
    """An event that cannot be taken: the message names the field and what is wrong."""


@dataclass(frozen=True)
class ImpressionEvent:
    event_id: str
    ts: float
    merchant: str
    product: str
    width: int
    height: int
    theme: str
    variant: str
    policy: Optional[str] = None
    propensity: Optional[float] = None
    user_id: Optional[str] = None
    context: Mapping[str, str] = field(default_factory=dict)

    @property
    def impression_id(self) -> str:
        return impression_key(self.event_id)


@dataclass(frozen=True)
class ClickEvent:
    event_id: str
    ts: float
    impression: str  # the impression's event id, as the ad server sent it

    @property
    def impression_id(self) -> str:
        return impression_key(self.impression)


Event = Union[ImpressionEvent, ClickEvent]


def impression_key(event_id: str) -> str:
    """The impressions-table key of an event id (32 hex kept, anything else hashed)."""
    if HEX32_RE.match(event_id):
        return event_id
    return hashlib.sha256(f"bggen-event\x00{event_id}".encode()).hexdigest()[:32]


def _str(raw: Mapping, name: str, pattern: re.Pattern, what: str, required: bool = True) -> Optional[str]:
    v = raw.get(name)
    if v is None:
        if required:
            raise EventError(f"{name}: missing")
        return None
    if not isinstance(v, str) or not pattern.match(v):
        raise EventError(f"{name}: {str(v)[:80]!r} is not {what}")
    return v


def parse_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO 8601 string (``Z`` or an offset; naive means UTC)."""
    if isinstance(value, bool):
        raise EventError(f"ts: {value!r} is not a time")
    if isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise EventError(f"ts: {value[:64]!r} is neither epoch seconds nor ISO 8601") from None
        t = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    else:
        raise EventError("ts: missing" if value is None else f"ts: {value!r} is not a time")
    if not math.isfinite(t) or t <= 0:
        raise EventError(f"ts: {value!r} is not a time after 1970")
    return t


def _side(raw: Mapping, name: str) -> int:
    v = raw.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not MIN_SIDE <= v <= MAX_SIDE:
        raise EventError(f"{name}: must be an integer in {MIN_SIDE}..{MAX_SIDE}, got {v!r}")
    return v


def parse_event(raw: Any, now: float, variants: Sequence[str], policies: Sequence[str]) -> Event:
    """One raw event as a typed value (else :class:`EventError`).  ``now`` bounds the time
    (a time more than :data:`CLOCK_SKEW_S` in the future is refused)."""
    if not isinstance(raw, Mapping):
        raise EventError(f"an event must be a JSON object, got {type(raw).__name__}")
    kind = raw.get("type")
    event_id = _str(raw, "id", EVENT_ID_RE, "1-128 printable ASCII characters")
    ts = parse_time(raw.get("ts"))
    if ts > now + CLOCK_SKEW_S:
        raise EventError(f"ts: {ts:.0f} is {ts - now:.0f} s in the future")
    if kind == "click":
        imp = _str(raw, "impression_id", EVENT_ID_RE, "an impression's event id")
        return ClickEvent(event_id, ts, imp)
    if kind != "impression":
        raise EventError(f"type: must be 'impression' or 'click', got {str(kind)[:40]!r}")
    merchant = _str(raw, "merchant", NAME_RE, "a merchant name (lowercase letters, digits, '_', '-')")
    product = _str(raw, "product", PRODUCT_RE, "a product id")
    width, height = _side(raw, "width"), _side(raw, "height")
    if width * height > MAX_SIDE * 2048:
        raise EventError(f"width x height: {width}x{height} is more than {MAX_SIDE * 2048} pixels")
    variant = raw.get("variant")
    if variant not in variants:
        raise EventError(f"variant: must be one of {', '.join(variants)}, got {str(variant)[:40]!r}")
    theme = _str(raw, "theme", LABEL_RE, "a theme id", required=variant in ("random", "bandit")) or "none"
    policy = raw.get("policy")
    if policy is not None and policy not in policies:
        raise EventError(f"policy: must be one of {', '.join(policies)}, got {str(policy)[:40]!r}")
    p = raw.get("propensity")
    if p is not None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < float(p) <= 1.0):
            raise EventError(f"propensity: must be a probability in (0, 1], got {p!r}")
        p = float(p)
    user_id = _str(raw, "user_id", EVENT_ID_RE, "1-128 printable ASCII characters", required=False)
    ctx_raw = raw.get("context") or {}
    if not isinstance(ctx_raw, Mapping):
        raise EventError("context: must be an object of user features")
    context = {}
    for k, v in ctx_raw.items():
        if k not in CONTEXT_FIELDS:
            raise EventError(f"context.{str(k)[:40]}: unknown feature; known: {', '.join(CONTEXT_FIELDS)}")
        if v is None:
            continue
        if not isinstance(v, str) or not LABEL_RE.match(v):
            raise EventError(f"context.{k}: {str(v)[:40]!r} is not a label")
        context[k] = v
    if "country" in context and not re.fullmatch(r"[A-Za-z]{2}", context["country"]):
        raise EventError(f"context.country: {context['country']!r} is not ISO 3166-1 alpha-2")
    return ImpressionEvent(event_id, ts, merchant, product, width, height, theme, variant, policy, p,
                           user_id, context)


def split_body(body: bytes) -> Iterator[Any]:
    """The raw events of a request body: a JSON array, one JSON object, or JSON lines (one object
    per line; blank lines skipped).  A line that is not JSON is yielded as an :class:`EventError`,
    so the other lines are still taken; a body that is none of these raises :class:`EventError`."""
    text = body.decode("utf-8", errors="strict") if isinstance(body, (bytes, bytearray)) else str(body)
    stripped = text.strip()
    if not stripped:
        raise EventError("the body is empty: send a JSON array or JSON lines of events")
    try:
        doc = json.loads(stripped)
    except json.JSONDecodeError:
        doc = None
        if "\n" not in stripped:
            raise EventError("the body is neither JSON nor JSON lines") from None
    if doc is not None:
        if isinstance(doc, list):
            yield from doc
        else:
            yield doc
        return
    for n, line in enumerate(stripped.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            yield EventError(f"line {n}: not JSON ({exc.msg})")


def attribution_problem(click_ts: float, impression_ts: float, window_s: float) -> Optional[str]:
    """Why a click cannot be attributed to its impression (None when it can): more than
    ``window_s`` after it, or before it by more than the allowed clock skew."""
    dt = click_ts - impression_ts
    if dt > window_s:
        return f"late click: {dt / 3600:.1f} h after its impression, beyond the {window_s / 3600:g} h attribution window"
    if dt < -CLOCK_SKEW_S:
        return f"click {-dt:.0f} s before its impression"
    return None


_INT_FIELDS = ("width", "height")
_FLOAT_FIELDS = ("propensity",)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def flat_record(rec: Mapping[str, Any]) -> dict:
    """A row of a table (CSV, Parquet) as a raw event: blank cells dropped, ``context_<f>`` or
    ``context.<f>`` columns gathered into ``context``, numbers given as text (CSV) or numpy
    scalars (Parquet) turned into Python numbers where the event has numbers. Values that do not
    convert are left as they are, for :func:`parse_event` to reject with its reason."""
    out: dict[str, Any] = {}
    ctx: dict[str, Any] = {}
    for k, v in rec.items():
        if _blank(v):
            continue
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()  # numpy scalar -> Python
        k = str(k)
        if k.startswith(("context_", "context.")):
            ctx[k[8:]] = v
            continue
        if k == "context" and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        if isinstance(v, str):
            s = v.strip()
            try:
                if k in _INT_FIELDS and re.fullmatch(r"[+-]?\d+", s):
                    v = int(s)
                elif k in _FLOAT_FIELDS or (k == "ts" and re.fullmatch(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?", s)):
                    v = float(s)
            except ValueError:
                pass
        elif k in _INT_FIELDS and isinstance(v, float) and v.is_integer():
            v = int(v)  # a Parquet column with blanks is float
        out[k] = v
    if ctx:
        out["context"] = {**(out.get("context") or {}), **ctx} if isinstance(out.get("context", {}), Mapping) else ctx
    return out
