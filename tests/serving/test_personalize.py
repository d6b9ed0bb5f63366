"""Personalisation: A/B assignment, context building, DB-backed bandit state (round trip vs mabwiser,
exact merging of replicas through the DB, concurrent flushes), delayed click rewards, regret."""
import threading

import numpy as np
import pytest

from bggen_assets.core.bandit import LinUCB, RandomPolicy, UCB1
from bggen_assets.core.bandit_simulation import ClickModel, simulate
from bggen_assets.serving.personalize import (
    VARIANTS,
    Choice,
    Personalizer,
    ServingConfig,
    ServingConfigError,
    assign_variant,
    build_features,
    schema_for,
    user_hash,
)

M, C = "northwind", "footwear"
ARMS = ["urban-concrete", "beach-sunset", "pastel-podium"]
PRODUCTS = {"p1": {"subcategory": "sneakers", "colour": "red"}, "p2": {"subcategory": "boots", "colour": "teal"}}


@pytest.fixture
def bandit_store(metadata_db):
    from resources.bandit_store import BanditStore

    return BanditStore(metadata_db=metadata_db)


def _events(n, seed=0, theme_from=None):
    """(features, served theme, clicked) drawn from a known contextual click model."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = build_features(country=rng.choice(["us", "gb", "de", "xx"]), gender=rng.choice(["female", "male", ""]),
                           device=rng.choice(["mobile", "desktop"]), subcategory=rng.choice(["sneakers", "boots"]),
                           colour=rng.choice(["red", "teal", "black"]), width=int(rng.choice([300, 728, 1080])),
                           height=int(rng.choice([250, 90, 1080])))
        theme = ARMS[int(rng.integers(3))] if theme_from is None else theme_from
        out.append((f, theme, bool(rng.random() < 0.3)))
    return out


def _serve(pers: Personalizer, events, variant="bandit"):
    """Replay events through the serving path: impression (A += x x^T) then click (b += x)."""
    for f, theme, clicked in events:
        slot = pers.slot(M, C, "linucb" if variant == "bandit" else "random", ARMS, PRODUCTS)
        choice = Choice(variant, theme, slot.kind, slot.schema.encode(f))
        pers.record_impression(choice, M, C, ARMS, PRODUCTS, hit=True)
        if clicked:
            pers.record_click(variant=variant, merchant=M, category=C, policy=slot.kind, theme=theme, features=f,
                              arms=ARMS, products=PRODUCTS)


# ------------------------------------------------------------------------------ A/B and context
def test_variant_assignment_is_deterministic_and_follows_shares():
    cfg = ServingConfig(variant_shares={"control": 0.1, "positioned": 0.2, "random": 0.3, "bandit": 0.4})
    users = [f"user-{i}" for i in range(20000)]
    got = [assign_variant(u, cfg) for u in users]
    assert got == [assign_variant(u, cfg) for u in users]
    for v, share in cfg.variant_shares.items():
        assert abs(got.count(v) / len(users) - share) < 0.015, v
    only = ServingConfig(variant_shares={"bandit": 3})
    assert {assign_variant(u, only) for u in users[:500]} == {"bandit"}
    # another salt reshuffles users
    other = ServingConfig(variant_shares=cfg.variant_shares, ab_salt="other")
    assert sum(a != assign_variant(u, other) for u, a in zip(users[:2000], got)) > 800
    assert user_hash("alice") != "alice" and len(user_hash("alice")) == 16 and user_hash(None) == ""


@pytest.mark.parametrize("bad", [
    {"variant_shares": {"treatment": 1}}, {"variant_shares": {"control": -1}}, {"variant_shares": {"control": 0}},
    {"default_policy": "thompson"}, {"policies": {"acme": "greedy"}}, {"alpha": -1}, {"ridge": 0},
    {"flush_interval_s": 0}, {"epsilon": -0.1}, {"epsilon": 1.5}, {"epsilon": "some"},
    {"attribution_window_s": 0}, {"miss_min_requests": 0}, {"miss_merchant_cap": 0}, {"miss_product_period_s": 0},
])
def test_bad_serving_config_is_a_clear_error(bad):
    with pytest.raises(ServingConfigError):
        ServingConfig(**bad)


def test_config_from_file(tmp_path):
    p = tmp_path / "serving.yaml"
    p.write_text("variant_shares: {control: 1, bandit: 3}\npolicies: {acme: ucb1}\nalpha: 0.5\n")
    cfg = ServingConfig.from_file(p)
    assert cfg.variant_shares["bandit"] == 0.75 and cfg.policy_for("acme") == "ucb1" and cfg.policy_for("x") == "linucb"
    p.write_text("nonsense_key: 1\n")
    with pytest.raises(ServingConfigError, match="nonsense_key"):
        ServingConfig.from_file(p)


def test_features_and_schema():
    f = build_features(country="US", gender="Female", device="mobile", subcategory="Sneakers", colour="red",
                       width=728, height=90)
    assert f == {"country": "us", "region": "na", "gender": "female", "device": "mobile", "subcategory": "sneakers",
                 "colour": "red", "aspect": "wide", "size": "small"}
    assert build_features(region="EU", width=1080, height=1920) == {"region": "eu", "aspect": "tall", "size": "large"}
    s = schema_for(PRODUCTS)
    assert s["subcategory"] == ["boots", "sneakers"] and "teal" in s["colour"] and "red" in s["colour"]
    from bggen_assets.core.bandit import ContextSchema

    x = ContextSchema(s).encode(f)
    assert x[0] == 1.0 and x.sum() == 9.0  # bias + 8 known one-hot features


# ------------------------------------------------------------------------------ DB-backed state
def test_db_round_trip_matches_mabwiser(bandit_store):
    """Events through the serving path, flushed to the DB, loaded by a fresh replica: its scores
    equal mabwiser's LinUCB fitted on the same (context, theme, click) events."""
    from mabwiser.mab import MAB, LearningPolicy

    cfg = ServingConfig(alpha=0.7, seed=0)
    a = Personalizer(cfg, bandit_store)
    events = _events(600, seed=1)
    _serve(a, events)
    a.flush()
    b = Personalizer(cfg, bandit_store)  # a new replica: state only from the DB
    slot = b.slot(M, C, "linucb", ARMS, PRODUCTS)
    X = np.array([slot.schema.encode(f) for f, _, _ in events])
    mab = MAB(ARMS, LearningPolicy.LinUCB(alpha=0.7, l2_lambda=1.0), seed=7)
    mab.fit([t for _, t, _ in events], [float(c) for _, _, c in events], X)
    probe = X[:50]
    ref = mab.predict_expectations(probe)
    ours = np.array([slot.policy.scores(x) for x in probe])
    np.testing.assert_allclose(ours, np.array([[r[t] for t in ARMS] for r in ref]), rtol=0, atol=1e-9)
    # the stored sums are exact integers (one-hot contexts, 0/1 rewards)
    sums = bandit_store.load_sums(M, C, "linucb")
    assert set(sums) == set(ARMS)
    A, bvec = sums[ARMS[0]]
    assert np.array_equal(A, np.round(A)) and np.array_equal(bvec, np.round(bvec))


def test_two_replicas_merge_through_db_exactly_like_one(bandit_store, metadata_db):
    cfg = ServingConfig(seed=0)
    events = _events(900, seed=2)
    r1, r2 = Personalizer(cfg, bandit_store), Personalizer(cfg, bandit_store)
    for i in range(0, len(events), 150):  # interleaved serving, flushes in between
        _serve(r1 if (i // 150) % 2 == 0 else r2, events[i:i + 150])
        (r1 if i % 300 == 0 else r2).flush()
    r1.flush()
    r2.flush()
    single = Personalizer(cfg, None)  # one replica that saw everything, no DB
    _serve(single, events)
    ref = single.slot(M, C, "linucb", ARMS, PRODUCTS).policy.state()
    fresh = Personalizer(cfg, bandit_store).slot(M, C, "linucb", ARMS, PRODUCTS).policy.state()
    for arm in ARMS:
        assert np.array_equal(fresh[arm][0], ref[arm][0]) and np.array_equal(fresh[arm][1], ref[arm][1])
    # and each replica, after its last flush + reload, sees the global state too
    r1.flush()
    for arm in ARMS:
        assert np.array_equal(r1.slot(M, C, "linucb", ARMS, PRODUCTS).policy.state()[arm][0], ref[arm][0])


def test_concurrent_flushes_lose_nothing(bandit_store):
    """Threads adding deltas to the same rows at once: the optimistic version check retries."""
    d = 5
    delta = {a: (np.eye(d), np.ones(d)) for a in ARMS}
    errors = []

    def worker():
        try:
            for _ in range(10):
                bandit_store.add_deltas(M, C, "linucb", delta)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sums = bandit_store.load_sums(M, C, "linucb")
    for a in ARMS:
        assert np.array_equal(sums[a][0], 40 * np.eye(d)) and np.array_equal(sums[a][1], 40 * np.ones(d))


def test_schema_first_writer_sets_the_layout_and_later_ones_only_extend_it(bandit_store):
    first = bandit_store.ensure_schema(M, C, schema_for(PRODUCTS))
    assert bandit_store.ensure_schema(M, C, schema_for(PRODUCTS)) == first
    later = bandit_store.ensure_schema(M, C, schema_for({"p9": {"subcategory": "sandals", "colour": "gold"}}))
    # the first writer's values keep their order; the new ones come after them
    assert later["subcategory"] == first["subcategory"] + ["sandals"]
    assert later["colour"] == first["colour"] + ["gold"] and list(later) == list(first)
    assert bandit_store.load_schema(M, C) == later


def test_counting_policies_round_trip_with_delayed_rewards(bandit_store):
    cfg = ServingConfig(default_policy="ucb1", seed=0)
    p = Personalizer(cfg, bandit_store)
    events = _events(300, seed=3)
    _serve(p, events, variant="random")  # random slot, and (learn_from_random) the ucb1 slot
    p.flush()
    q = Personalizer(cfg, bandit_store)
    for kind in ("random", "ucb1"):
        st = q.slot(M, C, kind, ARMS, PRODUCTS).policy.state()
        for arm in ARMS:
            n = sum(1 for _, t, _ in events if t == arm)
            s = sum(1 for _, t, c in events if t == arm and c)
            assert st[arm] == (n, float(s)), (kind, arm)


@pytest.mark.parametrize("kind", ["linucb", "ucb1"])
def test_clicks_after_a_flush_are_still_published(bandit_store, kind):
    p = Personalizer(ServingConfig(default_policy=kind, seed=0), bandit_store)
    f, theme, _ = _events(1, seed=4)[0]
    slot = p.slot(M, C, kind, ARMS, PRODUCTS)
    x = slot.schema.encode(f)
    p.record_impression(Choice("bandit", theme, kind, x), M, C, ARMS, PRODUCTS, hit=True)
    p.flush()
    p.record_click(variant="bandit", merchant=M, category=C, policy=kind, theme=theme, features=f, arms=ARMS,
                   products=PRODUCTS)
    p.flush()
    sums = bandit_store.load_sums(M, C, kind)
    assert list(sums) == [theme]
    if kind == "linucb":
        A, b = sums[theme]
        assert np.array_equal(A, np.outer(x, x)) and np.array_equal(b, x)  # one impression, one click
    else:
        assert sums[theme] == (1.0, 1.0)
    local = slot.policy.state()[theme]  # reloaded after the flush: the replica sees the click too
    if kind == "linucb":
        assert np.array_equal(local[1], x)
    else:
        assert local == (1, 1.0)


def test_deltas_of_failed_flushes_are_published_once_when_the_db_is_back(metadata_db):
    from resources.bandit_store import BanditStore, bandit_state

    store = BanditStore(metadata_db=metadata_db, max_retries=2)
    cfg = ServingConfig(seed=0)
    p = Personalizer(cfg, store)
    events = _events(300, seed=6)
    p.slot(M, C, "linucb", ARMS, PRODUCTS)  # schema stored, state loaded while the DB is up
    bandit_state.drop(store.engine)  # every write of the state now fails
    _serve(p, events[:100])
    assert p.flush() == 1
    _serve(p, events[100:200])
    assert p.flush() == 1 and p.flush_errors == 2
    bandit_state.create(store.engine)
    _serve(p, events[200:])
    assert p.flush() == 0
    single = Personalizer(cfg, None)
    _serve(single, events)
    ref = single.slot(M, C, "linucb", ARMS, PRODUCTS).policy.state()
    sums = store.load_sums(M, C, "linucb")
    local = p.slot(M, C, "linucb", ARMS, PRODUCTS).policy.state()  # reloaded from the DB
    d = len(ref[ARMS[0]][1])
    for arm in ARMS:  # every event exactly once: the prior + the stored sums = one replica's state
        assert np.array_equal(sums[arm][0] + np.eye(d), ref[arm][0]) and np.array_equal(sums[arm][1], ref[arm][1])
        assert np.array_equal(local[arm][0], ref[arm][0]) and np.array_equal(local[arm][1], ref[arm][1])


def test_misses_do_not_teach_the_bandit(bandit_store):
    p = Personalizer(ServingConfig(seed=0), bandit_store)
    slot = p.slot(M, C, "linucb", ARMS, PRODUCTS)
    p.record_impression(Choice("bandit", ARMS[0], "linucb", slot.schema.encode({})), M, C, ARMS, PRODUCTS, hit=False)
    p.flush()
    assert bandit_store.load_sums(M, C, "linucb") == {}


def test_prompts_changing_starts_a_policy_over_the_new_arms(bandit_store):
    p = Personalizer(ServingConfig(seed=0), bandit_store)
    events = _events(50, seed=5)
    _serve(p, events)
    slot = p.slot(M, C, "linucb", ARMS + ["neon-night"], PRODUCTS)
    assert slot.arms == tuple(ARMS + ["neon-night"])
    assert set(bandit_store.load_sums(M, C, "linucb")) == set(ARMS)  # the old events were published first
    st = slot.policy.state()
    assert st["neon-night"][0][0, 0] == 1.0
    for arm in ARMS:  # ridge + one per hit impression of the theme (the bias coordinate)
        assert st[arm][0][0, 0] == 1.0 + sum(1 for _, t, _ in events if t == arm), arm


def test_linucb_regret_below_random_and_ucb1():
    """The known contextual click model from the bandit core (see tests/core/test_bandit.py)."""
    model = ClickModel.fast(seed=0)
    arms = model.arms
    d = model.schema.dim
    lin = simulate(LinUCB(arms, d, seed=0), 3000, seed=0, model=model).regret[-1]
    rnd = simulate(RandomPolicy(arms, seed=0), 3000, seed=0, model=model).regret[-1]
    ucb = simulate(UCB1(arms, seed=0), 3000, seed=0, model=model).regret[-1]
    assert lin < 0.35 * rnd and lin < 0.35 * ucb  # benchmarks/bandit.py prints 0.225 and 0.225


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_choose_follows_the_variant_and_the_policy(epsilon):
    cfg = ServingConfig(alpha=0.0, seed=0, epsilon=epsilon)  # alpha 0: the bandit shows its best estimate
    p = Personalizer(cfg, None)
    for variant in ("control", "positioned"):
        assert p.choose(variant, M, C, ARMS, PRODUCTS, {}) == Choice(variant, None, "none")
    n = 3000
    picks = [p.choose("random", M, C, ARMS, PRODUCTS, {}) for _ in range(n)]
    assert {c.policy for c in picks} == {"random"}
    counts = {a: sum(c.theme == a for c in picks) for a in ARMS}
    sd = (n * (1 / 3) * (2 / 3)) ** 0.5
    assert all(abs(k - n / 3) < 5 * sd for k in counts.values()), counts
    assert {c.propensity for c in picks} == {1 / 3}
    # teach the bandit that beach-sunset gets clicked on mobile, urban-concrete on desktop
    for device, theme in (("mobile", "beach-sunset"), ("desktop", "urban-concrete")):
        f = build_features(device=device, width=300, height=250)
        slot = p.slot(M, C, "linucb", ARMS, PRODUCTS)
        for other in ARMS:
            for _ in range(5):
                p.record_impression(Choice("bandit", other, "linucb", slot.schema.encode(f)), M, C, ARMS, PRODUCTS,
                                    hit=True)
                if other == theme:
                    p.record_click(variant="bandit", merchant=M, category=C, policy="linucb", theme=other,
                                   features=f, arms=ARMS, products=PRODUCTS)
    for device, theme in (("mobile", "beach-sunset"), ("desktop", "urban-concrete")):
        f = build_features(device=device, width=300, height=250)
        picks = [p.choose("bandit", M, C, ARMS, PRODUCTS, f) for _ in range(2000)]
        best = 1 - epsilon + epsilon / 3
        if epsilon == 0:
            assert {c.theme for c in picks} == {theme}, device
        else:  # ε-mixing: every theme shown, the best one (1 - ε + ε/K) of the time
            share = sum(c.theme == theme for c in picks) / len(picks)
            assert abs(share - best) < 5 * (best * (1 - best) / len(picks)) ** 0.5, (device, share)
            assert {c.theme for c in picks} == set(ARMS)
        # the logged propensity is the probability of the theme shown
        assert all(c.propensity == pytest.approx(best if c.theme == theme else epsilon / 3) for c in picks)


def test_variants_constant():
    assert VARIANTS == ("control", "positioned", "random", "bandit")


def _serve_with(pers: Personalizer, events, products):
    for f, theme, clicked in events:
        slot = pers.slot(M, C, "linucb", ARMS, products)
        pers.record_impression(Choice("bandit", theme, "linucb", slot.schema.encode(f)), M, C, ARMS, products, hit=True)
        if clicked:
            pers.record_click(variant="bandit", merchant=M, category=C, policy="linucb", theme=theme, features=f,
                              arms=ARMS, products=products)


def test_a_new_feature_value_extends_the_stored_state(bandit_store):
    """A new subcategory and colour in the index: the schema and the stored LinUCB sums grow (the
    old sums re-laid, zeros for the new values), scores of old contexts are unchanged, a replica
    still on the old layout publishes its deltas onto the new one, and the result equals one
    policy that saw every event in the new layout."""
    cfg = ServingConfig(seed=0)
    a, b = Personalizer(cfg, bandit_store), Personalizer(cfg, bandit_store)
    old_events, late_events = _events(300, seed=1), _events(100, seed=2)
    _serve_with(a, old_events, PRODUCTS)
    a.flush()
    _serve_with(b, late_events, PRODUCTS)  # b learns on the old layout, not published yet
    old_slot = a.slot(M, C, "linucb", ARMS, PRODUCTS)
    f_old = old_events[0][0]
    before = old_slot.policy.scores(old_slot.schema.encode(f_old))
    old_dim = old_slot.schema.dim

    grown = {**PRODUCTS, "p9": {"subcategory": "sandals", "colour": "gold"}}
    new_events = [(build_features(device="mobile", subcategory="sandals", colour="gold", width=300, height=250),
                   ARMS[i % 3], i % 3 == 0) for i in range(30)]
    slot = a.slot(M, C, "linucb", ARMS, grown)  # the new index version: the schema grows
    assert slot.schema.dim == old_dim + 2 and "subcategory=sandals" in slot.schema.names()
    stored = bandit_store.load_schema(M, C)
    assert stored["subcategory"][-1] == "sandals" and stored["colour"][-1] == "gold"
    np.testing.assert_allclose(slot.policy.scores(slot.schema.encode(f_old)), before, rtol=1e-9)  # nothing forgotten
    _serve_with(a, new_events, grown)
    a.flush()
    b.flush()  # b sees the extended schema, re-lays its unpublished deltas, publishes
    assert b.slot(M, C, "linucb", ARMS, PRODUCTS).schema.dim == old_dim + 2

    ref = LinUCB(ARMS, slot.schema.dim)
    for f, theme, clicked in old_events + late_events + new_events:
        ref.update(theme, slot.schema.encode(f), 1.0 if clicked else 0.0)
    sums = bandit_store.load_sums(M, C, "linucb")
    for arm, (A, bb) in ref.state().items():
        np.testing.assert_allclose(sums[arm][0] + np.eye(len(bb)), A, atol=1e-9)
        np.testing.assert_allclose(sums[arm][1], bb, atol=1e-9)
    i = slot.schema.names().index("subcategory=sandals")
    assert sum(sums[arm][0][i, i] for arm in ARMS) == 30.0  # the new value learnt from its 30 impressions
