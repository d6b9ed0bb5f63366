"""The API while its metadata DB is down: a mariadbd of its own (the session one stays up) is
SIGKILLed under a live server with its flusher running, then restarted on the same datadir and
port; or SIGSTOPped (a DB that hangs: connections accepted, never answered), then continued.

Services pass only. During the outage every request is answered at once and none 5xx: hits stay
hits, misses get the fallback, a click is buffered (202), impressions and misses stay buffered;
`/health` says degraded for the DB, `/health/ready` is 503, `/health/live` 200. After the restart
the background probe finds the DB and everything buffered is written: the outage's impressions,
its click, its misses. The API is never restarted.
"""
from __future__ import annotations

import time
import uuid

import httpx
import sqlalchemy as sa

import pytest

from services import MariaDBServer, create_database, services_only, start_or_fail, wait_until
from test_api import LiveServer, copy_world, find_miss_size, golden_world, make_app

from bggen_assets.serving.personalize import ServingConfig

pytestmark = services_only
MERCHANT, CATEGORY = "northwind", "footwear"
#: a request during the outage must not wait for the dead DB (a hit takes milliseconds)
MAX_OUTAGE_REQUEST_S = 1.0


def get(client, pid, width, height, **extra):
    t0 = time.perf_counter()
    r = client.get("/creative", params={"merchant": MERCHANT, "product": pid, "width": width, "height": height, **extra})
    took = time.perf_counter() - t0
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r, took


def rows(db, sql: str, **params) -> list:
    with db.engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_serving_degrades_and_recovers_when_the_db_is_down(fault, tmp_path, tmp_path_factory, sample_dir, store,
                                                           creative_config):
    from resources.metadata_db import MetadataDB

    server = start_or_fail(MariaDBServer(tmp_path / "mariadb"), "a private mariadbd for the outage test")
    try:
        url = create_database(server.url, f"outage_{uuid.uuid4().hex[:8]}")
        # bounded reads and writes (what the API's app_from_env sets): a hung DB times out
        db = MetadataDB(url=url, retry_seconds=2.0, connect_timeout=2, io_timeout=2)
        golden = golden_world(tmp_path_factory, sample_dir)
        copy_world(golden, store)
        doc = golden["doc"]
        world = {"store": store, "metadata_db": db, "creative_config": creative_config, "doc": doc}
        config = ServingConfig(variant_shares={"bandit": 1.0}, seed=0, flush_interval_s=0.2, miss_min_requests=1)
        app = make_app(world, config, background=True, prefetch=True)
        pids = sorted(doc.products)
        sizes = [(p.width, p.height) for p in creative_config.placements(MERCHANT)]
        with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
            state = app.state.serving
            service = state.service
            wait_until(lambda: service.prefetching == 0 and service.prefetched >= len(doc.entries), 60,
                       "the canvases were not prefetched")
            hits = set()
            for pid in pids:
                for w, h in sizes:
                    if get(client, pid, w, h)[0].headers["X-Cache"] == "hit":
                        hits.add((pid, w, h))
            assert hits, "no configured placement is a hit before the outage"
            wait_until(lambda: len(state.impressions) == 0, 10, "the impressions before the outage were not written")
            assert client.get("/health/ready").status_code == 200

            if fault == "killed":
                server.kill()  # SIGKILL: the DB is gone mid-traffic
            else:
                server.pause()  # SIGSTOP: every DB call now waits (until its io_timeout)
            served = []
            for _ in range(2):
                for pid, w, h in sorted(hits):
                    r, took = get(client, pid, w, h)
                    assert r.headers["X-Cache"] == "hit", (pid, w, h)
                    assert took < MAX_OUTAGE_REQUEST_S, f"a hit waited {took:.2f}s on the dead DB"
                    served.append(r.headers["X-Impression-Id"])
            mw, mh = find_miss_size(doc, pids[0])
            unplanned = {"fill": 0.35, "anchor": "0.1,0.9"}
            miss, took = get(client, pids[0], mw, mh, **unplanned)
            assert miss.headers["X-Cache"] == "miss" and took < MAX_OUTAGE_REQUEST_S
            served.append(miss.headers["X-Impression-Id"])
            if fault == "hung":  # a hung DB is known down once a flush (or probe) timed out
                wait_until(lambda: state.db.degraded, 15, "the flusher did not notice the hung DB")
            t0 = time.perf_counter()
            click = client.post("/events", json={"impression_id": served[0], "event": "click"})
            assert click.status_code == 202 and click.json()["buffered"], click.text
            assert time.perf_counter() - t0 < MAX_OUTAGE_REQUEST_S
            health = wait_until(lambda: (h := client.get("/health").json())["status"] == "degraded" and h, 10,
                                "/health did not report the DB outage")
            assert health["db"]["degraded"] and health["db"]["last_error"], health["db"]
            assert not health["store"]["degraded"]
            assert health["pending_impressions"] >= len(served) and health["pending_misses"] >= 1
            assert health["buffered_clicks"] == 1
            ready = client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["db"]["degraded"]
            assert client.get("/health/live").status_code == 200
            # still no 5xx and no wait once the outage is known
            for pid, w, h in sorted(hits)[:3]:
                r, took = get(client, pid, w, h)
                assert r.headers["X-Cache"] == "hit" and took < MAX_OUTAGE_REQUEST_S
                served.append(r.headers["X-Impression-Id"])
            metrics = client.get("/metrics").text
            assert "bggen_db_degraded 1.0" in metrics, metrics[-2000:]

            if fault == "killed":
                server.start()  # the same datadir and port; the API is not restarted
            else:
                server.resume()
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30, "serving did not recover")
            assert client.get("/health").json()["status"] == "ok"
            wait_until(lambda: len(state.impressions) == 0 and len(state.clicks) == 0 and len(state.misses) == 0, 30,
                       "the buffered events were not written after the restart")
            ids = {r[0] for r in rows(db, "SELECT impression_id FROM impressions")}
            assert set(served) <= ids, f"{len(set(served) - ids)} impressions of the outage were lost"
            clicked = rows(db, "SELECT impression_id FROM clicks WHERE impression_id = :i", i=served[0])
            assert clicked, "the buffered click was not applied"
            queued = rows(db, "SELECT COUNT(*) FROM misses WHERE product_id = :p", p=pids[0])
            assert queued[0][0] >= 1, "the outage's miss was not queued"
            for pid, w, h in sorted(hits)[:3]:
                assert get(client, pid, w, h)[0].headers["X-Cache"] == "hit"
            db.dispose()
    finally:
        server.kill()
