"""The A/B report: CTR per variant, uplift over control with 95% intervals, a plot.

Not partitioned: it reads the impressions and clicks logged by the serving API or sent by an ad
server (all merchants, plus a table per merchant) from the metadata DB. Besides the all-time
tables and plot, it writes the breakdowns a team reads: for each window (the last 1, 7 and 28
days by default, or one date range), per merchant, category and placement size, every variant's
CTR and uplift over control with 95% intervals and a sample-size warning, as
``reports/ab/latest.parquet`` and ``reports/ab/latest.json`` (served at ``GET /reports/ab``).
Materialized daily by ``reports_schedule`` with ``ope_report``. The statistics are in
:mod:`bggen_assets.core.ab_stats` (Wilson, Newcombe, delta method); this module renders them as a
Markdown table and a PNG and writes the plot to the object store.
"""
import base64
import io
import json
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Optional

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from resources.bandit_store import BanditStore
from resources.object_store import ObjectStore

from ..core.ab_stats import DEFAULT_MDE, VariantRow, breakdown, compute_report

DIMENSIONS = {
    "all": lambda r: "all",
    "merchant": lambda r: r["merchant"],
    "category": lambda r: f"{r['merchant']}/{r['category']}",
    "placement": lambda r: f"{r['width']}x{r['height']}",
}


class ABReportConfig(Config):
    windows_days: list[int] = [1, 7, 28]
    #: a date range (UTC, ``YYYY-MM-DD``, end inclusive) instead of the windows
    start: Optional[str] = None
    end: Optional[str] = None
    #: the relative uplift the sample-size warning is sized for
    mde: float = DEFAULT_MDE


def _day(s: str) -> float:
    return datetime.combine(date.fromisoformat(s), datetime.min.time(), timezone.utc).timestamp()


def report_windows(windows_days=(1, 7, 28), start: Optional[str] = None, end: Optional[str] = None,
                   now: Optional[float] = None) -> list[tuple[str, float, float]]:
    """``(name, since, until)`` of each window: the last N days, or the date range [start, end]."""
    now = time.time() if now is None else now
    if start or end:
        if not (start and end):
            raise ValueError("a date range needs both start and end (YYYY-MM-DD)")
        since, until = _day(start), _day(end) + 86400
        if until <= since:
            raise ValueError(f"end {end} is before start {start}")
        return [(f"{start}..{end}", since, until)]
    if not windows_days or any(int(d) < 1 for d in windows_days):
        raise ValueError(f"windows_days must be positive numbers of days, got {windows_days!r}")
    return [(f"{int(d)}d", now - int(d) * 86400, now) for d in windows_days]


def breakdown_table(bandit_store, windows: list[tuple[str, float, float]], mde: float = DEFAULT_MDE) -> list[dict]:
    """Every window x dimension x group x variant as a flat row (the Parquet/JSON table)."""
    rows = []
    for name, since, until in windows:
        counts = bandit_store.variant_counts_by_placement(since=since, until=until)
        for r in breakdown(counts, DIMENSIONS, mde):
            rows.append({"window": name, "since": since, "until": until, **r})
    return rows


def write_tables(store, rows: list[dict], prefix: str, **extra) -> dict[str, str]:
    """``rows`` as ``<prefix>/latest.parquet`` (plus a dated copy) and ``<prefix>/latest.json``
    (``{"generated_at", **extra, "rows"}``)."""
    import pandas as pd

    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    body = json.dumps({"generated_at": now, **extra, "rows": rows}, separators=(",", ":")).encode()
    keys = {"parquet": f"{prefix}/latest.parquet", "json": f"{prefix}/latest.json"}
    store.put_bytes(f"{prefix}/{prefix.rsplit('/', 1)[-1]}-{stamp}.parquet", buf.getvalue())
    store.put_bytes(keys["parquet"], buf.getvalue())
    store.put_bytes(keys["json"], body, "application/json")
    return keys

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
def ab_report(context: AssetExecutionContext, config: ABReportConfig, bandit_store: BanditStore,
              store: ObjectStore) -> MaterializeResult:
    rep = build_report(bandit_store, store)
    windows = report_windows(config.windows_days, config.start, config.end)
    table = breakdown_table(bandit_store, windows, config.mde)
    keys = write_tables(store, table, "reports/ab", windows=[w[0] for w in windows], mde=config.mde)
    warn = sorted({f"{r['window']} {r['dimension']}={r['group']}" for r in table
                   if r["underpowered"] and r["dimension"] in ("all", "merchant")})
    meta = {
        "report": MetadataValue.md(rep.markdown()),
        "plot_key": rep.plot_key,
        "impressions": sum(r.impressions for r in rep.rows),
        "clicks": sum(r.clicks for r in rep.rows),
        "rows": MetadataValue.json([asdict(r) for r in rep.rows]),
        "parquet_key": keys["parquet"], "json_key": keys["json"], "breakdown_rows": len(table),
        "sample_size_warnings": MetadataValue.json(warn),
    }
    for r in rep.rows:
        if r.variant != "control" and r.uplift is not None:
            meta[f"uplift_{r.variant}"] = round(r.uplift, 6)
    # the plot inline, so the Dagster UI shows it whatever the store is
    meta["plot"] = MetadataValue.md(f"![ab report](data:image/png;base64,{base64.b64encode(rep.png).decode()})")
    context.log.info(f"ab_report: plot at {rep.plot_key}")
    return MaterializeResult(metadata=meta)
