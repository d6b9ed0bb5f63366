"""Theme personalisation and A/B assignment for the serving API.

* :func:`assign_variant`: a user id hashed (sha256 with a salt) into the configured variant shares:
  ``control`` (the product photo as is), ``positioned`` (the product positioned on a plain
  background), ``random`` (generated background, theme drawn uniformly), ``bandit`` (generated
  background, theme chosen by the merchant's policy). Deterministic: a user stays in one variant.
* :func:`build_features`: the context of an impression: user (country, region, gender, device),
  product (subcategory, colour), placement (aspect and size class).
* :class:`Personalizer`: one policy per (merchant, category, policy kind); arms = the category's
  prompts. An impression updates the policy at once with reward 0 (``A += x x^T``: the exploration
  bonus shrinks immediately); a click later adds ``b += x`` (the policy's ``add_reward``). Since A
  does not depend on the reward and b only on ``r x``, the sums equal those of one update with the
  final reward. Every ``flush_interval_s`` the policy's ``take_deltas`` go to the DB
  (:class:`resources.bandit_store.BanditStore`) and the merged global state comes back
  (``load_state``), so replicas learn from each other exactly.

Only hits teach the bandit: on a miss the user saw the fallback, not the theme.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..core.events import DEFAULT_ATTRIBUTION_WINDOW_S
from ..core.miss_policy import MissPolicy
from ..core.exploration import check_epsilon, draw_mixed
from ..core.bandit import (
    ASPECT_CLASSES,
    DEFAULT_COLOURS,
    DEFAULT_COUNTRIES,
    SIZE_CLASSES,
    ContextSchema,
    Policy,
    aspect_class,
    coordinate_map,
    embed_components,
    extend_schema,
    make_policy,
    merge_states,
    size_class,
    sum_deltas,
)
from .creative import db_down, note_db_error

VARIANTS = ("control", "positioned", "random", "bandit")
#: variants whose theme comes from a policy (the others show no generated background)
THEMED = ("random", "bandit")
POLICY_KINDS = ("linucb", "ucb1", "random")
REGIONS = ("na", "latam", "eu", "mea", "apac")
COUNTRY_REGION = {
    "us": "na", "ca": "na", "mx": "latam", "br": "latam", "ar": "latam", "cl": "latam", "co": "latam",
    "gb": "eu", "de": "eu", "fr": "eu", "es": "eu", "it": "eu", "nl": "eu", "be": "eu", "pl": "eu",
    "se": "eu", "ch": "eu", "at": "eu", "ie": "eu", "pt": "eu", "dk": "eu", "no": "eu", "fi": "eu",
    "ae": "mea", "sa": "mea", "za": "mea", "eg": "mea", "tr": "mea", "il": "mea",
    "jp": "apac", "cn": "apac", "kr": "apac", "in": "apac", "au": "apac", "sg": "apac", "id": "apac",
}
GENDERS = ("female", "male")
DEVICES = ("mobile", "desktop", "tablet")


class ServingConfigError(ValueError):
    """A bad serving configuration (variant shares, policy kinds, alpha)."""


@dataclass
class ServingConfig:
    """How the API personalises and splits traffic. Loaded from YAML/JSON with :meth:`from_file`.

    ``variant_shares``: variant -> weight (normalised; a variant may be left out or set to 0).
    ``policies``: merchant -> policy kind of the ``bandit`` variant (``default_policy`` otherwise).
    """

    variant_shares: dict[str, float] = field(default_factory=lambda: {v: 0.25 for v in VARIANTS})
    ab_salt: str = "bggen-ab-1"
    default_policy: str = "linucb"
    policies: dict[str, str] = field(default_factory=dict)
    alpha: float = 1.0
    ridge: float = 1.0
    ucb_c: float = math.sqrt(2.0)
    #: the bandit also learns from the random variant's hits (uniform exploration data)
    learn_from_random: bool = True
    flush_interval_s: float = 1.0
    seed: Optional[int] = None
    #: ε-mixing of the bandit variant's policy: with probability ε a uniformly random theme, so
    #: every theme keeps a propensity >= ε/K and the logs support off-policy evaluation
    #: (docs/bandit.md); 0 is the greedy policy
    epsilon: float = 0.05
    #: a click counts for its impression only within this many seconds of it
    attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S
    #: where buffered clicks are spilled when the buffer is full or the process stops while the
    #: DB is unreachable (JSON lines; read back at start); None: kept in memory only
    click_journal: Optional[str] = None
    max_buffered_clicks: int = 100_000
    #: which misses earn a generation job (bggen_assets/core/miss_policy.py): a size seen this
    #: many times (or declared in the merchant's placements), at most this many waiting misses per
    #: merchant, at most miss_product_rate new buckets per product per miss_product_period_s
    miss_min_requests: int = 3
    miss_merchant_cap: int = 2000
    miss_product_rate: int = 20
    miss_product_period_s: float = 3600.0

    def miss_policy(self) -> MissPolicy:
        return MissPolicy(self.miss_min_requests, self.miss_merchant_cap, self.miss_product_rate,
                          self.miss_product_period_s)

    def __post_init__(self) -> None:
        unknown = set(self.variant_shares) - set(VARIANTS)
        if unknown:
            raise ServingConfigError(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        for v, s in self.variant_shares.items():
            if not (isinstance(s, (int, float)) and math.isfinite(s) and s >= 0):
                raise ServingConfigError(f"variant share of {v!r} must be a number >= 0, got {s!r}")
        total = float(sum(self.variant_shares.values()))
        if total <= 0:
            raise ServingConfigError("variant shares must not all be 0")
        self.variant_shares = {v: float(self.variant_shares.get(v, 0.0)) / total for v in VARIANTS}
        for m, kind in [("default", self.default_policy), *self.policies.items()]:
            if kind not in POLICY_KINDS:
                raise ServingConfigError(f"policy of {m!r} must be one of {', '.join(POLICY_KINDS)}, got {kind!r}")
        if not (math.isfinite(float(self.alpha)) and self.alpha >= 0):
            raise ServingConfigError(f"alpha must be finite and >= 0, got {self.alpha!r}")
        if not (math.isfinite(float(self.ridge)) and self.ridge > 0):
            raise ServingConfigError(f"ridge must be finite and > 0, got {self.ridge!r}")
        try:
            self.epsilon = check_epsilon(self.epsilon)
        except ValueError as exc:
            raise ServingConfigError(str(exc)) from None
        if not (isinstance(self.attribution_window_s, (int, float)) and self.attribution_window_s > 0):
            raise ServingConfigError(f"attribution_window_s must be > 0, got {self.attribution_window_s!r}")
        try:
            self.miss_policy()
        except ValueError as exc:
            raise ServingConfigError(str(exc)) from None
        if not self.flush_interval_s > 0:
            raise ServingConfigError(f"flush_interval_s must be > 0, got {self.flush_interval_s!r}")
        cum, acc = [], 0.0
        for v in VARIANTS:
            acc += self.variant_shares[v]
            cum.append((acc, v))
        self._cumulative = cum

    def policy_for(self, merchant: str) -> str:
        return self.policies.get(merchant, self.default_policy)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "ServingConfig":
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ServingConfigError(f"unknown serving config keys {sorted(extra)}; known: {', '.join(sorted(known))}")
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | Path) -> "ServingConfig":
        import yaml

        text = Path(path).read_text()
        d = yaml.safe_load(text) or {}
        if not isinstance(d, dict):
            raise ServingConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_mapping(d)


def unit_hash(salt: str, key: str) -> float:
    """sha256(salt, key) mapped to [0, 1)."""
    h = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_variant(user_key: str, config: ServingConfig) -> str:
    """The variant of a user: deterministic, with the configured shares."""
    u = unit_hash(config.ab_salt, user_key)
    for acc, v in config._cumulative:
        if u < acc:
            return v
    return next(v for v in reversed(VARIANTS) if config.variant_shares[v] > 0)


def user_hash(user_id: Optional[str]) -> str:
    """What the impression log keeps of a user id (never the id itself)."""
    if not user_id:
        return ""
    return hashlib.sha256(f"bggen-user\x00{user_id}".encode()).hexdigest()[:16]


def device_from_user_agent(ua: Optional[str]) -> Optional[str]:
    if not ua:
        return None
    if "iPad" in ua or "Tablet" in ua:
        return "tablet"
    if "Mobi" in ua or "Android" in ua or "iPhone" in ua:
        return "mobile"
    return "desktop"


def build_features(*, country: Optional[str] = None, region: Optional[str] = None, gender: Optional[str] = None,
                   device: Optional[str] = None, subcategory: Optional[str] = None, colour: Optional[str] = None,
                   width: int, height: int) -> dict[str, str]:
    """The context of one impression as ``{feature: value}`` (lowercase; absent values left out)."""
    f: dict[str, str] = {}
    if country:
        f["country"] = country.strip().lower()
    reg = region.strip().lower() if region else COUNTRY_REGION.get(f.get("country", ""))
    if reg:
        f["region"] = reg
    for name, value in (("gender", gender), ("device", device), ("subcategory", subcategory), ("colour", colour)):
        if value:
            f[name] = value.strip().lower()
    f["aspect"] = aspect_class(width, height)
    f["size"] = size_class(width, height)
    return f


def _product_field(product: Any, name: str) -> str:
    """A product's ``subcategory`` / ``colour``: an index document's IndexProduct, or a mapping."""
    value = product.get(name, "") if isinstance(product, Mapping) else getattr(product, name, "")
    return str(value or "").strip().lower()


def schema_for(products: Mapping[str, Any]) -> dict[str, list[str]]:
    """The context schema of a category: fixed user/placement values plus the subcategories and
    colours of its products (as published in the serving index)."""
    subcats = sorted({_product_field(p, "subcategory") for p in products.values()} - {""})
    colours = list(DEFAULT_COLOURS)
    colours += sorted({_product_field(p, "colour") for p in products.values()} - {""} - set(colours))
    return {
        "country": list(DEFAULT_COUNTRIES),
        "region": list(REGIONS),
        "gender": list(GENDERS),
        "device": list(DEVICES),
        "subcategory": subcats or ["none"],
        "colour": colours,
        "aspect": list(ASPECT_CLASSES),
        "size": list(SIZE_CLASSES),
    }


# ------------------------------------------------------------------------------------- policies
def make_serving_policy(kind: str, arms: Sequence[str], dim: int, config: ServingConfig) -> Policy:
    """A fresh policy of ``kind`` with the configuration's parameters (alpha, ridge, c, seed)."""
    if kind == "linucb":
        return make_policy(kind, arms, dim, alpha=config.alpha, ridge=config.ridge, seed=config.seed)
    if kind == "ucb1":
        return make_policy(kind, arms, c=config.ucb_c, seed=config.seed)
    if kind == "random":
        return make_policy(kind, arms, seed=config.seed)
    raise ServingConfigError(f"unknown policy kind {kind!r}; known: {', '.join(POLICY_KINDS)}")


@dataclass
class _Slot:
    merchant: str
    category: str
    kind: str
    arms: tuple[str, ...]
    schema: ContextSchema
    policy: Policy
    lock: threading.Lock = field(default_factory=threading.Lock)
    unflushed: list = field(default_factory=list)  # deltas whose DB write failed (retried)
    events: int = 0


@dataclass
class Choice:
    variant: str
    theme: Optional[str]          # None for control / positioned
    policy: str                   # linucb | ucb1 | random | none
    x: Optional[np.ndarray] = None
    #: the probability with which ``theme`` was chosen (None for control / positioned)
    propensity: Optional[float] = None


class Personalizer:
    """Policies per (merchant, category, kind), their DB sync, and the impression/click updates.

    Thread-safe: one lock per policy; DB I/O happens outside the locks.
    """

    def __init__(self, config: Optional[ServingConfig] = None, bandit_store=None, health=None):
        self.config = config or ServingConfig()
        self.bandit_store = bandit_store
        #: the DB's health (serving.creative.StoreHealth): while it is down a new slot starts from
        #: its prior on a schema made here, and is reconciled with the stored one on the first flush
        self.health = health
        self._offline: set[tuple[str, str]] = set()  # (merchant, category) schemas not from the store
        self._slots: dict[tuple[str, str, str], _Slot] = {}
        self._schemas: dict[tuple[str, str], tuple[ContextSchema, Any]] = {}  # schema, products it saw
        self._lock = threading.RLock()  # slot() may flush a slot, which may migrate every slot
        self._rng = np.random.default_rng(self.config.seed)
        self.flush_errors = 0

    # -- slots -----------------------------------------------------------------------------------
    def schema(self, merchant: str, category: str, products: Mapping[str, Mapping]) -> ContextSchema:
        """The (merchant, category)'s context schema, extended (in the store too) when the
        products bring feature values it lacks (a new subcategory or colour)."""
        key = (merchant, category)
        cached = self._schemas.get(key)
        if cached is not None and cached[1] is products:
            return cached[0]
        wanted = schema_for(products)
        s = cached[0] if cached is not None else None
        if s is None or extend_schema(s, wanted) is not s:
            stored = None
            if self.bandit_store is not None:
                try:
                    if self.health is not None:
                        self.health.check()
                    stored = self.bandit_store.ensure_schema(merchant, category, wanted)
                except Exception as exc:
                    if not db_down(exc):
                        raise
                    note_db_error(self.health, exc)
                    self._offline.add(key)  # the request goes on; the flush stores the schema
            if stored is not None:
                s = ContextSchema(stored)
            else:
                s = ContextSchema(wanted) if s is None else extend_schema(s, wanted)
        self._schemas[key] = (s, products)
        return s

    def _migrate(self, merchant: str, category: str, new: ContextSchema) -> None:
        """Every policy of (merchant, category) onto an extended schema: unpublished deltas are
        re-laid onto the new encoding, the policy rebuilt at the new dimension and loaded from the
        store (whose sums the extension re-laid already)."""
        for slot in [s for s in self._slots.values() if (s.merchant, s.category) == (merchant, category)]:
            if slot.schema == new:
                continue
            mapping = coordinate_map(slot.schema, new)
            with slot.lock:
                deltas = slot.policy.take_deltas()
                if deltas:
                    slot.unflushed.append(deltas)
                slot.unflushed = [{a: embed_components(c, mapping, new.dim) for a, c in d.items()}
                                  for d in slot.unflushed]
                slot.policy = make_serving_policy(slot.kind, slot.arms, new.dim, self.config)
                slot.schema = new
            self._load(slot)

    def slot(self, merchant: str, category: str, kind: str, arms: Sequence[str],
             products: Mapping[str, Mapping]) -> _Slot:
        key = (merchant, category, kind)
        slot = self._slots.get(key)
        if slot is not None and slot.arms == tuple(arms):
            if self._schemas[(merchant, category)][1] is not products:  # a new index version
                schema = self.schema(merchant, category, products)
                if schema != slot.schema:
                    with self._lock:
                        self._migrate(merchant, category, schema)
            return slot
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and slot.arms == tuple(arms):
                return slot
            if slot is not None:  # the category's prompts changed: publish what we have, start over
                self._flush_slot(slot)
            schema = self.schema(merchant, category, products)
            policy = make_serving_policy(kind, arms, schema.dim, self.config)
            slot = _Slot(merchant, category, kind, tuple(arms), schema, policy)
            self._load(slot)
            self._slots[key] = slot
            return slot

    def _global_state(self, slot: _Slot) -> dict[str, tuple]:
        prior = slot.policy.prior_state()
        if self.bandit_store is None:
            return prior
        sums = self.bandit_store.load_sums(slot.merchant, slot.category, slot.kind)
        sums = {a: v for a, v in sums.items() if a in prior}  # arms no longer offered are ignored
        if slot.kind != "linucb":
            sums = {a: (int(round(n)), s) for a, (n, s) in sums.items()}
        return merge_states(prior, sums)

    def _load(self, slot: _Slot, strict: bool = False) -> None:
        """The merged global state into the slot's policy; with the DB down (and not ``strict``,
        as on the request path) the slot keeps what it has and the next flush loads it."""
        try:
            if self.health is not None and self.bandit_store is not None:
                self.health.check()
            state = self._global_state(slot)
        except Exception as exc:
            if strict or not db_down(exc):
                raise
            note_db_error(self.health, exc)
            return
        with slot.lock:
            slot.policy.load_state(state)

    # -- serving ---------------------------------------------------------------------------------
    def choose(self, variant: str, merchant: str, category: str, arms: Sequence[str],
               products: Mapping[str, Mapping], features: Mapping[str, str]) -> Choice:
        if variant not in THEMED:
            return Choice(variant, None, "none")
        kind = "random" if variant == "random" else self.config.policy_for(merchant)
        slot = self.slot(merchant, category, kind, arms, products)
        x = slot.schema.encode(features)
        eps = 1.0 if kind == "random" else self.config.epsilon
        u = self._rng.random()
        with slot.lock:
            scores = [0.0] * len(slot.arms) if eps == 1.0 else slot.policy.scores(x).tolist()
        k, p = draw_mixed(scores, eps, u)  # = a draw from policy_probabilities(policy, x, eps)
        return Choice(variant, slot.arms[k], kind, x, p)

    def _learning_slots(self, variant: str, merchant: str, category: str, kind: str, arms, products) -> list[_Slot]:
        slots = [self.slot(merchant, category, kind, arms, products)]
        if variant == "random" and self.config.learn_from_random:
            main = self.config.policy_for(merchant)
            if main != "random":
                slots.append(self.slot(merchant, category, main, arms, products))
        return slots

    def record_impression(self, choice: Choice, merchant: str, category: str, arms: Sequence[str],
                          products: Mapping[str, Mapping], hit: bool) -> None:
        """A served themed impression teaches its policy (reward 0 for now), if it was a hit."""
        if choice.theme is None or not hit:
            return
        for slot in self._learning_slots(choice.variant, merchant, category, choice.policy, arms, products):
            with slot.lock:  # one schema per (merchant, category): choice.x fits every slot
                if len(choice.x) != slot.schema.dim:
                    continue  # chosen just before the schema grew: encoded for the old layout
                if choice.theme in slot.arms:
                    slot.policy.update(choice.theme, choice.x, 0.0)
                    slot.events += 1

    def record_click(self, *, variant: str, merchant: str, category: str, policy: str, theme: str,
                     features: Mapping[str, str], arms: Sequence[str], products: Mapping[str, Mapping],
                     reward: float = 1.0) -> None:
        """The click of a (hit, themed) impression: ``b += r x`` for its theme."""
        if variant not in THEMED or policy not in POLICY_KINDS:
            return
        for slot in self._learning_slots(variant, merchant, category, policy, arms, products):
            x = slot.schema.encode(features)
            with slot.lock:
                if theme in slot.arms:
                    slot.policy.add_reward(theme, x, reward)
                    slot.events += 1

    # -- sync ------------------------------------------------------------------------------------
    def _flush_slot(self, slot: _Slot) -> None:
        key = (slot.merchant, slot.category)
        if self.bandit_store is not None and key in self._offline:  # made while the DB was down
            self.bandit_store.ensure_schema(slot.merchant, slot.category, slot.schema.features)
            self._offline.discard(key)
        if self.bandit_store is not None:  # another replica may have extended the schema
            stored = self.bandit_store.load_schema(slot.merchant, slot.category)
            if stored is not None and ContextSchema(stored) != slot.schema:
                new = ContextSchema(stored)
                with self._lock:
                    self._schemas[(slot.merchant, slot.category)] = (new, None)
                    self._migrate(slot.merchant, slot.category, new)
        with slot.lock:
            deltas = slot.policy.take_deltas()
        if deltas:
            slot.unflushed.append(deltas)
        if self.bandit_store is None:
            slot.unflushed.clear()
            return
        if slot.unflushed:
            total = sum_deltas(*slot.unflushed)
            self.bandit_store.add_deltas(slot.merchant, slot.category, slot.kind, total)
            slot.unflushed.clear()
        self._load(slot, strict=True)

    def flush(self) -> int:
        """Publish every policy's deltas and load the merged global state. Returns slots failed."""
        failed = 0
        for slot in list(self._slots.values()):
            try:
                self._flush_slot(slot)
            except Exception as exc:  # the DB is down: keep the deltas, try again next time
                failed += 1
                self.flush_errors += 1
                note_db_error(self.health, exc)
        return failed

    def snapshot(self) -> list[dict]:
        """A summary for /health and debugging."""
        out = []
        for s in list(self._slots.values()):
            out.append({"merchant": s.merchant, "category": s.category, "policy": s.kind,
                        "arms": list(s.arms), "dim": s.schema.dim, "events": s.events})
        return out


def features_json(features: Mapping[str, str]) -> str:
    return json.dumps(dict(features), sort_keys=True, separators=(",", ":"))
