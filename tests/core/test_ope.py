"""Off-policy evaluation: ε-mixed propensities, IPS/SNIPS/DR checked against Open Bandit Pipeline
(obp.ope) on the same logged data, and DR's interval covering a known policy's true CTR."""
import numpy as np
import pytest

from bggen_assets.core.bandit import LinUCB, RandomPolicy, UCB1, default_schema
from bggen_assets.core.bandit_simulation import ClickModel, log_traffic
from bggen_assets.core.exploration import (
    ExplorationError, greedy_probabilities, mixed_probabilities, policy_probabilities, sample_arm,
)
from bggen_assets.core.ope import (
    LoggedData, OPEError, doubly_robust, estimate_all, feature_columns, fit_reward_model, ips,
    logged_from_rows, replay_probabilities, snips,
)

ARMS = ("a", "b", "c", "d")


def _logged(n=3000, epsilon=0.2, seed=0):
    schema = default_schema()
    model = ClickModel.fast(schema, ARMS, seed=seed)
    logger = LinUCB(ARMS, schema.dim, alpha=0.5, seed=seed)
    data, C = log_traffic(logger, n, epsilon, seed=seed, model=model)
    return schema, model, data, C


def test_mixed_probabilities_keep_every_arm_positive_and_sum_to_one():
    p = mixed_probabilities(np.array([0.1, 0.5, 0.5, -2.0]), 0.2)
    assert np.allclose(p, [0.05, 0.45, 0.45, 0.05]) and p.sum() == pytest.approx(1.0)
    assert greedy_probabilities(np.array([np.inf, 1.0, np.inf])).tolist() == [0.5, 0.0, 0.5]
    pol = LinUCB(ARMS, 5)
    assert policy_probabilities(RandomPolicy(ARMS), None, 0.0).tolist() == [0.25] * 4
    assert policy_probabilities(pol, np.ones(5), 0.0).tolist() == [0.25] * 4  # all tied
    with pytest.raises(ExplorationError, match="epsilon"):
        mixed_probabilities(np.zeros(3), 1.5)
    with pytest.raises(ExplorationError, match="NaN"):
        greedy_probabilities(np.array([np.nan, 1.0]))
    rng = np.random.default_rng(0)
    draws = np.bincount([sample_arm(p, rng) for _ in range(20000)], minlength=4) / 20000
    assert np.allclose(draws, p, atol=0.015)


@pytest.mark.parametrize("scores,eps", [([0.1, 0.5, 0.5, -2.0], 0.2), ([1.0, 0.0, 0.0], 0.0), ([0.0, 0.0], 1.0),
                                        ([np.inf, 1.0, np.inf, 2.0, 0.0], 0.05)])
def test_the_serving_draw_follows_the_mixed_distribution(scores, eps):
    """draw_mixed (the hot path: one uniform, plain floats) draws from mixed_probabilities and
    returns the drawn arm's probability under it."""
    from bggen_assets.core.exploration import draw_mixed

    p = mixed_probabilities(np.array(scores), eps)
    us = (np.arange(40000) + 0.5) / 40000  # a uniform grid: the frequencies are exact up to 1/40000
    got = [draw_mixed(scores, eps, u) for u in us]
    freq = np.bincount([k for k, _ in got], minlength=len(scores)) / len(us)
    assert np.allclose(freq, p, atol=1e-4)
    assert all(prob == pytest.approx(p[k]) for k, prob in got)


def test_logged_propensities_are_the_sampling_probabilities():
    _, _, data, _ = _logged(n=2000, epsilon=0.2)
    assert (data.propensities >= 0.2 / 4 - 1e-12).all() and (data.propensities <= 0.8 + 0.05 + 1e-12).all()
    with pytest.raises(OPEError, match="epsilon > 0"):
        LoggedData(data.x, data.actions, data.rewards, np.where(data.actions == 0, 0.0, 1.0), data.arms)


def _obp_estimates(data: LoggedData, pi: np.ndarray, q: np.ndarray) -> dict:
    from obp.ope import DoublyRobust, InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting

    kw = dict(reward=data.rewards, action=data.actions, pscore=data.propensities, action_dist=pi[:, :, None])
    return {
        "ips": InverseProbabilityWeighting().estimate_policy_value(**kw),
        "snips": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**kw),
        "dr": DoublyRobust().estimate_policy_value(**kw, estimated_rewards_by_reg_model=q[:, :, None]),
    }


@pytest.mark.parametrize("candidate", ["random", "ucb1", "linucb-alpha2", "linucb-user-features"])
def test_estimators_equal_open_bandit_pipeline(candidate):
    schema, _, data, _ = _logged()
    cols = None
    if candidate == "random":
        pol = RandomPolicy(ARMS)
    elif candidate == "ucb1":
        pol = UCB1(ARMS, c=0.5)
    elif candidate == "linucb-alpha2":
        pol = LinUCB(ARMS, schema.dim, alpha=2.0, seed=1)
    else:
        cols = feature_columns(schema, ["country", "gender", "device"])
        pol = LinUCB(ARMS, len(cols), alpha=0.5, seed=1)
    pi = replay_probabilities(pol, data, epsilon=0.1, columns=cols)
    q = fit_reward_model(data)
    ref = _obp_estimates(data, pi, q)
    ours = {"ips": ips(data, pi), "snips": snips(data, pi), "dr": doubly_robust(data, pi, q)}
    for name in ours:
        assert ours[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-12), (name, ours[name], ref[name])


def test_dr_interval_covers_the_true_ctr_of_the_best_policy():
    """A known best policy (the click model's argmax) evaluated on ε-greedy LinUCB logs: its true CTR
    on the logged users is inside DR's 95% bootstrap interval, and DR is closer than the logger."""
    _, model, data, C = _logged(n=4000, epsilon=0.3, seed=3)
    best = np.zeros_like(C)
    best[np.arange(len(C)), C.argmax(axis=1)] = 1.0
    true_value = float((best * C).sum(axis=1).mean())
    est = estimate_all(data, best, n_boot=200, seed=0)
    dr = est["dr"]
    assert dr.lo <= true_value <= dr.hi, (dr, true_value)
    assert dr.hi - dr.lo < 0.08, dr  # an interval that says something
    logged_ctr = data.rewards.mean()
    assert true_value - logged_ctr > 0.01  # the oracle is really better than what was served
    assert abs(dr.value - true_value) < abs(logged_ctr - true_value)
    # IPS/SNIPS intervals too
    for name in ("ips", "snips"):
        assert est[name].lo <= true_value <= est[name].hi, (name, est[name], true_value)


def test_bad_inputs_are_clear_errors():
    _, _, data, _ = _logged(n=200)
    with pytest.raises(OPEError, match=r"\(n, K\)"):
        ips(data, np.ones((10, 4)) / 4)
    with pytest.raises(OPEError, match="sum to 1"):
        ips(data, np.ones((data.n, 4)))
    with pytest.raises(OPEError, match="not in the schema"):
        feature_columns(default_schema(), ["browser"])
    with pytest.raises(OPEError, match="arms"):
        replay_probabilities(RandomPolicy(("x", "y")), data)


def test_logged_from_rows_skips_rows_without_propensity():
    schema = default_schema()
    rows = [{"theme": "a", "propensity": 0.5, "clicked": True, "features": {"country": "us"}},
            {"theme": "b", "propensity": None, "clicked": False, "features": {}},
            {"theme": "zz", "propensity": 0.5, "clicked": False, "features": {}},
            {"theme": "c", "propensity": 0.25, "clicked": False, "features": {"device": "mobile"}}]
    data = logged_from_rows(rows, schema, ARMS)
    assert data.n == 2 and data.actions.tolist() == [0, 2] and data.rewards.tolist() == [1.0, 0.0]
    assert data.x[0, schema.names().index("country=us")] == 1.0


def test_ope_report_asset_end_to_end(store, metadata_db):
    """Logged traffic in the DB (ε-greedy LinUCB on a known click model): the asset writes one row
    per candidate and estimator, as Parquet and JSON, beside the observed CTR."""
    import io
    import json as _json
    import time as _time

    import pandas as pd
    from dagster import materialize

    from bggen_assets.assets.ope_report import ope_report
    from resources.bandit_store import BanditStore

    schema, _, data, _ = _logged(n=600, epsilon=0.2, seed=5)
    bs = BanditStore(metadata_db=metadata_db)
    bs.ensure_schema("m1", "shoes", schema.to_dict())
    names = schema.names()
    now = _time.time()
    rows = []
    for i in range(data.n):
        feats = {}
        for j in np.nonzero(data.x[i])[0][1:]:
            k, v = names[j].split("=", 1)
            feats[k] = v
        rows.append({"impression_id": f"{i:032x}", "ts": now - 3600 + i, "merchant": "m1", "category": "shoes",
                     "product_id": "p", "variant": "bandit", "theme": ARMS[data.actions[i]], "policy": "linucb",
                     "bucket_id": "b", "hit": True, "width": 300, "height": 250, "user_hash": "",
                     "context": _json.dumps(feats), "propensity": float(data.propensities[i]), "source": "served"})
    bs.log_impressions(rows)
    for i in np.nonzero(data.rewards)[0]:
        assert bs.record_click(f"{i:032x}", now)
    res = materialize([ope_report], resources={"bandit_store": bs, "store": store},
                      run_config={"ops": {"ope_report": {"config": {"n_boot": 50}}}})
    assert res.success
    table = pd.read_parquet(io.BytesIO(store.get_bytes("reports/ope/latest.parquet")))
    assert len(table) == 1 + 5 * 3
    logged = table[table.policy == "logged"].iloc[0]
    assert logged.value == pytest.approx(data.rewards.mean()) and logged.n == data.n
    assert set(table.estimator) == {"observed", "ips", "snips", "dr"}
    assert ((table.lo <= table.value + 1e-12) & (table.value <= table.hi + 1e-12)).all()
    pd.testing.assert_frame_equal(pd.DataFrame(_json.loads(store.get_bytes("reports/ope/latest.json"))["rows"]), table)
