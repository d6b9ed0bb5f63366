"""Theme selection: contextual bandits over a category's prompts (pure logic, no DB, no HTTP).

* :class:`ContextSchema` turns request features (country, gender, device, subcategory, colour,
  placement aspect/size class, ...) into a one-hot vector with a bias term.
* :class:`LinUCB` is disjoint LinUCB (Li et al. 2010, Algorithm 1): one ridge regression per
  arm, ``score_a(x) = theta_a . x + alpha * sqrt(x . A_a^-1 . x)``.  The serving layer keeps one
  instance per item category, arms = that category's prompt ids.
* Delayed rewards: an impression is recorded at serve time with ``update(arm, x, 0.0)`` (the
  exploration bonus shrinks at once); its click arrives later as ``add_reward(arm, x, r)``.  The
  sums are exactly those of one ``update(arm, x, r)``.
* Replicas learn locally and publish *deltas* (``dA = sum x x^T``, ``db = sum r x``) with
  ``take_deltas``; the store adds them to the global sums (:func:`merge_states`,
  :func:`sum_deltas` for publishes retried together) and each replica loads
  ``merge_states(policy.prior_state(), sums)`` with ``load_state``, so N replicas give exactly
  the state of one replica that saw every event.
* :class:`UCB1` and :class:`RandomPolicy` share the interface (:class:`Policy`) so the serving
  layer can swap policies per merchant (:func:`make_policy`).

The simulated click model that measures regret lives in :mod:`bggen_assets.core.bandit_simulation`.
See docs/bandit.md.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

try:  # in-place rank-1 update (A -= u v^T) without a temporary; numpy fallback below
    from scipy.linalg.blas import dger as _dger
except Exception:  # pragma: no cover - scipy is a transitive dependency here
    _dger = None

__all__ = [
    "BanditError", "UnknownArmError", "ContextDimensionError", "InvalidRewardError",
    "InvalidContextError", "StateMismatchError",
    "ContextSchema", "default_schema", "aspect_class", "size_class",
    "Policy", "LinUCB", "UCB1", "RandomPolicy",
    "make_policy", "policy_from_state", "merge_states", "sum_deltas",
    "extend_schema", "coordinate_map", "embed_components",
    "check_arms", "check_reward",
]


# ----------------------------------------------------------------------------- errors
class BanditError(ValueError):
    """Bad input to the bandit layer."""


class UnknownArmError(BanditError):
    """An arm id that the policy does not have."""


class ContextDimensionError(BanditError):
    """A context vector of the wrong shape."""


class InvalidContextError(BanditError):
    """A context vector with NaN/inf, or features that are not strings."""


class InvalidRewardError(BanditError):
    """A reward that is not a finite number."""


class StateMismatchError(BanditError):
    """A state or delta whose arms or shapes do not fit."""


# ----------------------------------------------------------------------------- context
ASPECT_CLASSES = ("wide", "square", "tall")
SIZE_CLASSES = ("small", "medium", "large")
#: w/h above this is "wide", below its inverse "tall" (300x250 and 4:5 count as square).
ASPECT_WIDE = 1.25
#: area thresholds in px: < SMALL_AREA small (320x50, 300x250, 728x90), < LARGE_AREA medium.
SMALL_AREA = 100_000
LARGE_AREA = 500_000


def _check_wh(w: Any, h: Any) -> tuple[float, float]:
    try:
        wf, hf = float(w), float(h)
    except (TypeError, ValueError):
        raise BanditError(f"placement size must be numbers, got w={w!r}, h={h!r}") from None
    if not (math.isfinite(wf) and math.isfinite(hf)) or wf <= 0 or hf <= 0:
        raise BanditError(f"placement size must be positive and finite, got w={w!r}, h={h!r}")
    return wf, hf


def aspect_class(w: float, h: float) -> str:
    """'wide' if w/h > 1.25, 'tall' if w/h < 0.8, else 'square' (bounds inclusive)."""
    wf, hf = _check_wh(w, h)
    r = wf / hf
    if r > ASPECT_WIDE:
        return "wide"
    if r < 1.0 / ASPECT_WIDE:
        return "tall"
    return "square"


def size_class(w: float, h: float) -> str:
    """By area: 'small' < 100,000 px <= 'medium' < 500,000 px <= 'large'."""
    wf, hf = _check_wh(w, h)
    area = wf * hf
    if area < SMALL_AREA:
        return "small"
    if area < LARGE_AREA:
        return "medium"
    return "large"


def _norm(v: Any) -> str:
    return str(v).strip().lower()


class ContextSchema:
    """Categorical features and their known values -> one-hot vector plus a bias term.

    Layout: index 0 is the bias (always 1), then each feature's values in declaration order.
    Values are matched case-insensitively after stripping.  An unknown or missing value gives
    all zeros for that feature (the bias still carries the arm's mean), never an error;
    features not in the schema are ignored.
    """

    def __init__(self, features: Mapping[str, Sequence[str]]):
        if not features:
            raise BanditError("ContextSchema needs at least one feature")
        self.features: dict[str, tuple[str, ...]] = {}
        self._index: dict[str, dict[str, int]] = {}
        pos = 1
        for name, values in features.items():
            if not isinstance(name, str) or not name:
                raise BanditError(f"feature name must be a non-empty string, got {name!r}")
            if isinstance(values, str):
                raise BanditError(f"values of feature {name!r} must be a sequence of strings, "
                                  f"got the string {values!r}")
            vals = tuple(_norm(v) for v in values)
            if not vals:
                raise BanditError(f"feature {name!r} has no values")
            if len(set(vals)) != len(vals):
                raise BanditError(f"feature {name!r} has duplicate values: {vals}")
            self.features[name] = vals
            self._index[name] = {v: pos + i for i, v in enumerate(vals)}
            pos += len(vals)
        self.dim = pos

    def encode(self, features: Mapping[str, Any]) -> np.ndarray:
        """One-hot float64 vector of length :attr:`dim` (bias at index 0)."""
        x = np.zeros(self.dim)
        x[0] = 1.0
        for name, table in self._index.items():
            v = features.get(name)
            if v is None:
                continue
            i = table.get(v if v.__class__ is str and v in table else _norm(v))
            if i is not None:
                x[i] = 1.0
        return x

    def names(self) -> list[str]:
        """Human-readable name of each coordinate: 'bias', 'device=mobile', ..."""
        out = ["bias"]
        for name, vals in self.features.items():
            out += [f"{name}={v}" for v in vals]
        return out

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.features.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[str]]) -> "ContextSchema":
        return cls(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContextSchema) and self.features == other.features

    def __repr__(self) -> str:
        return f"ContextSchema(dim={self.dim}, features={list(self.features)})"


def extend_schema(old: ContextSchema, wanted: Mapping[str, Sequence[str]]) -> ContextSchema:
    """``old`` with the values and features of ``wanted`` it lacks: each feature keeps its values
    in order and gets the new ones after them; new features come last.  ``old`` itself when
    nothing is new."""
    merged = {k: list(v) for k, v in old.features.items()}
    for name, values in wanted.items():
        cur = merged.setdefault(name, [])
        for v in values:
            if _norm(v) not in cur:
                cur.append(_norm(v))
    if {k: tuple(v) for k, v in merged.items()} == old.features:
        return old
    return ContextSchema(merged)


def coordinate_map(old: ContextSchema, new: ContextSchema) -> np.ndarray:
    """For each coordinate of ``old``'s encoding, its coordinate in ``new``'s (which must contain
    every feature value of ``old``, as :func:`extend_schema` makes it)."""
    names = {n: i for i, n in enumerate(new.names())}
    missing = [n for n in old.names() if n not in names]
    if missing:
        raise StateMismatchError(f"the new schema lacks {missing[:5]} of the old one: a schema may only grow")
    return np.array([names[n] for n in old.names()], dtype=int)


def embed_components(comps: tuple, mapping: np.ndarray, new_dim: int) -> tuple:
    """A state or delta of the old encoding in the new one: LinUCB sums ``(sum x x^T, sum r x)``
    are placed at the mapped coordinates, zero elsewhere (no event had the new values); counting
    policies' ``(n, s)`` do not depend on the context and are returned as they are."""
    out = []
    for c in comps:
        if isinstance(c, np.ndarray) and c.ndim == 2:
            e = np.zeros((new_dim, new_dim))
            e[np.ix_(mapping, mapping)] = c
            out.append(e)
        elif isinstance(c, np.ndarray) and c.ndim == 1:
            e = np.zeros(new_dim)
            e[mapping] = c
            out.append(e)
        else:
            out.append(c)
    return tuple(out)


DEFAULT_COUNTRIES = ("us", "gb", "de", "fr", "es", "it", "nl", "br", "jp", "in")
DEFAULT_COLOURS = ("black", "white", "grey", "red", "blue", "green", "brown", "beige")


def default_schema(subcategories: Sequence[str] = ("tops", "bottoms", "shoes", "bags"),
                   colours: Sequence[str] = DEFAULT_COLOURS,
                   countries: Sequence[str] = DEFAULT_COUNTRIES) -> ContextSchema:
    """The serving context: user (country, gender, device), product (subcategory, colour),
    placement (aspect class, size class).  With the defaults d = 1 + 10+2+3+4+8+3+3 = 34."""
    return ContextSchema({
        "country": countries,
        "gender": ("female", "male"),
        "device": ("mobile", "desktop", "tablet"),
        "subcategory": subcategories,
        "colour": colours,
        "aspect": ASPECT_CLASSES,
        "size": SIZE_CLASSES,
    })


# ----------------------------------------------------------------------------- helpers
def check_arms(arms: Iterable[str]) -> tuple[str, ...]:
    """The arm ids as a tuple: non-empty, distinct, non-empty strings (else :class:`BanditError`)."""
    if isinstance(arms, str):
        raise BanditError(f"arms must be a sequence of ids, got the string {arms!r}")
    out = tuple(arms)
    if not out:
        raise BanditError("a policy needs at least one arm")
    for a in out:
        if not isinstance(a, str) or not a:
            raise BanditError(f"arm ids must be non-empty strings, got {a!r}")
    if len(set(out)) != len(out):
        raise BanditError(f"duplicate arm ids: {out}")
    return out


def check_reward(reward: Any) -> float:
    """``reward`` as a finite float (else :class:`InvalidRewardError`)."""
    try:
        r = float(reward)
    except (TypeError, ValueError):
        raise InvalidRewardError(f"reward must be a number, got {reward!r}") from None
    if r != r or r in (math.inf, -math.inf):
        raise InvalidRewardError(f"reward must be finite, got {reward!r}")
    return r


def _unknown_arm(arm: Any, arms: Sequence[str]) -> UnknownArmError:
    return UnknownArmError(f"unknown arm {arm!r}; this policy's arms are {list(arms)}")


def _pick(vals: list, rng: np.random.Generator) -> int:
    """Index of the max of a short list, ties broken uniformly at random."""
    m = max(vals)
    if vals.count(m) == 1:
        return vals.index(m)
    ties = [i for i, v in enumerate(vals) if v == m]
    return ties[int(rng.integers(len(ties)))]


class Policy(Protocol):
    """What the serving layer calls.  ``x`` is an encoded context (ignored by context-free
    policies); states and deltas are ``{arm: tuple of arrays/numbers}``, added by
    :func:`merge_states`.

    * ``update(arm, x, reward)``: one impression and its reward; ``add_reward(arm, x, reward)``
      adds a reward that arrived later to an impression already recorded with reward 0.
    * ``take_deltas()``: the increments since the last call (the replica's publish);
      ``load_state(merged)``: the global state, unpublished increments kept on top;
      ``prior_state()``: the state of nothing seen, to which the store's sums are added.
    """

    arms: tuple[str, ...]

    def select(self, x: np.ndarray | None, rng: np.random.Generator | None = None) -> str: ...
    def update(self, arm: str, x: np.ndarray | None, reward: float) -> None: ...
    def add_reward(self, arm: str, x: np.ndarray | None, reward: float) -> None: ...
    def state(self) -> dict[str, tuple]: ...
    def prior_state(self) -> dict[str, tuple]: ...
    def take_deltas(self) -> dict[str, tuple]: ...
    def load_state(self, state: Mapping[str, tuple]) -> None: ...


def merge_states(base_state: Mapping[str, tuple], *deltas: Mapping[str, tuple]) -> dict[str, tuple]:
    """``base + sum(deltas)`` arm by arm, component by component (new arrays; inputs untouched).

    Works for any policy's state: LinUCB ``(A, b)``, UCB1 ``(n, s)``.  A delta may omit arms
    (no events) but may not name an arm the base lacks, nor differ in shapes.
    """
    out: dict[str, tuple] = {}
    for arm, comps in base_state.items():
        out[arm] = tuple(np.array(c, dtype=float, copy=True) if isinstance(c, np.ndarray) else c
                         for c in comps)
    for i, delta in enumerate(deltas):
        for arm, comps in delta.items():
            if arm not in out:
                raise StateMismatchError(f"delta #{i} has arm {arm!r} that the base state lacks "
                                         f"(base arms: {list(out)})")
            cur = out[arm]
            if len(comps) != len(cur):
                raise StateMismatchError(f"delta #{i}, arm {arm!r}: {len(comps)} components, "
                                         f"base has {len(cur)}")
            new = []
            for j, (c, dc) in enumerate(zip(cur, comps)):
                if np.shape(c) != np.shape(dc):
                    raise StateMismatchError(f"delta #{i}, arm {arm!r}, component {j}: shape "
                                             f"{np.shape(dc)} != base {np.shape(c)}")
                if isinstance(c, np.ndarray):
                    c += dc
                    new.append(c)
                else:
                    new.append(c + dc)
            out[arm] = tuple(new)
    return out


def sum_deltas(*deltas: Mapping[str, tuple]) -> dict[str, tuple]:
    """The sum of several deltas, arm by arm (arms: the union): e.g. publishes that failed and
    are retried as one.  Deltas of one arm must agree in shapes (:class:`StateMismatchError`)."""
    zero: dict[str, tuple] = {}
    for delta in deltas:
        for arm, comps in delta.items():
            if arm not in zero:
                zero[arm] = tuple(np.zeros(np.shape(c)) if isinstance(c, np.ndarray) else 0
                                  for c in comps)
    return merge_states(zero, *deltas)


# ----------------------------------------------------------------------------- LinUCB
class LinUCB:
    """Disjoint LinUCB with Sherman-Morrison inverses and mergeable running sums.

    Per arm ``A = ridge*I + sum x x^T`` and ``b = sum r x``; ``theta = A^-1 b``;
    ``score(x) = theta . x + alpha * sqrt(x . A^-1 . x)``.

    Hot path: ``A^-1`` and ``theta`` of all arms live in one ``(K*(d+1), d)`` matrix so scores
    take a single mat-vec plus one for the quadratic form; ``update`` applies a Sherman-Morrison
    rank-1 downdate in place and refreshes ``theta``.  The ``x x^T`` sums are not added per event:
    contexts are buffered per arm and folded in as ``X^T X`` (when the buffer fills, and before
    :meth:`state`, :meth:`take_deltas`, refreshes).  Every ``refresh_every`` updates of an arm its
    inverse is rebuilt from ``A`` with ``np.linalg.inv`` to bound floating-point drift.

    Delayed rewards: :meth:`update` with reward 0 at serve time, :meth:`add_reward` when the
    click comes (``b += r x``; ``A`` does not depend on the reward).

    Replicas: the local view is ``A = A_base + dA`` where ``dA`` holds the events not yet
    published; :meth:`take_deltas` returns ``{arm: (dA, db)}`` and moves them into the base;
    :meth:`load_state` replaces the base with the global state while keeping unpublished deltas.
    """

    kind = "linucb"

    def __init__(self, arms: Sequence[str], dim: int, alpha: float = 1.0, ridge: float = 1.0, *,
                 refresh_every: int = 2048, buffer_size: int = 256, seed: int | None = None):
        self.arms = check_arms(arms)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise BanditError(f"dim must be a positive int, got {dim!r}")
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise BanditError(f"alpha must be finite and >= 0, got {alpha!r}")
        ridge = float(ridge)
        if not (math.isfinite(ridge) and ridge > 0):
            raise BanditError(f"ridge must be finite and > 0, got {ridge!r}")
        if int(refresh_every) < 0:
            raise BanditError(f"refresh_every must be >= 0 (0 = never), got {refresh_every!r}")
        if int(buffer_size) < 1:
            raise BanditError(f"buffer_size must be >= 1, got {buffer_size!r}")
        self.dim = d = int(dim)
        self.alpha = alpha
        self.ridge = ridge
        self.refresh_every = int(refresh_every)
        self._rng = np.random.default_rng(seed)
        k = len(self.arms)
        self._idx = {a: i for i, a in enumerate(self.arms)}
        self._shape = (d,)
        # A^-1 rows then theta, per arm: M[k, :d] = A_k^-1, M[k, d] = theta_k
        self._M = np.zeros((k, d + 1, d))
        self._M2 = self._M.reshape(k * (d + 1), d)
        self._Ainv = [self._M[i, :d] for i in range(k)]
        self._AinvT = [a.T for a in self._Ainv]          # F-ordered views for BLAS dger
        self._theta = [self._M[i, d] for i in range(k)]
        self._A_base = np.zeros((k, d, d))
        self._dA = np.zeros((k, d, d))
        self._b = np.zeros((k, d))                        # local view of b (base + pending)
        self._db = np.zeros((k, d))
        self._buf = np.zeros((k, int(buffer_size), d))
        self._nbuf = [0] * k
        self._since_refresh = [0] * k
        self._n = [0] * k                                 # updates seen locally (diagnostics)
        self._pending = 0
        eye = np.eye(d)
        for i in range(k):
            self._A_base[i] = ridge * eye
            self._Ainv[i][...] = eye / ridge
        self._use_dger = _dger is not None and self._dger_in_place()

    # -- internals
    def _dger_in_place(self) -> bool:
        try:
            probe = np.zeros((2, 2))
            out = _dger(1.0, np.ones(2), np.ones(2), a=probe.T, overwrite_a=1)
            return np.shares_memory(out, probe) and probe[0, 0] == 1.0
        except Exception:  # pragma: no cover
            return False

    def _check_x(self, x: Any) -> np.ndarray:
        if x.__class__ is not np.ndarray or x.dtype != np.float64:
            try:
                x = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError):
                raise ContextDimensionError(f"context must be a numeric vector of length "
                                            f"{self.dim}, got {type(x).__name__}") from None
        if x.shape != self._shape:
            raise ContextDimensionError(f"context has shape {x.shape}, this LinUCB expects "
                                        f"({self.dim},) (dim={self.dim})")
        return x

    def _fold(self, k: int) -> None:
        n = self._nbuf[k]
        if n:
            X = self._buf[k, :n]
            self._dA[k] += X.T @ X
            self._nbuf[k] = 0

    def _fold_all(self) -> None:
        for k in range(len(self.arms)):
            self._fold(k)

    def _refresh(self, k: int) -> None:
        self._fold(k)
        A = self._A_base[k] + self._dA[k]
        try:
            inv = np.linalg.inv(A)
        except np.linalg.LinAlgError:
            raise StateMismatchError(f"A of arm {self.arms[k]!r} is singular") from None
        self._Ainv[k][...] = (inv + inv.T) * 0.5
        np.dot(self._Ainv[k], self._b[k], out=self._theta[k])
        self._since_refresh[k] = 0

    # -- policy interface
    def scores(self, x: np.ndarray) -> np.ndarray:
        """``theta_a . x + alpha * sqrt(x . A_a^-1 . x)`` per arm, in :attr:`arms` order."""
        if x.__class__ is not np.ndarray or x.shape != self._shape or x.dtype != np.float64:
            x = self._check_x(x)
        y = (self._M2 @ x).reshape(len(self.arms), self.dim + 1)
        return y[:, -1] + self.alpha * np.sqrt(y[:, :-1] @ x)

    def expected(self, x: np.ndarray) -> np.ndarray:
        """The ridge estimate ``theta_a . x`` per arm (no exploration bonus)."""
        x = self._check_x(x)
        return (self._M2 @ x).reshape(len(self.arms), self.dim + 1)[:, -1].copy()

    def select(self, x: np.ndarray, rng: np.random.Generator | None = None) -> str:
        """The arm with the highest score; ties broken uniformly at random."""
        if x.__class__ is not np.ndarray or x.shape != self._shape:
            x = self._check_x(x)
        y = (self._M2 @ x).reshape(len(self.arms), self.dim + 1)
        s = (y[:, -1] + self.alpha * np.sqrt(y[:, :-1] @ x)).tolist()
        if not math.isfinite(math.fsum(s)):
            self._check_x(x)
            if not np.isfinite(x).all():
                raise InvalidContextError("context contains NaN or inf")
            raise InvalidContextError(f"non-finite scores {s}; state is corrupt or overflowing")
        return self.arms[_pick(s, self._rng if rng is None else rng)]

    def update(self, arm: str, x: np.ndarray, reward: float) -> None:
        """Record ``reward`` for ``arm`` shown in context ``x``."""
        k = self._idx.get(arm)
        if k is None:
            raise _unknown_arm(arm, self.arms)
        if x.__class__ is not np.ndarray or x.shape != self._shape or x.dtype != np.float64:
            x = self._check_x(x)
        r = reward if reward.__class__ is float else check_reward(reward)
        if r != r or r in (math.inf, -math.inf):
            raise InvalidRewardError(f"reward must be finite, got {reward!r}")
        Ainv = self._Ainv[k]
        v = Ainv @ x
        den = 1.0 + float(v @ x)
        if not (den >= 1.0 and den < math.inf):  # catches NaN/inf in x before any mutation
            if not np.isfinite(x).all():
                raise InvalidContextError("context contains NaN or inf")
            raise InvalidContextError(f"Sherman-Morrison denominator {den!r} for arm {arm!r}")
        # Sherman-Morrison: (A + x x^T)^-1 = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x)
        if self._use_dger:
            _dger(-1.0 / den, v, v, a=self._AinvT[k], overwrite_a=1)
        else:
            Ainv -= v[:, None] * (v * (1.0 / den))
        if r != 0.0:
            rx = r * x
            self._b[k] += rx
            self._db[k] += rx
        np.dot(Ainv, self._b[k], out=self._theta[k])
        n = self._nbuf[k]
        self._buf[k, n] = x
        self._nbuf[k] = n = n + 1
        if n == self._buf.shape[1]:
            self._fold(k)
        self._n[k] += 1
        self._pending += 1
        if self.refresh_every:
            c = self._since_refresh[k] + 1
            self._since_refresh[k] = c
            if c >= self.refresh_every:
                self._refresh(k)

    def add_reward(self, arm: str, x: np.ndarray, reward: float) -> None:
        """A reward that arrived after its impression was recorded (``update(arm, x, 0.0)``):
        ``b += r x``, theta refreshed.  Together the two equal one ``update(arm, x, reward)``."""
        k = self._idx.get(arm)
        if k is None:
            raise _unknown_arm(arm, self.arms)
        x = self._check_x(x)
        if not np.isfinite(x).all():
            raise InvalidContextError("context contains NaN or inf")
        r = check_reward(reward)
        if r != 0.0:
            rx = r * x
            self._b[k] += rx
            self._db[k] += rx
            np.dot(self._Ainv[k], self._b[k], out=self._theta[k])
        self._pending += 1

    # -- state and replicas
    def state(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{arm: (A, b)}`` of the local view (copies): ``A = ridge*I + sum x x^T``."""
        self._fold_all()
        return {a: (self._A_base[i] + self._dA[i], self._b[i].copy())
                for i, a in enumerate(self.arms)}

    def take_deltas(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{arm: (dA, db)}`` accumulated since the last call, then reset (moved into the base).
        Arms without events since the last call are left out."""
        self._fold_all()
        out = {}
        for i, a in enumerate(self.arms):
            if self._dA[i].any() or self._db[i].any():
                out[a] = (self._dA[i].copy(), self._db[i].copy())
            self._A_base[i] += self._dA[i]
            self._dA[i] = 0.0
            self._db[i] = 0.0
        self._pending = 0
        return out

    @property
    def pending(self) -> int:
        """Updates and delayed rewards not yet returned by :meth:`take_deltas`."""
        return self._pending

    @property
    def counts(self) -> dict[str, int]:
        """Updates seen by this instance per arm (local, not merged)."""
        return dict(zip(self.arms, self._n))

    def _validate_state(self, state: Mapping[str, tuple]) -> None:
        d = self.dim
        if set(state) != set(self.arms):
            raise StateMismatchError(f"state arms {sorted(state)} != policy arms {sorted(self.arms)}")
        for a, comps in state.items():
            if len(comps) != 2:
                raise StateMismatchError(f"state of arm {a!r} must be (A, b), got {len(comps)} parts")
            A, b = (np.asarray(c, dtype=float) for c in comps)
            if A.shape != (d, d) or b.shape != (d,):
                raise StateMismatchError(f"state of arm {a!r}: A {A.shape}, b {b.shape}; "
                                         f"expected ({d}, {d}) and ({d},)")
            if not (np.isfinite(A).all() and np.isfinite(b).all()):
                raise StateMismatchError(f"state of arm {a!r} has NaN or inf")

    def load_state(self, state: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace the base with a (global) state; unpublished deltas stay on top of it.
        Inverses are rebuilt from ``A`` with ``np.linalg.inv``."""
        self._validate_state(state)
        self._fold_all()
        for i, a in enumerate(self.arms):
            A, b = state[a]
            self._A_base[i] = A
            self._b[i] = np.asarray(b, dtype=float) + self._db[i]
        for i in range(len(self.arms)):
            self._refresh(i)

    @classmethod
    def from_state(cls, state: Mapping[str, tuple[np.ndarray, np.ndarray]], alpha: float = 1.0,
                   **kwargs: Any) -> "LinUCB":
        """A fresh instance (no pending deltas) whose view is ``state``; arms in the state's order."""
        if not state:
            raise StateMismatchError("empty state")
        first = next(iter(state.values()))
        if len(first) != 2:
            raise StateMismatchError("LinUCB state values must be (A, b)")
        dim = int(np.shape(first[1])[0]) if np.ndim(first[1]) == 1 else -1
        if dim < 1:
            raise StateMismatchError(f"b must be a vector, got shape {np.shape(first[1])}")
        pol = cls(list(state), dim, alpha, **kwargs)
        pol.load_state(state)
        return pol

    def prior_state(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The state of this policy before any event, ``{arm: (ridge*I, 0)}``: the base to
        which the sums of every replica's deltas are added."""
        return {a: (self.ridge * np.eye(self.dim), np.zeros(self.dim)) for a in self.arms}

    @classmethod
    def initial_state(cls, arms: Sequence[str], dim: int, ridge: float = 1.0) -> dict:
        """The state of a policy that saw nothing: ``{arm: (ridge*I, 0)}``."""
        return cls(arms, dim, ridge=ridge).prior_state()

    def inverse(self, arm: str) -> np.ndarray:
        """The maintained ``A^-1`` of an arm (copy)."""
        k = self._idx.get(arm)
        if k is None:
            raise _unknown_arm(arm, self.arms)
        return self._Ainv[k].copy()

    def __repr__(self) -> str:
        return f"LinUCB(arms={list(self.arms)}, dim={self.dim}, alpha={self.alpha}, ridge={self.ridge})"


# ----------------------------------------------------------------------------- context-free
class _CountingPolicy:
    """Per-arm (n, s) = (impressions, reward sum), with local view and deltas.  A delayed reward
    (:meth:`add_reward`) adds to ``s`` only: its impression was counted by :meth:`update`."""

    kind = "counting"

    def __init__(self, arms: Sequence[str], *, seed: int | None = None):
        self.arms = check_arms(arms)
        self._idx = {a: i for i, a in enumerate(self.arms)}
        k = len(self.arms)
        self._n = [0] * k
        self._s = [0.0] * k
        self._dn = [0] * k
        self._ds = [0.0] * k
        self._pending = 0
        self._total = 0
        self._rng = np.random.default_rng(seed)

    def update(self, arm: str, x: Any, reward: float) -> None:
        """Record ``reward`` for ``arm`` (``x`` is ignored)."""
        k = self._idx.get(arm)
        if k is None:
            raise _unknown_arm(arm, self.arms)
        r = reward if reward.__class__ is float else check_reward(reward)
        if r != r or r in (math.inf, -math.inf):
            raise InvalidRewardError(f"reward must be finite, got {reward!r}")
        self._n[k] += 1
        self._s[k] += r
        self._dn[k] += 1
        self._ds[k] += r
        self._total += 1
        self._pending += 1

    def add_reward(self, arm: str, x: Any, reward: float) -> None:
        """A reward that arrived after its impression was recorded (``update(arm, x, 0.0)``);
        ``x`` is ignored."""
        k = self._idx.get(arm)
        if k is None:
            raise _unknown_arm(arm, self.arms)
        r = check_reward(reward)
        self._s[k] += r
        self._ds[k] += r
        self._pending += 1

    def state(self) -> dict[str, tuple[int, float]]:
        return {a: (self._n[i], self._s[i]) for i, a in enumerate(self.arms)}

    def prior_state(self) -> dict[str, tuple[int, float]]:
        """``{arm: (0, 0.0)}``: the base to which the sums of every replica's deltas are added."""
        return {a: (0, 0.0) for a in self.arms}

    def take_deltas(self) -> dict[str, tuple[int, float]]:
        """``{arm: (dn, ds)}`` since the last call, then reset.  Arms without events are left
        out; an arm with only a delayed reward since the last call is included."""
        out = {a: (self._dn[i], self._ds[i]) for i, a in enumerate(self.arms)
               if self._dn[i] or self._ds[i]}
        k = len(self.arms)
        self._dn = [0] * k
        self._ds = [0.0] * k
        self._pending = 0
        return out

    @property
    def pending(self) -> int:
        """Updates and delayed rewards not yet returned by :meth:`take_deltas`."""
        return self._pending

    def load_state(self, state: Mapping[str, tuple[int, float]]) -> None:
        if set(state) != set(self.arms):
            raise StateMismatchError(f"state arms {sorted(state)} != policy arms {sorted(self.arms)}")
        for a, comps in state.items():
            if len(comps) != 2:
                raise StateMismatchError(f"state of arm {a!r} must be (n, s)")
            n, s = comps
            if not (math.isfinite(float(n)) and math.isfinite(float(s))) or n < 0:
                raise StateMismatchError(f"state of arm {a!r} is invalid: {comps!r}")
            i = self._idx[a]
            self._n[i] = int(n) + self._dn[i]
            self._s[i] = float(s) + self._ds[i]
        self._total = sum(self._n)

    @classmethod
    def from_state(cls, state: Mapping[str, tuple[int, float]], **kwargs: Any):
        pol = cls(list(state), **kwargs)
        pol.load_state(state)
        return pol

    @classmethod
    def initial_state(cls, arms: Sequence[str]) -> dict:
        return cls(arms).prior_state()


class UCB1(_CountingPolicy):
    """Context-free UCB1 (Auer et al. 2002): ``mean_a + c * sqrt(ln N / n_a)``; unplayed arms
    first.  ``c = sqrt(2)`` is the textbook bound for rewards in [0, 1]; scale it down with the
    reward's standard deviation for low CTRs."""

    kind = "ucb1"

    def __init__(self, arms: Sequence[str], c: float = math.sqrt(2.0), *, seed: int | None = None):
        super().__init__(arms, seed=seed)
        c = float(c)
        if not (math.isfinite(c) and c >= 0):
            raise BanditError(f"c must be finite and >= 0, got {c!r}")
        self.c = c

    def scores(self, x: Any = None) -> np.ndarray:
        if self._total == 0 or 0 in self._n:
            return np.array([math.inf if n == 0 else s / n for n, s in zip(self._n, self._s)])
        logn = math.log(self._total)
        c = self.c
        return np.array([s / n + c * math.sqrt(logn / n) for n, s in zip(self._n, self._s)])

    def select(self, x: Any = None, rng: np.random.Generator | None = None) -> str:
        if self._total == 0 or 0 in self._n:
            vals = [1.0 if n == 0 else 0.0 for n in self._n]
        else:
            logn = math.log(self._total)
            c = self.c
            vals = [s / n + c * math.sqrt(logn / n) for n, s in zip(self._n, self._s)]
        return self.arms[_pick(vals, self._rng if rng is None else rng)]

    def __repr__(self) -> str:
        return f"UCB1(arms={list(self.arms)}, c={self.c})"


class RandomPolicy(_CountingPolicy):
    """Uniform random arm (the A/B control); keeps counts so its CTR can be read back."""

    kind = "random"

    def select(self, x: Any = None, rng: np.random.Generator | None = None) -> str:
        return self.arms[int((self._rng if rng is None else rng).integers(len(self.arms)))]

    def __repr__(self) -> str:
        return f"RandomPolicy(arms={list(self.arms)})"


def make_policy(kind: str, arms: Sequence[str], dim: int | None = None, **kwargs: Any) -> Policy:
    """``'linucb'`` (needs ``dim``), ``'ucb1'`` or ``'random'``; kwargs go to the constructor."""
    if kind == "linucb":
        if dim is None:
            raise BanditError("make_policy('linucb', ...) needs dim")
        return LinUCB(arms, dim, **kwargs)
    if kind == "ucb1":
        return UCB1(arms, **kwargs)
    if kind == "random":
        return RandomPolicy(arms, **kwargs)
    raise BanditError(f"unknown policy kind {kind!r}; expected 'linucb', 'ucb1' or 'random'")


def policy_from_state(kind: str, state: Mapping[str, tuple], **kwargs: Any) -> Policy:
    """Rebuild a policy of ``kind`` from a stored state (see :func:`make_policy`)."""
    cls = {"linucb": LinUCB, "ucb1": UCB1, "random": RandomPolicy}.get(kind)
    if cls is None:
        raise BanditError(f"unknown policy kind {kind!r}; expected 'linucb', 'ucb1' or 'random'")
    return cls.from_state(state, **kwargs)
