"""Theme selection: contextual bandits over a category's prompts (pure logic, no DB, no HTTP).

* :class:`ContextSchema` turns request features (country, gender, device, subcategory, colour,
  placement aspect/size class, ...) into a one-hot vector with a bias term.
* :class:`LinUCB` is disjoint LinUCB (Li et al. 2010, Algorithm 1): one ridge regression per
  arm, ``score_a(x) = theta_a . x + alpha * sqrt(x . A_a^-1 . x)``.  The serving layer keeps one
  instance per item category, arms = that category's prompt ids.
* Replicas learn locally and publish *deltas* (``dA = sum x x^T``, ``db = sum r x``); the store
  adds them to the global sums (:func:`merge_states`), so N replicas give exactly the state of
  one replica that saw every event.
* :class:`UCB1` and :class:`RandomPolicy` share the interface (``select``, ``update``,
  ``state``, ``take_deltas``, ``load_state``) so the serving layer can swap policies per
  merchant (:func:`make_policy`).
* :class:`ClickModel`, :func:`simulate`, :func:`simulate_replicas`: a known contextual click
  model to measure regret.

See docs/bandit.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

try:  # in-place rank-1 update (A -= u v^T) without a temporary; numpy fallback below
    from scipy.linalg.blas import dger as _dger
except Exception:  # pragma: no cover - scipy is a transitive dependency here
    _dger = None

__all__ = [
    "BanditError", "UnknownArmError", "ContextDimensionError", "InvalidRewardError",
    "InvalidContextError", "StateMismatchError",
    "ContextSchema", "default_schema", "aspect_class", "size_class",
    "Policy", "LinUCB", "UCB1", "RandomPolicy", "OraclePolicy",
    "make_policy", "policy_from_state", "merge_states",
    "ClickModel", "SimResult", "simulate", "simulate_replicas",
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

    def encode_many(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        return np.array([self.encode(r) for r in rows]).reshape(-1, self.dim)

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
def _check_arms(arms: Iterable[str]) -> tuple[str, ...]:
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


def _reward(reward: Any) -> float:
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
    :func:`merge_states`."""

    arms: tuple[str, ...]

    def select(self, x: np.ndarray | None, rng: np.random.Generator | None = None) -> str: ...
    def update(self, arm: str, x: np.ndarray | None, reward: float) -> None: ...
    def state(self) -> dict[str, tuple]: ...
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

    Replicas: the local view is ``A = A_base + dA`` where ``dA`` holds the events not yet
    published; :meth:`take_deltas` returns ``{arm: (dA, db)}`` and moves them into the base;
    :meth:`load_state` replaces the base with the global state while keeping unpublished deltas.
    """

    kind = "linucb"

    def __init__(self, arms: Sequence[str], dim: int, alpha: float = 1.0, ridge: float = 1.0, *,
                 refresh_every: int = 2048, buffer_size: int = 256, seed: int | None = None):
        self.arms = _check_arms(arms)
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
        r = reward if reward.__class__ is float else _reward(reward)
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
        """Updates not yet returned by :meth:`take_deltas`."""
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

    @classmethod
    def initial_state(cls, arms: Sequence[str], dim: int, ridge: float = 1.0) -> dict:
        """The state of a policy that saw nothing: ``{arm: (ridge*I, 0)}``."""
        return cls(arms, dim, ridge=ridge).state()

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
    """Per-arm (n, s) = (impressions, reward sum), with local view and deltas."""

    kind = "counting"

    def __init__(self, arms: Sequence[str], *, seed: int | None = None):
        self.arms = _check_arms(arms)
        self._idx = {a: i for i, a in enumerate(self.arms)}
        k = len(self.arms)
        self._n = [0] * k
        self._s = [0.0] * k
        self._dn = [0] * k
        self._ds = [0.0] * k
        self._total = 0
        self._rng = np.random.default_rng(seed)

    def update(self, arm: str, x: Any, reward: float) -> None:
        """Record ``reward`` for ``arm`` (``x`` is ignored)."""
        k = self._idx.get(arm)
        if k is None:
            raise _unknown_arm(arm, self.arms)
        r = reward if reward.__class__ is float else _reward(reward)
        if r != r or r in (math.inf, -math.inf):
            raise InvalidRewardError(f"reward must be finite, got {reward!r}")
        self._n[k] += 1
        self._s[k] += r
        self._dn[k] += 1
        self._ds[k] += r
        self._total += 1

    def state(self) -> dict[str, tuple[int, float]]:
        return {a: (self._n[i], self._s[i]) for i, a in enumerate(self.arms)}

    def take_deltas(self) -> dict[str, tuple[int, float]]:
        out = {a: (self._dn[i], self._ds[i]) for i, a in enumerate(self.arms) if self._dn[i]}
        k = len(self.arms)
        self._dn = [0] * k
        self._ds = [0.0] * k
        return out

    @property
    def pending(self) -> int:
        return sum(self._dn)

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
        return cls(arms).state()


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


# ----------------------------------------------------------------------------- simulation
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class ClickModel:
    """A known contextual click model: ``ctr_a(x) = clip(sigmoid(W_a . x), lo, hi)``.

    ``W`` has an arm main effect on the bias coordinate and arm-by-feature-value interactions,
    so the best theme depends on the user, the product and the placement.  Contexts are drawn
    feature by feature from ``feature_probs`` (the last entry of each is "unknown value").
    """

    schema: ContextSchema
    arms: tuple[str, ...]
    weights: np.ndarray                       # (K, d) logits
    feature_probs: dict[str, np.ndarray]      # per feature: len(values)+1 probabilities
    ctr_range: tuple[float, float] = (0.005, 0.08)

    def ctr(self, x: np.ndarray) -> np.ndarray:
        """Click probability of every arm for one context (K,) or many (n, K)."""
        lo, hi = self.ctr_range
        return np.clip(_sigmoid(np.asarray(x) @ self.weights.T), lo, hi)

    def sample_contexts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        X = np.zeros((n, self.schema.dim))
        X[:, 0] = 1.0
        pos = 1
        for name, vals in self.schema.features.items():
            p = self.feature_probs[name]
            j = rng.choice(len(vals) + 1, size=n, p=p)
            hit = j < len(vals)
            X[np.nonzero(hit)[0], pos + j[hit]] = 1.0
            pos += len(vals)
        return X

    @classmethod
    def synthetic(cls, schema: ContextSchema | None = None, arms: Sequence[str] = ("1", "2", "3"),
                  *, base_ctr: float = 0.02, arm_scale: float = 0.15, effect_scale: float = 0.3,
                  ctr_range: tuple[float, float] = (0.005, 0.08), unknown_p: float = 0.05,
                  seed: int = 0) -> "ClickModel":
        """Random weights: logit(base_ctr) + arm effect N(0, arm_scale) + per (arm, feature value)
        N(0, effect_scale), centred per feature so that no arm wins everywhere; skewed (Dirichlet)
        feature-value frequencies."""
        schema = schema or default_schema()
        arms = _check_arms(arms)
        rng = np.random.default_rng(seed)
        K, d = len(arms), schema.dim
        W = rng.normal(0.0, effect_scale, size=(K, d))
        W[:, 0] = math.log(base_ctr / (1 - base_ctr)) + rng.normal(0.0, arm_scale, size=K)
        probs = {}
        pos = 1
        for name, vals in schema.features.items():
            p = rng.dirichlet(np.full(len(vals), 2.0)) * (1 - unknown_p)
            probs[name] = np.append(p, unknown_p)
            # centre each arm's effects on this feature: context changes which arm is best,
            # the arms' average CTRs stay near base_ctr * exp(arm effect)
            blk = W[:, pos:pos + len(vals)]
            blk -= (blk @ p)[:, None] / p.sum()
            pos += len(vals)
        return cls(schema, arms, W, probs, tuple(ctr_range))

    @classmethod
    def fast(cls, schema: ContextSchema | None = None, arms: Sequence[str] = ("1", "2", "3"),
             seed: int = 0) -> "ClickModel":
        """High CTRs (2%-60%) and strong interactions: learnable in a few thousand impressions
        (unit tests)."""
        return cls.synthetic(schema, arms, base_ctr=0.15, arm_scale=0.2, effect_scale=0.6,
                             ctr_range=(0.02, 0.6), seed=seed)


class OraclePolicy:
    """Knows the click model: picks ``argmax ctr_a(x)``.  Learns nothing."""

    kind = "oracle"

    def __init__(self, model: ClickModel):
        self.model = model
        self.arms = tuple(model.arms)

    def select(self, x: np.ndarray, rng: np.random.Generator | None = None) -> str:
        return self.arms[int(np.argmax(self.model.ctr(x)))]

    def update(self, arm: str, x: Any, reward: float) -> None:
        if arm not in self.arms:
            raise _unknown_arm(arm, self.arms)
        _reward(reward)


@dataclass
class SimResult:
    """Cumulative arrays over impressions t = 1..n."""

    clicks: np.ndarray          # sampled clicks of the policy
    expected: np.ndarray        # sum of the chosen arm's true CTR
    oracle: np.ndarray          # sum of the best arm's true CTR
    regret: np.ndarray          # oracle - expected (pseudo-regret)
    choices: np.ndarray         # arm index chosen at each impression

    @property
    def ctr(self) -> np.ndarray:
        """Cumulative CTR (sampled clicks / impressions)."""
        return self.clicks / np.arange(1, len(self.clicks) + 1)


def _sim_inputs(model: ClickModel, n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = model.sample_contexts(n, rng)
    C = model.ctr(X)
    U = rng.random(n)
    return X, C, U, np.random.default_rng([seed, 1])


def _sim_result(C: np.ndarray, U: np.ndarray, choice: np.ndarray) -> SimResult:
    rows = np.arange(len(choice))
    p = C[rows, choice]
    clicks = (U < p).astype(float)
    best = C.max(axis=1)
    return SimResult(np.cumsum(clicks), np.cumsum(p), np.cumsum(best), np.cumsum(best - p), choice)


def simulate(policy: Policy, n: int, seed: int = 0, model: ClickModel | None = None) -> SimResult:
    """Run ``policy`` for ``n`` impressions against ``model`` (default: the realistic
    :meth:`ClickModel.synthetic`).  Contexts and the uniforms that decide clicks depend only on
    ``seed``, so policies run with the same seed face the same users (common random numbers)."""
    model = model or ClickModel.synthetic()
    if set(policy.arms) != set(model.arms):
        raise BanditError(f"policy arms {list(policy.arms)} != model arms {list(model.arms)}")
    X, C, U, rng = _sim_inputs(model, int(n), seed)
    idx = {a: i for i, a in enumerate(model.arms)}
    choice = np.empty(int(n), dtype=np.int64)
    Cl = C.tolist()
    Ul = U.tolist()
    select, update = policy.select, policy.update
    for t in range(int(n)):
        x = X[t]
        a = select(x, rng)
        k = idx[a]
        choice[t] = k
        update(a, x, 1.0 if Ul[t] < Cl[t][k] else 0.0)
    return _sim_result(C, U, choice)


def simulate_replicas(factory: Callable[[], Policy], n: int, seed: int = 0,
                      model: ClickModel | None = None, *, replicas: int = 4,
                      sync_every: int = 1000) -> SimResult:
    """Like :func:`simulate` with ``replicas`` copies of a policy serving round-robin; every
    ``sync_every`` impressions each replica publishes its deltas, the store merges them
    (:func:`merge_states`) and every replica loads the global state."""
    model = model or ClickModel.synthetic()
    reps = [factory() for _ in range(int(replicas))]
    if not reps:
        raise BanditError("replicas must be >= 1")
    glob = reps[0].state()
    for r in reps:
        r.load_state(glob)
    X, C, U, rng = _sim_inputs(model, int(n), seed)
    idx = {a: i for i, a in enumerate(model.arms)}
    choice = np.empty(int(n), dtype=np.int64)
    Cl, Ul = C.tolist(), U.tolist()
    for t in range(int(n)):
        pol = reps[t % len(reps)]
        x = X[t]
        a = pol.select(x, rng)
        k = idx[a]
        choice[t] = k
        pol.update(a, x, 1.0 if Ul[t] < Cl[t][k] else 0.0)
        if (t + 1) % sync_every == 0:
            glob = merge_states(glob, *(r.take_deltas() for r in reps))
            for r in reps:
                r.load_state(glob)
    return _sim_result(C, U, choice)
