"""A/B statistics: CTR per variant and its uplift over control, with 95% intervals.

Per variant v against control c (n impressions, k clicks, p = k/n):

* CTR interval: the Wilson score interval.
* Absolute uplift p_v - p_c: Newcombe's hybrid score interval (method 10 of Newcombe 1998), built
  from the two Wilson intervals; well-behaved at CTRs of a few percent and with zero clicks.
* Relative uplift p_v / p_c - 1: the delta method on the log ratio (Katz):
  se = sqrt((1-p_v)/k_v + (1-p_c)/k_c), interval exp(log(p_v/p_c) +- z se) - 1; undefined
  (None) while either arm has no clicks.

Pure functions of counts: the ``ab_report`` asset reads the counts and renders the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

#: the two-sided 95% normal quantile, Phi^-1(0.975)
Z95 = 1.959963984540054
#: the report's row order; other variants follow, sorted
VARIANT_ORDER = ("control", "positioned", "random", "bandit")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials ((0, 1) when n is 0)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_diff(k1: int, n1: int, k0: int, n0: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p0 and its Newcombe hybrid score interval."""
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1, z)
    l0, u0 = wilson(k0, n0, z)
    d = p1 - p0
    lo = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return d, lo, hi


def relative_uplift(k1: int, n1: int, k0: int, n0: int, z: float = Z95) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """p1/p0 - 1 with the delta-method (log ratio) interval; None while a side has no clicks."""
    if min(k1, k0, n1, n0) <= 0:
        return None, None, None
    p1, p0 = k1 / n1, k0 / n0
    lr = math.log(p1 / p0)
    se = math.sqrt((1 - p1) / k1 + (1 - p0) / k0)
    return p1 / p0 - 1, math.exp(lr - z * se) - 1, math.exp(lr + z * se) - 1


@dataclass
class VariantRow:
    """One variant's figures; the uplift fields are None for control and while undefined."""

    variant: str
    impressions: int
    clicks: int
    ctr: float
    ctr_lo: float
    ctr_hi: float
    diff: Optional[float] = None
    diff_lo: Optional[float] = None
    diff_hi: Optional[float] = None
    uplift: Optional[float] = None
    uplift_lo: Optional[float] = None
    uplift_hi: Optional[float] = None


def compute_report(counts: Iterable[Mapping]) -> list[VariantRow]:
    """Rows ``{variant, impressions, clicks}`` (any merchant mix, summed) -> one row per variant."""
    agg: dict[str, list[int]] = {}
    for r in counts:
        a = agg.setdefault(r["variant"], [0, 0])
        a[0] += int(r["impressions"])
        a[1] += int(r["clicks"])
    order = [v for v in VARIANT_ORDER if v in agg] + sorted(set(agg) - set(VARIANT_ORDER))
    rows = []
    control = agg.get("control")
    for v in order:
        n, k = agg[v]
        lo, hi = wilson(k, n)
        row = VariantRow(v, n, k, k / n if n else 0.0, lo, hi)
        if control and control[0] > 0 and n > 0 and v != "control":
            row.diff, row.diff_lo, row.diff_hi = newcombe_diff(k, n, control[1], control[0])
            row.uplift, row.uplift_lo, row.uplift_hi = relative_uplift(k, n, control[1], control[0])
        rows.append(row)
    return rows


#: the relative uplift the sample-size warning is sized for (a +20% CTR change)
DEFAULT_MDE = 0.20
#: the one-sided 80% power quantile, Phi^-1(0.8)
Z80 = 0.8416212335729143


def required_impressions(p0: float, mde: float = DEFAULT_MDE, z_alpha: float = Z95, z_power: float = Z80) -> Optional[int]:
    """Impressions per variant to detect a relative uplift ``mde`` over a control CTR ``p0`` at 5%
    two-sided significance and 80% power (two-proportion normal approximation); None if p0 is 0."""
    if not (0.0 < p0 < 1.0):
        return None
    p1 = min(p0 * (1 + mde), 0.999999)
    pbar = (p0 + p1) / 2
    num = (z_alpha * math.sqrt(2 * pbar * (1 - pbar)) + z_power * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))) ** 2
    return int(math.ceil(num / (p1 - p0) ** 2))


def breakdown(counts: Iterable[Mapping], dimensions: Mapping[str, "callable"], mde: float = DEFAULT_MDE) -> list[dict]:
    """Flat report rows for every dimension and group: ``counts`` are rows with a variant,
    impressions, clicks and the fields the ``dimensions`` key functions read (``{"all": lambda r:
    "all", "merchant": lambda r: r["merchant"], ...}``). Each row is a :class:`VariantRow` as a dict
    plus ``dimension``, ``group``, ``required`` (impressions per variant for ``mde``) and
    ``underpowered`` (the variant or the control has fewer impressions than that)."""
    out = []
    counts = list(counts)
    for dim, key in dimensions.items():
        groups: dict[str, list] = {}
        for r in counts:
            groups.setdefault(str(key(r)), []).append(r)
        for group in sorted(groups):
            rows = compute_report(groups[group])
            control = next((r for r in rows if r.variant == "control"), None)
            need = required_impressions(control.ctr, mde) if control is not None else None
            for r in rows:
                n_ctl = control.impressions if control is not None else 0
                under = need is None or r.impressions < need or n_ctl < need
                out.append({"dimension": dim, "group": group, **r.__dict__, "required": need, "underpowered": under})
    return out
