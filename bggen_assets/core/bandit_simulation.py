"""A known contextual click model to measure the bandit policies' regret (benchmarks and tests).

* :class:`ClickModel`: ``ctr_a(x) = clip(sigmoid(W_a . x), lo, hi)`` over a
  :class:`~bggen_assets.core.bandit.ContextSchema`; :meth:`ClickModel.synthetic` is the realistic
  model (CTR 0.5%-8%), :meth:`ClickModel.fast` the one unit tests learn in a few thousand
  impressions.
* :func:`simulate` runs one policy, :func:`simulate_replicas` several replicas that merge deltas;
  both return a :class:`SimResult` (cumulative clicks, expected clicks, oracle, regret).
* :class:`OraclePolicy` (knows the model) and :class:`FixedPolicy` (one theme) are the yardsticks;
  :func:`best_fixed_arm` is the theme a context-free policy would pick in hindsight.

Pure logic, like :mod:`bggen_assets.core.bandit`; nothing here is used when serving.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .bandit import (
    BanditError,
    ContextSchema,
    Policy,
    UnknownArmError,
    check_arms,
    check_reward,
    default_schema,
    merge_states,
)

__all__ = ["ClickModel", "OraclePolicy", "FixedPolicy", "SimResult", "best_fixed_arm", "log_traffic",
           "simulate", "simulate_replicas"]


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
        arms = check_arms(arms)
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
        _check_arm(arm, self.arms)
        check_reward(reward)


class FixedPolicy:
    """Always shows one arm (e.g. :func:`best_fixed_arm`: the context-free ceiling).  Learns nothing."""

    kind = "fixed"

    def __init__(self, arms: Sequence[str], arm: str):
        self.arms = check_arms(arms)
        _check_arm(arm, self.arms)
        self.arm = arm

    def select(self, x: Any = None, rng: np.random.Generator | None = None) -> str:
        return self.arm

    def update(self, arm: str, x: Any, reward: float) -> None:
        _check_arm(arm, self.arms)
        check_reward(reward)


def _check_arm(arm: Any, arms: Sequence[str]) -> None:
    if arm not in arms:
        raise UnknownArmError(f"unknown arm {arm!r}; this policy's arms are {list(arms)}")


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


def best_fixed_arm(model: ClickModel, n: int, seed: int = 0) -> str:
    """The arm with the best mean true CTR over the ``n`` users that :func:`simulate` draws for
    ``seed``: what the best context-free policy could at most achieve on them (in hindsight)."""
    _, C, _, _ = _sim_inputs(model, int(n), seed)
    return model.arms[int(np.argmax(C.mean(axis=0)))]


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


def log_traffic(policy: Policy, n: int, epsilon: float, seed: int = 0,
                model: ClickModel | None = None):
    """Serve ``n`` simulated impressions with ``policy`` ε-mixed (what the serving API does) and
    log them as off-policy data: ``(LoggedData, C)`` where ``C`` (n, K) is every arm's true CTR on
    each logged context, so a candidate's true value on the log is ``mean(sum(pi * C, axis=1))``."""
    from .exploration import policy_probabilities, sample_arm
    from .ope import LoggedData

    model = model or ClickModel.synthetic()
    if tuple(policy.arms) != tuple(model.arms):
        raise BanditError(f"policy arms {list(policy.arms)} != model arms {list(model.arms)}")
    X, C, U, rng = _sim_inputs(model, int(n), seed)
    actions = np.empty(int(n), dtype=np.int64)
    props = np.empty(int(n))
    rewards = np.empty(int(n))
    for t in range(int(n)):
        probs = policy_probabilities(policy, X[t], epsilon)
        k = sample_arm(probs, rng)
        actions[t], props[t] = k, probs[k]
        rewards[t] = 1.0 if U[t] < C[t, k] else 0.0
        policy.update(model.arms[k], X[t], rewards[t])
    return LoggedData(X, actions, rewards, props, tuple(model.arms)), C
