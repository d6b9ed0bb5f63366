"""The A/B report: CTR per variant, uplift over control with 95% intervals, a plot.

Not partitioned: it reads the impressions and clicks logged by the serving API (all merchants,
plus a table per merchant) from the metadata DB.

Statistics (per variant v against control c; n impressions, k clicks, p = k/n):
* CTR interval: Wilson score interval.
* Absolute uplift p_v - p_c: Newcombe's hybrid score interval (method 10 of Newcombe 1998), built
  from the two Wilson intervals; well-behaved at CTRs of a few percent and with zero clicks.
* Relative uplift p_v / p_c - 1: delta method on the log ratio (Katz):
  se = sqrt((1-p_v)/k_v + (1-p_c)/k_c), interval exp(log(p_v/p_c) +- 1.96 se) - 1; undefined
  (reported as n/a) while either arm has no clicks.
"""


import io
import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from resources.bandit_store import BanditStore
from resources.object_store import ObjectStore

Z95 = 1.959963984540054
VARIANT_ORDER = ("control", "positioned", "random", "bandit")
LABELS = {"control": "control (photo)", "positioned": "positioned product", "random": "generated, random theme",
          "bandit": "generated, LinUCB theme"}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
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


def compute_report(counts: list[dict]) -> list[VariantRow]:
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


def _pct(x: Optional[float], signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:+.2f}%" if signed else f"{x * 100:.2f}%"


def markdown_table(rows: list[VariantRow]) -> str:
    out = ["| variant | impressions | clicks | CTR [95% CI] | CTR diff vs control [95% CI] | uplift vs control [95% CI] |",
           "|---|---:|---:|---|---|---|"]
    for r in rows:
        diff = "—" if r.variant == "control" else f"{_pct(r.diff, True)} [{_pct(r.diff_lo, True)}, {_pct(r.diff_hi, True)}]"
        upl = "—" if r.variant == "control" else f"{_pct(r.uplift, True)} [{_pct(r.uplift_lo, True)}, {_pct(r.uplift_hi, True)}]"
        out.append(f"| {r.variant} | {r.impressions} | {r.clicks} | {_pct(r.ctr)} [{_pct(r.ctr_lo)}, {_pct(r.ctr_hi)}] "
                   f"| {diff} | {upl} |")
    return "\n".join(out)


def plot_png(rows: list[VariantRow], title: str = "A/B: CTR per variant") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    names = [LABELS.get(r.variant, r.variant) for r in rows]
    ctr = [r.ctr * 100 for r in rows]
    err = [[(r.ctr - r.ctr_lo) * 100 for r in rows], [(r.ctr_hi - r.ctr) * 100 for r in rows]]
    colours = ["#8a93a6" if r.variant == "control" else "#3f7fd9" for r in rows]
    ax1.bar(range(len(rows)), ctr, yerr=err, capsize=5, color=colours)
    ax1.set_xticks(range(len(rows)), names, rotation=15, ha="right", fontsize=8)
    ax1.set_ylabel("CTR (%) with 95% Wilson interval")
    ax1.set_title("CTR per variant")
    for i, r in enumerate(rows):
        ax1.text(i, 0, f"n={r.impressions}", ha="center", va="bottom", fontsize=7, color="white")
    up = [r for r in rows if r.uplift is not None]
    if up:
        y = [r.uplift * 100 for r in up]
        e = [[(r.uplift - r.uplift_lo) * 100 for r in up], [(r.uplift_hi - r.uplift) * 100 for r in up]]
        ax2.errorbar(range(len(up)), y, yerr=e, fmt="o", capsize=6, color="#d9663f")
        ax2.set_xticks(range(len(up)), [LABELS.get(r.variant, r.variant) for r in up], rotation=15, ha="right", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no uplift yet (control or variant without clicks)", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.axhline(0, color="#444", lw=0.8)
    ax2.set_ylabel("relative uplift vs control (%), 95% CI")
    ax2.set_title("Uplift over control (delta method)")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def build_report(bandit_store, store, since: Optional[float] = None, now: Optional[float] = None) -> dict:
    """Compute the report and write the plot to the object store. The asset is a thin wrapper."""
    counts = bandit_store.variant_counts(since=since)
    rows = compute_report(counts)
    merchants = sorted({r["merchant"] for r in counts})
    per_merchant = {m: compute_report([r for r in counts if r["merchant"] == m]) for m in merchants}
    png = plot_png(rows, f"A/B: CTR per variant ({sum(r.impressions for r in rows)} impressions, "
                         f"{len(merchants)} merchants)")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))  # UTC; keys are lowercase
    key = f"reports/ab/ab_report-{stamp}.png"
    store.put_bytes(key, png, "image/png")
    store.put_bytes("reports/ab/latest.png", png, "image/png")
    return {"rows": rows, "per_merchant": per_merchant, "plot_key": key, "png": png,
            "table": markdown_table(rows)}


@asset(group_name="reports", description="CTR per A/B variant, uplift over control with 95% intervals, and a plot.")
def ab_report(context: AssetExecutionContext, bandit_store: BanditStore, store: ObjectStore) -> MaterializeResult:
    rep = build_report(bandit_store, store)
    md = rep["table"]
    for m, rows in rep["per_merchant"].items():
        md += f"\n\n**{m}**\n\n" + markdown_table(rows)
    by = {r.variant: r for r in rep["rows"]}
    meta = {
        "report": MetadataValue.md(md),
        "plot_key": rep["plot_key"],
        "impressions": sum(r.impressions for r in rep["rows"]),
        "clicks": sum(r.clicks for r in rep["rows"]),
        "rows": MetadataValue.json([asdict(r) for r in rep["rows"]]),
    }
    for v in ("positioned", "random", "bandit"):
        if v in by and by[v].uplift is not None:
            meta[f"uplift_{v}"] = round(by[v].uplift, 6)
    try:  # an inline preview in the Dagster UI where the store is a local directory
        import base64

        meta["plot"] = MetadataValue.md(f"![ab report](data:image/png;base64,{base64.b64encode(rep['png']).decode()})")
    except Exception:  # pragma: no cover
        pass
    context.log.info(f"ab_report: plot at {rep['plot_key']}")
    return MaterializeResult(metadata=meta)
