"""Exploration with known propensities: the probability with which a served theme was chosen.

Off-policy evaluation needs, for every logged impression, the probability ``p(a | x) > 0`` with
which the logging policy picked the theme it showed.  A greedy LinUCB is deterministic (p is 1 for
its choice and 0 for every other theme), so its logs cannot evaluate any other policy.  Here a
policy's scores become a distribution by ε-mixing:

    p(a | x) = (1 - ε) * [a in argmax scores] / |argmax| + ε / K

so every theme keeps at least ``ε / K``.  With ``ε = 0`` it is the greedy policy with ties broken
uniformly (what :meth:`LinUCB.select` does).  Pure logic, no DB, no HTTP.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .bandit import BanditError

__all__ = ["ExplorationError", "check_epsilon", "greedy_probabilities", "mixed_probabilities",
           "policy_probabilities", "sample_arm", "draw_mixed"]


class ExplorationError(BanditError):
    """A bad exploration parameter or a score vector that is not finite."""


def check_epsilon(epsilon: Any) -> float:
    """``epsilon`` as a float in [0, 1] (else :class:`ExplorationError`)."""
    try:
        e = float(epsilon)
    except (TypeError, ValueError):
        raise ExplorationError(f"epsilon must be a number in [0, 1], got {epsilon!r}") from None
    if not (0.0 <= e <= 1.0):
        raise ExplorationError(f"epsilon must be in [0, 1], got {epsilon!r}")
    return e


def greedy_probabilities(scores: np.ndarray) -> np.ndarray:
    """Uniform over the arms with the highest score (ties share), zero elsewhere.

    ``+inf`` scores (UCB1's unplayed arms) are the maximum; NaN is an error."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise ExplorationError(f"scores must be a non-empty vector, got shape {s.shape}")
    if np.isnan(s).any():
        raise ExplorationError(f"scores contain NaN: {s.tolist()}")
    top = s == s.max()
    return top / top.sum()


def mixed_probabilities(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """``(1 - ε) * greedy + ε / K``: every arm at least ``ε / K``; sums to 1."""
    e = check_epsilon(epsilon)
    g = greedy_probabilities(scores)
    return (1.0 - e) * g + e / g.size


def policy_probabilities(policy: Any, x: np.ndarray | None, epsilon: float) -> np.ndarray:
    """The action distribution of a policy (LinUCB, UCB1, random: anything with ``arms``) for one
    context, in ``policy.arms`` order.  A policy without ``scores`` (random) is uniform."""
    k = len(policy.arms)
    scores = getattr(policy, "scores", None)
    if scores is None or getattr(policy, "kind", "") == "random":
        return np.full(k, 1.0 / k)
    return mixed_probabilities(scores(x), epsilon)


def sample_arm(probs: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn from ``probs`` (which must be finite, >= 0 and sum to 1)."""
    p = np.asarray(probs, dtype=float)
    if not (np.isfinite(p).all() and (p >= 0).all() and math.isclose(p.sum(), 1.0, rel_tol=1e-9)):
        raise ExplorationError(f"not a probability vector: {p.tolist()}")
    return int(rng.choice(p.size, p=p))


def draw_mixed(scores: list[float], epsilon: float, u: float) -> tuple[int, float]:
    """One draw from :func:`mixed_probabilities` with one uniform ``u`` in [0, 1), and the drawn
    arm's probability: the serving hot path (plain floats, no arrays). With probability ε a
    uniform arm, else one of the best arms (ties uniform); ``ε`` must be in [0, 1]."""
    k = len(scores)
    m = max(scores)
    if m != m:
        raise ExplorationError(f"scores contain NaN: {scores}")
    ties = [i for i, v in enumerate(scores) if v == m]
    if u < epsilon:
        i = min(int(u / epsilon * k), k - 1)
    else:
        i = ties[min(int((u - epsilon) / (1.0 - epsilon) * len(ties)), len(ties) - 1)]
    p = epsilon / k + ((1.0 - epsilon) / len(ties) if i in ties else 0.0)
    return i, p
