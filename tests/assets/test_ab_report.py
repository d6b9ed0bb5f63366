"""The A/B statistics (core/ab_stats.py) against published values and an independent
implementation (statsmodels), and the ab_report asset: CTR per variant, uplift over control with
95% intervals, a plot PNG."""
import io
import time

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from bggen_assets.assets.ab_report import markdown_table
from bggen_assets.core.ab_stats import compute_report, newcombe_diff, relative_uplift, wilson


def test_wilson_and_newcombe_reference_values():
    # Newcombe (1998), Table II example: 56/70 vs 48/80 -> diff 0.2000, method 10: 0.0524 to 0.3339
    d, lo, hi = newcombe_diff(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=5e-4) and hi == pytest.approx(0.3339, abs=5e-4)
    # Wilson 95% for 0/10 is [0, 0.2775]; for 5/10 [0.2366, 0.7634]
    assert wilson(0, 10)[0] == 0 and wilson(0, 10)[1] == pytest.approx(0.2775, abs=5e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-4)
    u, ulo, uhi = relative_uplift(120, 4000, 100, 4000)
    assert u == pytest.approx(0.2) and ulo < 0.2 < uhi
    assert relative_uplift(0, 100, 5, 100) == (None, None, None)


# counts as an A/B test sees them: a few to many impressions, CTRs from zero clicks to all clicks
trials = st.integers(min_value=1, max_value=20_000)


def _clicks(draw, n):
    return draw(st.one_of(st.integers(0, min(n, 5)), st.integers(0, n), st.integers(max(0, n - 3), n)))


@st.composite
def arm(draw):
    n = draw(trials)
    return _clicks(draw, n), n


@settings(max_examples=300, deadline=None)
@given(arm())
def test_wilson_equals_statsmodels(a):
    k, n = a
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson(k, n) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(arm(), arm())
def test_newcombe_difference_equals_statsmodels(a1, a0):
    (k1, n1), (k0, n0) = a1, a0
    d, lo, hi = newcombe_diff(k1, n1, k0, n0)
    ref_lo, ref_hi = confint_proportions_2indep(k1, n1, k0, n0, compare="diff", method="newcomb", alpha=0.05)
    assert d == pytest.approx(k1 / n1 - k0 / n0, abs=1e-12)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-9, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(arm(), arm())
@example(a1=(13205, 13206), a0=(1, 1))   # a ratio near 1: its bounds minus 1 lose 8 digits
def test_relative_uplift_equals_statsmodels_log_ratio(a1, a0):
    (k1, n1), (k0, n0) = a1, a0
    u, lo, hi = relative_uplift(k1, n1, k0, n0)
    if k1 == 0 or k0 == 0:  # the log ratio has no interval: reported as n/a
        assert (u, lo, hi) == (None, None, None)
        return
    ref_lo, ref_hi = confint_proportions_2indep(k1, n1, k0, n0, compare="ratio", method="log", alpha=0.05)
    assert u == pytest.approx((k1 / n1) / (k0 / n0) - 1, rel=1e-12)
    # compared on statsmodels' own (ratio) scale: p1/p0 - 1 near 0 cancels digits that both
    # computations carry equally (1.3e-12 apart on the ratio, 1.8e-8 relative after the - 1)
    assert (lo + 1, hi + 1) == pytest.approx((ref_lo, ref_hi), rel=1e-9, abs=1e-12)


def test_interval_coverage_by_simulation():
    """The 95% intervals cover the true difference in about 95% of simulated experiments."""
    rng = np.random.default_rng(0)
    p0, p1, n = 0.03, 0.036, 5000
    cover_d = cover_u = 0
    trials = 800
    for _ in range(trials):
        k0, k1 = rng.binomial(n, p0), rng.binomial(n, p1)
        _, lo, hi = newcombe_diff(k1, n, k0, n)
        cover_d += lo <= p1 - p0 <= hi
        _, ulo, uhi = relative_uplift(k1, n, k0, n)
        cover_u += ulo <= p1 / p0 - 1 <= uhi
    assert 0.92 < cover_d / trials < 0.98 and 0.92 < cover_u / trials < 0.98


def test_report_rows_and_table():
    counts = [{"merchant": "a", "variant": "control", "impressions": 1000, "clicks": 20},
              {"merchant": "b", "variant": "control", "impressions": 1000, "clicks": 20},
              {"merchant": "a", "variant": "bandit", "impressions": 2000, "clicks": 60},
              {"merchant": "a", "variant": "random", "impressions": 500, "clicks": 0}]
    rows = {r.variant: r for r in compute_report(counts)}
    assert list(rows) == ["control", "random", "bandit"]
    assert rows["control"].impressions == 2000 and rows["control"].ctr == pytest.approx(0.02)
    assert rows["bandit"].uplift == pytest.approx(0.5) and rows["bandit"].diff == pytest.approx(0.01)
    assert rows["random"].uplift is None and rows["random"].diff < 0
    md = markdown_table(list(rows.values()))
    assert md.splitlines()[0].startswith("| variant |") and "+50.00%" in md and "n/a" in md


def test_ab_report_asset_end_to_end(store, metadata_db):
    """Impressions and clicks as the API logs them -> the asset -> metadata table and a PNG."""
    from dagster import materialize

    from bggen_assets.assets.ab_report import ab_report
    from resources.bandit_store import BanditStore

    bs = BanditStore(metadata_db=metadata_db)
    rng = np.random.default_rng(1)
    ctr = {"control": 0.02, "positioned": 0.021, "random": 0.025, "bandit": 0.03}
    rows, clicked = [], []
    for i in range(8000):
        v = list(ctr)[i % 4]
        iid = f"{i:032x}"
        rows.append({"impression_id": iid, "ts": time.time(), "merchant": "northwind" if i % 3 else "acme",
                     "category": "footwear", "product_id": "p", "variant": v, "theme": "t", "policy": "linucb",
                     "bucket_id": "b", "hit": True, "width": 300, "height": 250, "user_hash": "", "context": "{}"})
        if rng.random() < ctr[v]:
            clicked.append(iid)
    bs.log_impressions(rows)
    for iid in clicked:
        assert bs.record_click(iid)
    assert not bs.record_click(clicked[0])  # a repeat click does not count
    result = materialize([ab_report], resources={"bandit_store": bs, "store": store})
    assert result.success
    meta = result.asset_materializations_for_node("ab_report")[0].metadata
    assert meta["impressions"].value == 8000 and meta["clicks"].value == len(clicked)
    table = meta["report"].value
    assert "| bandit | 2000 |" in table and "**acme**" in table and "**northwind**" in table
    png = store.get_bytes(meta["plot_key"].value)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size[0] > 800
    assert store.get_bytes("reports/ab/latest.png") == png
    assert "uplift_bandit" in meta


def test_required_impressions_matches_statsmodels_power():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    from bggen_assets.core.ab_stats import required_impressions

    for p0, mde in ((0.02, 0.2), (0.05, 0.1), (0.3, 0.05)):
        ours = required_impressions(p0, mde)
        ref = NormalIndPower().solve_power(proportion_effectsize(p0 * (1 + mde), p0), alpha=0.05, power=0.8)
        assert abs(ours - ref) / ref < 0.02, (p0, mde, ours, ref)  # arcsine vs pooled-normal approximations
    assert required_impressions(0.0) is None


def test_breakdowns_windows_and_the_json_endpoint(store, metadata_db):
    """Windows (1/7/28 days, or a date range), per merchant / category / placement size, the
    sample-size warning; the same numbers as Parquet and at GET /reports/ab."""
    import json

    import pandas as pd
    from dagster import materialize

    from bggen_assets.assets.ab_report import ab_report
    from bggen_assets.serving.api import create_app
    from resources.bandit_store import BanditStore
    from resources.miss_queue import DbMissQueue

    bs = BanditStore(metadata_db=metadata_db)
    now = time.time()
    rows = []
    for i in range(400):
        age_days = (0.5, 3, 20, 40)[i % 4]  # 1d sees 1/4, 7d 2/4, 28d 3/4, the 40-day-old rows none
        rows.append({"impression_id": f"{i:032x}", "ts": now - age_days * 86400, "merchant": "acme" if i % 8 < 4 else "zed",
                     "category": "shoes", "product_id": "p", "variant": ("control", "bandit")[(i // 4) % 2],
                     "theme": "t", "policy": "linucb", "bucket_id": "b", "hit": True,
                     "width": (300, 728)[(i // 16) % 2], "height": (250, 90)[(i // 16) % 2], "user_hash": "",
                     "context": "{}"})
    bs.log_impressions(rows)
    for i in range(0, 400, 5):
        bs.record_click(f"{i:032x}")
    result = materialize([ab_report], resources={"bandit_store": bs, "store": store})
    assert result.success
    table = pd.read_parquet(io.BytesIO(store.get_bytes("reports/ab/latest.parquet")))
    assert set(table.window) == {"1d", "7d", "28d"}
    assert set(table.dimension) == {"all", "merchant", "category", "placement"}
    tot = table[(table.dimension == "all")].groupby("window").impressions.sum().to_dict()
    assert tot == {"1d": 100, "7d": 200, "28d": 300}
    assert set(table[table.dimension == "placement"].group) == {"300x250", "728x90"}
    assert table.underpowered.all()  # 300 impressions cannot show a 20% uplift: the warning says so
    meta = result.asset_materializations_for_node("ab_report")[0].metadata
    assert "28d all=all" in meta["sample_size_warnings"].value
    # a date range instead of windows
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 20 * 86400))
    r2 = materialize([ab_report], resources={"bandit_store": bs, "store": store},
                     run_config={"ops": {"ab_report": {"config": {"start": day, "end": day}}}})
    assert r2.success
    doc = json.loads(store.get_bytes("reports/ab/latest.json"))
    assert doc["windows"] == [f"{day}..{day}"]
    assert sum(r["impressions"] for r in doc["rows"] if r["dimension"] == "all") == 100
    # GET /reports/ab serves the JSON, filtered
    app = create_app(store, DbMissQueue(metadata_db=metadata_db), bs, background=False, prefetch=False)
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        got = client.get("/reports/ab", params={"dimension": "merchant", "group": "acme"}).json()
        assert {r["group"] for r in got["rows"]} == {"acme"} and got["windows"] == [f"{day}..{day}"]
        assert sum(r["impressions"] for r in got["rows"]) == 100 // 2
        assert client.get("/reports/ab", params={"dimension": "nope"}).status_code == 400
    store.delete("reports/ab/latest.json")
    with TestClient(app) as client:
        r = client.get("/reports/ab")
        assert r.status_code == 404 and "ab_report" in r.json()["error"]
