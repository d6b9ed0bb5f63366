"""Off-policy evaluation: the CTR a candidate policy would have had on logged traffic.

Logged data (:class:`LoggedData`): per impression the context ``x_i``, the theme shown ``a_i``,
the probability ``p_i`` with which the logging policy chose it (see
:mod:`bggen_assets.core.exploration`) and the reward ``r_i`` (click = 1).  A candidate policy is
given as its action distribution ``pi(. | x_i)`` on every logged context, ``(n, K)``.

* IPS:   ``mean(w_i r_i)`` with ``w_i = pi(a_i | x_i) / p_i`` (unbiased when every ``p_i > 0``).
* SNIPS: ``sum(w_i r_i) / sum(w_i)`` (self-normalised: a little bias, much less variance).
* DR:    ``mean(sum_a pi(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))`` with a reward model ``q``
  (:func:`fit_reward_model`: one ridge regression per theme); unbiased if either ``p`` or ``q``
  is right.

These are the definitions of Dudík et al. (2011) and of Open Bandit Pipeline (``obp.ope``), against
which tests/core/test_ope.py checks them.  Intervals are percentile bootstraps over impressions (the
reward model held fixed).  :func:`replay_probabilities` turns a policy object (LinUCB, UCB1,
random) into its action distributions on the log, learning from the logged events as it goes.
Pure numpy; no DB, no Dagster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .bandit import BanditError, ContextSchema
from .exploration import policy_probabilities

__all__ = ["OPEError", "LoggedData", "Estimate", "ips", "snips", "doubly_robust", "fit_reward_model",
           "bootstrap_interval", "estimate_all", "replay_probabilities", "feature_columns", "logged_from_rows",
           "Candidate", "default_candidates", "evaluate_candidates",
           "ESTIMATORS"]


class OPEError(BanditError):
    """Logged data or action distributions that cannot be evaluated (shapes, zero propensities)."""


@dataclass(frozen=True)
class LoggedData:
    """Logged bandit feedback: contexts ``x`` (n, d), arm indices ``actions`` (n,), ``rewards`` (n,),
    logging ``propensities`` (n,) in (0, 1], over ``arms`` (K)."""

    x: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    arms: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.actions)
        if self.x.ndim != 2 or self.x.shape[0] != n or self.rewards.shape != (n,) or self.propensities.shape != (n,):
            raise OPEError(f"logged data shapes do not agree: x {self.x.shape}, actions ({n},), rewards "
                           f"{self.rewards.shape}, propensities {self.propensities.shape}")
        if n and (self.actions.min() < 0 or self.actions.max() >= len(self.arms)):
            raise OPEError(f"actions must index the {len(self.arms)} arms")
        if n and not (np.isfinite(self.propensities).all() and (self.propensities > 0).all()
                      and (self.propensities <= 1).all()):
            raise OPEError("logging propensities must be in (0, 1]: a deterministic logging policy "
                           "cannot evaluate another one (serve with epsilon > 0)")

    @property
    def n(self) -> int:
        return len(self.actions)

    def take(self, idx: np.ndarray) -> "LoggedData":
        return LoggedData(self.x[idx], self.actions[idx], self.rewards[idx], self.propensities[idx], self.arms)


def _check_pi(data: LoggedData, pi: np.ndarray) -> np.ndarray:
    pi = np.asarray(pi, dtype=float)
    if pi.shape != (data.n, len(data.arms)):
        raise OPEError(f"action distributions must be (n, K) = ({data.n}, {len(data.arms)}), got {pi.shape}")
    if not np.allclose(pi.sum(axis=1), 1.0, atol=1e-9) or (pi < 0).any():
        raise OPEError("each row of the action distributions must be >= 0 and sum to 1")
    return pi


def _weights(data: LoggedData, pi: np.ndarray) -> np.ndarray:
    return pi[np.arange(data.n), data.actions] / data.propensities


def ips(data: LoggedData, pi: np.ndarray) -> float:
    """Inverse propensity scoring: ``mean(pi(a_i|x_i) / p_i * r_i)``."""
    pi = _check_pi(data, pi)
    return float(np.mean(_weights(data, pi) * data.rewards))


def snips(data: LoggedData, pi: np.ndarray) -> float:
    """Self-normalised IPS: ``sum(w r) / sum(w)`` (0 when no weight)."""
    pi = _check_pi(data, pi)
    w = _weights(data, pi)
    s = w.sum()
    return float((w * data.rewards).sum() / s) if s > 0 else 0.0


def doubly_robust(data: LoggedData, pi: np.ndarray, q: np.ndarray) -> float:
    """Doubly robust: ``mean(pi . q + w (r - q(a)))`` with the reward model's ``q`` (n, K)."""
    pi = _check_pi(data, pi)
    q = np.asarray(q, dtype=float)
    if q.shape != pi.shape:
        raise OPEError(f"reward model must be (n, K) = {pi.shape}, got {q.shape}")
    rows = np.arange(data.n)
    return float(np.mean((pi * q).sum(axis=1) + _weights(data, pi) * (data.rewards - q[rows, data.actions])))


def fit_reward_model(data: LoggedData, ridge: float = 1.0) -> np.ndarray:
    """``q(x_i, a)`` for every logged context and arm: one ridge regression of the reward on ``x``
    per arm, fitted on that arm's logged impressions, clipped to [0, 1]."""
    d = data.x.shape[1]
    q = np.zeros((data.n, len(data.arms)))
    for k in range(len(data.arms)):
        sel = data.actions == k
        X, r = data.x[sel], data.rewards[sel]
        theta = np.linalg.solve(ridge * np.eye(d) + X.T @ X, X.T @ r)
        q[:, k] = data.x @ theta
    return np.clip(q, 0.0, 1.0)


ESTIMATORS: dict[str, Callable[..., float]] = {
    "ips": lambda data, pi, q: ips(data, pi),
    "snips": lambda data, pi, q: snips(data, pi),
    "dr": doubly_robust,
}


@dataclass(frozen=True)
class Estimate:
    """One estimator's value and its bootstrap interval."""

    estimator: str
    value: float
    lo: float
    hi: float


def bootstrap_interval(data: LoggedData, pi: np.ndarray, q: np.ndarray, estimator: str, n_boot: int = 200,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over impressions (resampled with replacement, ``q`` held fixed)."""
    fn = ESTIMATORS[estimator]
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(data.n, size=data.n)
        vals[b] = fn(data.take(idx), pi[idx], q[idx])
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [a, 1.0 - a])
    return float(lo), float(hi)


def estimate_all(data: LoggedData, pi: np.ndarray, q: np.ndarray | None = None, *, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """IPS, SNIPS and DR with bootstrap intervals (``q`` fitted with :func:`fit_reward_model` if
    not given)."""
    if data.n == 0:
        raise OPEError("no logged impressions to evaluate on")
    pi = _check_pi(data, pi)
    q = fit_reward_model(data) if q is None else q
    out = {}
    for name, fn in ESTIMATORS.items():
        lo, hi = bootstrap_interval(data, pi, q, name, n_boot, level, seed)
        out[name] = Estimate(name, fn(data, pi, q), lo, hi)
    return out


def feature_columns(schema: ContextSchema, features: Sequence[str]) -> np.ndarray:
    """The coordinates of the bias and of ``features`` in ``schema``'s encoding: a candidate that
    sees fewer features is evaluated on ``x[:, columns]``."""
    unknown = set(features) - set(schema.features)
    if unknown:
        raise OPEError(f"features {sorted(unknown)} are not in the schema ({list(schema.features)})")
    cols, pos = [0], 1
    for name, vals in schema.features.items():
        if name in features:
            cols += range(pos, pos + len(vals))
        pos += len(vals)
    return np.asarray(cols)


def replay_probabilities(policy, data: LoggedData, epsilon: float = 0.0, *, learn: bool = True,
                         columns: np.ndarray | None = None) -> np.ndarray:
    """The candidate's action distribution on each logged context, in log order.

    Before impression ``i`` the policy has learnt from the logged impressions ``< i`` (their theme,
    context and reward: what it would have been trained on offline); ``learn=False`` evaluates it
    as it is.  ``columns`` selects the features the candidate sees (:func:`feature_columns`).
    The policy's arms must be ``data.arms`` in that order."""
    if tuple(policy.arms) != tuple(data.arms):
        raise OPEError(f"policy arms {list(policy.arms)} != logged arms {list(data.arms)}")
    X = data.x if columns is None else data.x[:, columns]
    pi = np.empty((data.n, len(data.arms)))
    for i in range(data.n):
        pi[i] = policy_probabilities(policy, X[i], epsilon)
        if learn:
            policy.update(data.arms[data.actions[i]], X[i], float(data.rewards[i]))
    return pi


def logged_from_rows(rows: Sequence[Mapping], schema: ContextSchema, arms: Sequence[str]) -> LoggedData:
    """Logged data from impression rows ``{theme, propensity, clicked, features}`` (rows whose theme
    is not an arm or whose propensity is unknown are left out)."""
    idx = {a: i for i, a in enumerate(arms)}
    keep = [r for r in rows if r.get("theme") in idx and r.get("propensity") is not None and r["propensity"] > 0]
    x = np.array([schema.encode(r.get("features") or {}) for r in keep]).reshape(len(keep), schema.dim)
    return LoggedData(x, np.array([idx[r["theme"]] for r in keep], dtype=int),
                      np.array([1.0 if r.get("clicked") else 0.0 for r in keep]),
                      np.array([float(r["propensity"]) for r in keep]), tuple(arms))


@dataclass(frozen=True)
class Candidate:
    """A policy to evaluate: a factory of a fresh instance and the features it sees."""

    name: str
    make: Callable[[int], object]  # dim -> policy
    features: tuple[str, ...] | None = None  # None: every feature of the schema


def default_candidates(arms: Sequence[str], schema: ContextSchema) -> list[Candidate]:
    """Random, context-free UCB1, LinUCB with a smaller and a larger alpha, and LinUCB on the
    user's features only (country, region, gender, device): the questions a team asks of its log."""
    from .bandit import LinUCB, RandomPolicy, UCB1

    arms = tuple(arms)
    user = tuple(f for f in ("country", "region", "gender", "device") if f in schema.features)
    return [
        Candidate("random", lambda d: RandomPolicy(arms, seed=0)),
        Candidate("ucb1", lambda d: UCB1(arms, c=0.2, seed=0)),
        Candidate("linucb alpha=0.1", lambda d: LinUCB(arms, d, alpha=0.1, seed=0)),
        Candidate("linucb alpha=2", lambda d: LinUCB(arms, d, alpha=2.0, seed=0)),
        Candidate("linucb user features", lambda d: LinUCB(arms, d, alpha=1.0, seed=0), user),
    ]


def evaluate_candidates(data: LoggedData, schema: ContextSchema, candidates: Sequence[Candidate],
                        epsilon: float = 0.05, n_boot: int = 200, seed: int = 0) -> list[dict]:
    """One row per (candidate, estimator): ``{policy, estimator, value, lo, hi, n, logged_ctr}``;
    the logging policy's observed CTR comes first (``policy='logged'``, its interval a bootstrap
    of the mean). Each candidate is replayed over the log (:func:`replay_probabilities`)."""
    q = fit_reward_model(data)
    rng = np.random.default_rng(seed)
    boots = [data.rewards[rng.integers(data.n, size=data.n)].mean() for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    logged = float(data.rewards.mean())
    rows = [{"policy": "logged", "estimator": "observed", "value": logged, "lo": float(lo), "hi": float(hi),
             "n": data.n, "logged_ctr": logged}]
    for c in candidates:
        cols = None if c.features is None else feature_columns(schema, c.features)
        dim = schema.dim if cols is None else len(cols)
        pi = replay_probabilities(c.make(dim), data, epsilon, columns=cols)
        for name, est in estimate_all(data, pi, q, n_boot=n_boot, seed=seed).items():
            rows.append({"policy": c.name, "estimator": name, "value": est.value, "lo": est.lo, "hi": est.hi,
                         "n": data.n, "logged_ctr": logged})
    return rows
