"""Which serving misses earn a generation job (pure logic: counters and clocks, no DB).

A miss is answered with the fallback at once; whether its bucket is also queued for generation
is decided here, so that 400 anonymous requests with random sizes do not queue 400 jobs:

* a size (W x H, per merchant) is queued once it was requested at least ``min_requests`` times,
  or at once if the merchant declares it in its placements;
* per product, at most ``product_rate`` new buckets are queued per ``product_period_s`` (a token
  bucket; requests for a bucket already admitted do not spend tokens);
* per merchant, at most ``merchant_cap`` misses wait in the queue (checked where the queue is
  written, :meth:`MissGate.cap_allows`).

Everything not queued is still served (the fallback) and counted by reason in :attr:`MissGate.held`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = ["MissPolicyError", "MissPolicy", "MissGate", "QUEUED", "BELOW_THRESHOLD", "RATE_LIMITED", "MERCHANT_CAP"]

QUEUED = "queued"
BELOW_THRESHOLD = "below_threshold"
RATE_LIMITED = "rate_limited"
MERCHANT_CAP = "merchant_cap"


class MissPolicyError(ValueError):
    """A bad miss-policy setting."""


@dataclass(frozen=True)
class MissPolicy:
    min_requests: int = 3
    merchant_cap: int = 2000
    product_rate: int = 20
    product_period_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("min_requests", "merchant_cap", "product_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MissPolicyError(f"{name} must be an int >= 1, got {v!r}")
        if not (self.product_period_s > 0):
            raise MissPolicyError(f"product_period_s must be > 0, got {self.product_period_s!r}")


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def touch(self, key, default):
        v = self.get(key, default)
        self[key] = v
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)
        return v


class MissGate:
    """The request-time half of :class:`MissPolicy` (size threshold, product rate) and the counters.

    ``declared(merchant)`` gives the merchant's declared placement sizes ``{(w, h)}``. Not
    thread-safe on its own: the caller holds its lock."""

    def __init__(self, policy: MissPolicy, declared: Callable[[str], Iterable[tuple[int, int]]] = lambda m: (),
                 memory: int = 100_000):
        self.policy = policy
        self._declared = declared
        self._declared_cache: dict[str, frozenset] = {}
        self._sizes = _LRU(memory)      # (merchant, w, h) -> requests seen
        self._tokens = _LRU(memory)     # (merchant, product) -> (tokens, last refill time)
        self._admitted = _LRU(memory)   # (merchant, product, bucket) -> True
        self.held = {BELOW_THRESHOLD: 0, RATE_LIMITED: 0, MERCHANT_CAP: 0}
        self.queued = 0

    def declared(self, merchant: str) -> frozenset:
        d = self._declared_cache.get(merchant)
        if d is None:
            try:
                d = frozenset((int(w), int(h)) for w, h in self._declared(merchant))
            except Exception:  # no placements file / no entry for the merchant: nothing declared
                d = frozenset()
            self._declared_cache[merchant] = d
        return d

    def admit(self, merchant: str, product: str, bucket: str, width: int, height: int, now: float) -> str:
        """One miss request: :data:`QUEUED` or why not (also counted in :attr:`held`)."""
        seen = self._sizes.touch((merchant, width, height), 0) + 1
        self._sizes[(merchant, width, height)] = seen
        if seen < self.policy.min_requests and (width, height) not in self.declared(merchant):
            self.held[BELOW_THRESHOLD] += 1
            return BELOW_THRESHOLD
        key = (merchant, product, bucket)
        if key in self._admitted:
            self._admitted.touch(key, True)
            self.queued += 1
            return QUEUED
        p = self.policy
        tokens, last = self._tokens.touch((merchant, product), (float(p.product_rate), now))
        tokens = min(float(p.product_rate), tokens + (now - last) * p.product_rate / p.product_period_s)
        if tokens < 1.0:
            self._tokens[(merchant, product)] = (tokens, now)
            self.held[RATE_LIMITED] += 1
            return RATE_LIMITED
        self._tokens[(merchant, product)] = (tokens - 1.0, now)
        self._admitted.touch(key, True)
        self.queued += 1
        return QUEUED

    def cap_allows(self, waiting: int, new: int) -> int:
        """How many of ``new`` misses of a merchant may join ``waiting`` ones under the cap (the
        rest are counted as held)."""
        room = max(0, self.policy.merchant_cap - waiting)
        allowed = min(room, new)
        self.held[MERCHANT_CAP] += new - allowed
        return allowed
