"""The off-policy evaluation report: the CTR candidate policies would have had on the logged traffic.

Reads the impressions (with the logged propensity of their theme) and clicks of the last ``days``
from the metadata DB, per (merchant, category) encodes their contexts with the stored bandit
schema, and estimates with IPS, SNIPS and DR (bootstrap 95% intervals) the CTR of each candidate
of :func:`bggen_assets.core.ope.default_candidates` beside the logged policy's observed CTR. The
maths is in :mod:`bggen_assets.core.ope`; this asset selects the data and writes the table
(Parquet and JSON under ``reports/ope/``) and its Markdown.
"""

import json
import time
from typing import Optional

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from resources.bandit_store import BanditStore
from resources.object_store import ObjectStore

from ..core.bandit import ContextSchema
from ..core.ope import default_candidates, evaluate_candidates, logged_from_rows
from .ab_report import write_tables

#: a (merchant, category) with fewer logged impressions than this is listed, not estimated
MIN_IMPRESSIONS = 200


class OPEReportConfig(Config):
    days: float = 28.0
    epsilon: float = 0.05  # the exploration the candidates would be served with
    n_boot: int = 200


def ope_rows(bandit_store, days: float = 28.0, epsilon: float = 0.05, n_boot: int = 200,
             now: Optional[float] = None) -> tuple[list[dict], list[dict]]:
    """(estimate rows, skipped groups) over the logged themed hits with a propensity."""
    now = time.time() if now is None else now
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in bandit_store.logged_impressions(since=now - days * 86400):
        if r["propensity"] is None or not r["hit"] or r["variant"] not in ("random", "bandit"):
            continue
        groups.setdefault((r["merchant"], r["category"]), []).append(
            {"theme": r["theme"], "propensity": r["propensity"], "clicked": bool(r["clicked"]),
             "features": json.loads(r["context"])})
    rows, skipped = [], []
    for (merchant, category), logged in sorted(groups.items()):
        stored = bandit_store.load_schema(merchant, category)
        if stored is None or len(logged) < MIN_IMPRESSIONS:
            skipped.append({"merchant": merchant, "category": category, "impressions": len(logged),
                            "why": "no stored schema" if stored is None else f"fewer than {MIN_IMPRESSIONS} impressions"})
            continue
        schema = ContextSchema(stored)
        arms = sorted({r["theme"] for r in logged})
        data = logged_from_rows(logged, schema, arms)
        for row in evaluate_candidates(data, schema, default_candidates(arms, schema), epsilon, n_boot):
            rows.append({"merchant": merchant, "category": category, **row})
    return rows, skipped


def markdown(rows: list[dict]) -> str:
    out = ["| merchant | category | policy | estimator | CTR | 95% interval | n |", "|---|---|---|---|---:|---|---:|"]
    for r in rows:
        out.append(f"| {r['merchant']} | {r['category']} | {r['policy']} | {r['estimator']} | {r['value'] * 100:.2f}% "
                   f"| [{r['lo'] * 100:.2f}%, {r['hi'] * 100:.2f}%] | {r['n']} |")
    return "\n".join(out)


@asset(group_name="reports",
       description="Off-policy evaluation: IPS / SNIPS / DR estimates of candidate policies' CTR on the logged traffic.")
def ope_report(context: AssetExecutionContext, config: OPEReportConfig, bandit_store: BanditStore,
               store: ObjectStore) -> MaterializeResult:
    rows, skipped = ope_rows(bandit_store, config.days, config.epsilon, config.n_boot)
    keys = write_tables(store, rows, "reports/ope")
    context.log.info(f"ope_report: {len(rows)} rows, {len(skipped)} groups skipped")
    return MaterializeResult(metadata={"report": MetadataValue.md(markdown(rows) if rows else "no data yet"),
                                       "rows": len(rows), "skipped": MetadataValue.json(skipped),
                                       "parquet_key": keys["parquet"], "json_key": keys["json"]})
