"""The A/B report: CTR per variant, uplift over control with 95% intervals, a plot.

Not partitioned: it reads the impressions and clicks logged by the serving API (all merchants,
plus a table per merchant) from the metadata DB. The statistics are in
:mod:`bggen_assets.core.ab_stats` (Wilson, Newcombe, delta method); this module renders them as a
Markdown table and a PNG and writes the plot to the object store.
"""
import base64
import io
import time
from dataclasses import asdict, dataclass
from typing import Optional

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from resources.bandit_store import BanditStore
from resources.object_store import ObjectStore

from ..core.ab_stats import VariantRow, compute_report

LABELS = {"control": "control (photo)", "positioned": "positioned product", "random": "generated, random theme",
          "bandit": "generated, LinUCB theme"}


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


@dataclass
class ABReport:
    """The report of one materialization: rows over all merchants, rows per merchant, the plot."""

    rows: list[VariantRow]
    per_merchant: dict[str, list[VariantRow]]
    plot_key: str
    png: bytes

    def markdown(self) -> str:
        """The table over all merchants, then one per merchant."""
        return markdown_table(self.rows) + "".join(f"\n\n**{m}**\n\n" + markdown_table(rows)
                                                   for m, rows in self.per_merchant.items())


def build_report(bandit_store, store, since: Optional[float] = None, now: Optional[float] = None) -> ABReport:
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
    return ABReport(rows, per_merchant, key, png)


@asset(group_name="reports", description="CTR per A/B variant, uplift over control with 95% intervals, and a plot.")
def ab_report(context: AssetExecutionContext, bandit_store: BanditStore, store: ObjectStore) -> MaterializeResult:
    rep = build_report(bandit_store, store)
    meta = {
        "report": MetadataValue.md(rep.markdown()),
        "plot_key": rep.plot_key,
        "impressions": sum(r.impressions for r in rep.rows),
        "clicks": sum(r.clicks for r in rep.rows),
        "rows": MetadataValue.json([asdict(r) for r in rep.rows]),
    }
    for r in rep.rows:
        if r.variant != "control" and r.uplift is not None:
            meta[f"uplift_{r.variant}"] = round(r.uplift, 6)
    # the plot inline, so the Dagster UI shows it whatever the store is
    meta["plot"] = MetadataValue.md(f"![ab report](data:image/png;base64,{base64.b64encode(rep.png).decode()})")
    context.log.info(f"ab_report: plot at {rep.plot_key}")
    return MaterializeResult(metadata=meta)
