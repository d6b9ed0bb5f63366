"""Events in over real HTTP: batches of impressions and clicks from an ad server (JSON array and
JSON lines), idempotent by id, clicks attributed within the window, bad events rejected one by
one; the bandit state equals a rebuild from the event log; clicks survive a DB outage and a
restart (buffered, answered 202, spilled to the journal)."""
import json
import sqlite3
import time

import httpx
import numpy as np
import pytest

from test_api import CATEGORY, MERCHANT, LiveServer, make_app, params, world  # noqa: F401  (fixture)

from bggen_assets.core.bandit import LinUCB, merge_states
from bggen_assets.core.events import impression_key
from bggen_assets.serving.personalize import ServingConfig


def _imp(world, eid, ts=None, theme=None, variant="bandit", **kw):
    doc = world["doc"]
    ev = {"type": "impression", "id": eid, "ts": time.time() - 60 if ts is None else ts, "merchant": MERCHANT,
          "product": sorted(doc.products)[0], "width": 300, "height": 250, "variant": variant,
          "theme": theme or doc.prompts[0], "propensity": 0.5,
          "context": {"country": "de", "device": "mobile"}}
    ev.update(kw)
    return ev


def _click(eid, imp_id, ts=None):
    return {"type": "click", "id": eid, "impression_id": imp_id, "ts": time.time() if ts is None else ts}


@pytest.fixture
def srv(world):
    cfg = ServingConfig(variant_shares={"bandit": 1.0}, seed=0)
    app = make_app(world, cfg)
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=20) as client:
        s.client, s.state = client, app.state.serving
        yield s


def _store(world):
    from resources.bandit_store import BanditStore

    return BanditStore(metadata_db=world["metadata_db"])


def test_batch_valid_duplicate_late_orphan_and_malformed(srv, world):
    doc = world["doc"]
    now = time.time()
    batch = [
        _imp(world, "imp-1"), _imp(world, "imp-2", theme=doc.prompts[-1], variant="random", policy="random"),
        _click("clk-1", "imp-1"),
        _imp(world, "imp-old", ts=now - 3 * 86400), _click("clk-late", "imp-old"),   # 72 h > 24 h window
        _click("clk-orphan", "never-sent"),
        {"type": "impression", "id": "bad-1"},                                        # fields missing
        _imp(world, "bad-2", theme="no-such-theme"),
        _imp(world, "bad-3", propensity=0.0),
        _imp(world, "bad-4", product="NO-SUCH"),
        "not an object",
        _imp(world, "imp-1"),                                                          # duplicate in the batch
    ]
    r = srv.client.post("/events", json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["impressions"] == 3 and body["clicks"] == 1 and body["duplicates"] == 1, body
    reasons = {x["index"]: x["reason"] for x in body["rejected"]}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9, 10], body["rejected"]
    assert "late click" in reasons[4] and "24 h" in reasons[4]
    assert "click without impression" in reasons[5]
    assert "missing" in reasons[6]
    assert "theme" in reasons[7] and "propensity" in reasons[8] and "unknown product" in reasons[9]
    assert "JSON object" in reasons[10]
    # the same batch again: nothing new (idempotent by id), the same rejections
    again = srv.client.post("/events", json=batch).json()
    assert again["impressions"] == 0 and again["clicks"] == 0 and again["duplicates"] == 5, again
    # a new click id on a clicked impression is a duplicate too (the first click counts)
    assert srv.client.post("/events", json=[_click("clk-2", "imp-1")]).json()["duplicates"] == 1
    srv.state.flush()
    bs = _store(world)
    row = bs.get_impression(impression_key("imp-1"))
    assert row["source"] == "posted" and row["propensity"] == 0.5 and json.loads(row["context"])["country"] == "de"
    counts = {(c["variant"]): (c["impressions"], c["clicks"]) for c in bs.variant_counts()}
    assert counts == {"bandit": (2, 1), "random": (1, 0)}  # the reports see posted events like served ones


def test_json_lines_with_a_broken_line_and_bodies_that_take_nothing(srv, world):
    lines = [json.dumps(_imp(world, "jl-1")), "{broken", "", json.dumps(_click("jl-c", "jl-1"))]
    r = srv.client.post("/events", content="\n".join(lines).encode(), headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["impressions"] == 1 and b["clicks"] == 1 and len(b["rejected"]) == 1
    assert "not JSON" in b["rejected"][0]["reason"]
    for bad in ([], [1, 2], [{"type": "view", "id": "x", "ts": 1.7e9}]):
        r = srv.client.post("/events", json=bad)
        assert r.status_code == 400, (bad, r.text)
    fut = srv.client.post("/events", json=[_imp(world, "future", ts=time.time() + 3600)])
    assert fut.status_code == 400 and "future" in fut.json()["rejected"][0]["reason"]


def test_iso_times_and_a_served_impression_clicked_by_the_ad_server(srv, world):
    r = srv.client.get("/creative", params=params(world, user_id="dave"))
    served = r.headers["x-impression-id"]
    assert 0 < float(r.headers["x-propensity"]) <= 1
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    b = srv.client.post("/events", json=[_click("c-served", served, ts=iso)]).json()
    assert b["clicks"] == 1, b
    srv.state.flush()
    row = _store(world).get_impression(served)
    assert row["source"] == "served" and row["propensity"] == pytest.approx(float(r.headers["x-propensity"]), rel=1e-5)


def test_bandit_state_equals_a_rebuild_from_the_event_log(srv, world):
    """Served and posted impressions and clicks, flushed: the stored LinUCB sums are exactly those
    of replaying the logged impressions (theme, context, click) into a fresh policy."""
    doc = world["doc"]
    rng = np.random.default_rng(0)
    batch = []
    for i in range(60):
        theme = doc.prompts[int(rng.integers(len(doc.prompts)))]
        batch.append(_imp(world, f"r-{i}", theme=theme, context={"country": ["us", "de", "jp"][i % 3],
                                                                 "device": ["mobile", "desktop"][i % 2]}))
        if rng.random() < 0.3:
            batch.append(_click(f"rc-{i}", f"r-{i}"))
    assert srv.client.post("/events", json=batch).status_code == 200
    for i in range(10):
        r = srv.client.get("/creative", params=params(world, user_id=f"u{i}", country="gb"))
        if i % 2:
            srv.client.post("/events", json={"impression_id": r.headers["x-impression-id"]})
    srv.state.flush()
    bs = _store(world)
    slot = srv.state.personalizer.slot(MERCHANT, CATEGORY, "linucb", doc.prompts, doc.products)
    replay = LinUCB(doc.prompts, slot.schema.dim)
    n = 0
    for row in bs.logged_impressions():
        if row["variant"] == "bandit" and row["hit"]:
            x = slot.schema.encode(json.loads(row["context"]))
            replay.update(row["theme"], x, 1.0 if row["clicked"] else 0.0)
            n += 1
    assert n == 70
    stored = merge_states(replay.prior_state(), bs.load_sums(MERCHANT, CATEGORY, "linucb"))
    for arm, (A, b) in replay.state().items():
        np.testing.assert_allclose(stored[arm][0], A, rtol=0, atol=1e-9)
        np.testing.assert_allclose(stored[arm][1], b, rtol=0, atol=1e-9)


def _lock_sqlite(path):
    """Hold the SQLite file's write lock from another connection: every write of the API fails
    with 'database is locked' (after the busy timeout) while it is held."""
    conn = sqlite3.connect(path, timeout=1, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def _serve_click_restart(world, db, journal, form, outage_start, outage_end):
    """Serve 3 impressions, make the DB unreachable, click them (202), stop the process while it is
    still unreachable (journal), bring the DB back, start a new process: every click applied once."""
    from resources.bandit_store import BanditStore

    w = {**world, "metadata_db": db}
    cfg = ServingConfig(variant_shares={"bandit": 1.0}, seed=0, click_journal=str(journal))
    app = make_app(w, cfg)
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as client:
        ids = [client.get("/creative", params=params(world, user_id=f"z{i}")).headers["x-impression-id"]
               for i in range(3)]
        app.state.serving.flush()
        outage_start()
        for imp in ids:
            if form == "one":
                r = client.post("/events", json={"impression_id": imp, "event": "click"})
                assert r.status_code == 202 and r.json()["buffered"] is True, r.text
            else:
                r = client.post("/events", json=[_click(f"k-{imp}", imp)])
                assert r.status_code == 202 and r.json()["buffered"] == 1, r.text
        app.state.serving.flush()  # still unreachable: the clicks stay buffered
        assert len(app.state.serving.clicks) == 3
    # the process stopped with the DB unreachable: the clicks are in the journal
    assert journal.exists() and len(journal.read_text().splitlines()) == 3
    outage_end()
    bs = BanditStore(metadata_db=db)
    assert bs.variant_counts()[0]["clicks"] == 0
    app2 = make_app(w, cfg)  # the restarted process reads the journal and applies it
    with LiveServer(app2):
        assert len(app2.state.serving.clicks) == 3
        app2.state.serving.flush()
    assert bs.variant_counts() == [{"merchant": MERCHANT, "variant": "bandit", "impressions": 3, "clicks": 3}]
    assert not journal.exists() and app2.state.serving.clicks.applied == 3
    sums = bs.load_sums(MERCHANT, CATEGORY, "linucb")
    assert sum(float(b[0]) for _, b in sums.values()) == 3.0  # every click taught the bandit once


@pytest.mark.parametrize("form", ["one", "batch"])
def test_clicks_survive_a_locked_sqlite_file_and_a_restart(world, tmp_path, form):
    from resources.metadata_db import MetadataDB

    path = tmp_path / "locked.db"
    db = MetadataDB(url=f"sqlite:///{path}", sqlite_busy_timeout_s=0.2)
    held = []
    _serve_click_restart(world, db, tmp_path / "clicks.journal", form,
                         lambda: held.append(_lock_sqlite(str(path))),
                         lambda: (held[0].rollback(), held[0].close()))


def test_clicks_survive_a_mariadb_outage_and_a_restart(world, tmp_path, private_mariadb):
    """A private mariadbd stopped while clicks arrive and started again after the restart."""
    from services import create_database

    from resources.metadata_db import MetadataDB

    url = create_database(private_mariadb.url, "events_outage")
    db = MetadataDB(url=url, retry_seconds=1.0, connect_timeout=2)
    _serve_click_restart(world, db, tmp_path / "clicks.journal", "batch", private_mariadb.stop,
                         private_mariadb.start)


def test_ad_events_asset_imports_parquet_csv_and_jsonl_once(world):
    """One day's logs in the object store, in the three formats: imported with the same
    validation as POST /events, the bandit taught, and a second run imports nothing twice."""
    import io

    import pandas as pd
    from dagster import DagsterInstance, materialize

    from bggen_assets.assets.ad_events import ad_events

    store, doc = world["store"], world["doc"]
    day = "2026-11-30"
    ts = time.time() - 3600
    imps = [_imp(world, f"f-{i}", ts=ts + i, theme=doc.prompts[i % len(doc.prompts)]) for i in range(30)]
    flat = [{**{k: v for k, v in e.items() if k != "context"}, "context_country": "fr", "context_device": "desktop"}
            for e in imps[10:20]]
    buf = io.BytesIO()
    pd.DataFrame(flat).to_parquet(buf, index=False)
    store.put_bytes(f"events/incoming/{day}/a.parquet", buf.getvalue())
    csv_rows = [{**{k: v for k, v in e.items() if k != "context"}, "context_country": "us"} for e in imps[20:]]
    csv_rows.append({"type": "impression", "id": "csv-bad", "ts": str(ts), "merchant": MERCHANT,
                     "product": sorted(doc.products)[0], "width": "wide", "height": "250", "variant": "bandit",
                     "theme": doc.prompts[0]})
    store.put_bytes(f"events/incoming/{day}/b.csv", pd.DataFrame(csv_rows).to_csv(index=False).encode())
    lines = [json.dumps(e) for e in imps[:10]] + [json.dumps(_click(f"fc-{i}", f"f-{i}", ts=ts + 100)) for i in (0, 15, 25)]
    lines.append(json.dumps(_click("fc-x", "f-0", ts=ts + 200)))  # a second click: duplicate
    store.put_bytes(f"events/incoming/{day}/c.jsonl", "\n".join(lines).encode())
    store.put_bytes(f"events/incoming/{day}/d.parquet", b"PAR1 truncated")
    bs = _store(world)
    resources = {"bandit_store": bs, "store": store}
    instance = DagsterInstance.ephemeral()
    res = materialize([ad_events], partition_key=day, resources=resources, instance=instance)
    assert res.success
    meta = res.asset_materializations_for_node("ad_events")[0].metadata
    assert meta["impressions"].value == 30 and meta["clicks"].value == 3, meta
    assert meta["duplicates"].value == 1 and meta["rejected"].value == 2  # the bad CSV row, the broken file
    reasons = [json.loads(x)["reason"] for x in store.get_bytes(f"events/rejected/{day}.jsonl").decode().splitlines()]
    assert any("width" in r for r in reasons) and any("cannot be read" in r for r in reasons)
    rows = {r["impression_id"]: r for r in bs.logged_impressions()}
    assert rows[impression_key("f-12")]["source"] == "imported"
    assert json.loads(rows[impression_key("f-12")]["context"])["country"] == "fr"
    assert sum(r["clicked"] for r in rows.values()) == 3
    sums = bs.load_sums(MERCHANT, CATEGORY, "linucb")
    assert sum(float(A[0, 0]) for A, _ in sums.values()) == 30.0  # 30 impressions taught
    assert sum(float(b[0]) for _, b in sums.values()) == 3.0  # 3 clicks
    again = materialize([ad_events], partition_key=day, resources=resources, instance=instance)
    m2 = again.asset_materializations_for_node("ad_events")[0].metadata
    assert m2["impressions"].value == 0 and m2["clicks"].value == 0 and m2["duplicates"].value == 34
    sums2 = bs.load_sums(MERCHANT, CATEGORY, "linucb")
    assert sum(float(A[0, 0]) for A, _ in sums2.values()) == 30.0  # nothing taught twice
