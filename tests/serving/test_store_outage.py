"""The API while its object store is down: a SeaweedFS of its own (the session one stays up) is
SIGKILLed under a live server, then restarted on the same data and ports.

Services pass only. During the outage every request is answered, none 5xx: hits stay hits (the
canvases are in memory), misses get the fallback (a plain placeholder when not even the product's
cutout is held), a merchant it holds no index for is a 404, `/health` says degraded, `/health/ready` is 503, `/health/live` 200. After the
restart the background retry finds the store and serving recovers by itself: ready again, and a
version published after the restart is picked up.
"""
from __future__ import annotations

import io
import time
import uuid

import httpx
import numpy as np
from PIL import Image

from services import SeaweedServer, s3_resource, services_only, start_or_fail, wait_until
from test_api import LiveServer, bandit_only, copy_world, find_miss_size, golden_world, make_app  # noqa: F401 (a fixture)

from bggen_assets.core import serving_index

pytestmark = services_only
MERCHANT, CATEGORY = "northwind", "footwear"


def get(client, world, pid, width, height, **placement):
    r = client.get("/creative", params={"merchant": MERCHANT, "product": pid, "width": width, "height": height,
                                        **placement})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r


def test_serving_degrades_and_recovers_when_s3_is_killed(tmp_path, tmp_path_factory, sample_dir, metadata_db,
                                                          creative_config, bandit_only):
    from resources.object_store import S3ObjectStore

    server = start_or_fail(SeaweedServer(tmp_path / "weed"), "a private SeaweedFS for the outage test")
    try:
        # one client attempt, short timeouts: an outage is seen at once, not after botocore's backoff
        s3 = s3_resource(server.endpoint_url).model_copy(update={"max_attempts": 1})
        store = S3ObjectStore(bucket=f"outage-{uuid.uuid4().hex[:8]}", prefix="serve", create_bucket=True, s3=s3)
        golden = golden_world(tmp_path_factory, sample_dir)
        copy_world(golden, store)
        doc = golden["doc"]
        world = {"store": store, "metadata_db": metadata_db, "creative_config": creative_config, "doc": doc}
        app = make_app(world, bandit_only, index_ttl_s=0.2, prefetch=True)
        pids = sorted(doc.products)
        sizes = [(p.width, p.height) for p in creative_config.placements(MERCHANT)]
        with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
            service = app.state.serving.service
            wait_until(lambda: service.prefetching == 0 and service.prefetched >= len(doc.entries), 60,
                       "the canvases were not prefetched")
            hits = {(pid, w, h) for pid in pids for w, h in sizes
                    if get(client, world, pid, w, h).headers["X-Cache"] == "hit"}
            assert hits, "no configured placement is a hit before the outage"
            assert client.get("/health/ready").status_code == 200

            server.kill()  # SIGKILL: the store is gone mid-traffic
            time.sleep(0.3)  # past the index TTL: the next requests try to re-read the pointer
            for _ in range(3):
                for pid, w, h in sorted(hits):
                    assert get(client, world, pid, w, h).headers["X-Cache"] == "hit", (pid, w, h)
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "degraded", health.json()
            assert health.json()["store"]["degraded"] and "S3" in health.json()["store"]["last_error"]
            assert client.get("/health/ready").status_code == 503
            assert client.get("/health/live").status_code == 200
            # a merchant it holds no index for: 404, neither a 500 nor a fallback image
            unknown = client.get("/creative", params={"merchant": "nobody", "product": pids[0], "width": 300,
                                                      "height": 250})
            assert unknown.status_code == 404 and "unavailable" in unknown.json()["error"], unknown.text
            # a merchant whose index was read at start-up but never listed: its hits still serve
            with service._lock:
                service._categories.pop(MERCHANT, None)
            pid, w, h = sorted(hits)[0]
            assert get(client, world, pid, w, h).headers["X-Cache"] == "hit"
            # a canvas never generated: the fallback; the cutout is not held either, so a placeholder
            mw, mh = find_miss_size(doc, pids[0])
            unplanned = {"fill": 0.35, "anchor": "0.1,0.9"}
            miss = get(client, world, pids[0], mw, mh, **unplanned)
            assert miss.headers["X-Cache"] == "miss"
            pixels = np.asarray(Image.open(io.BytesIO(miss.content)).convert("RGB")).reshape(-1, 3)
            assert pixels.shape[0] == mw * mh and np.ptp(pixels.astype(int), axis=0).max() <= 8  # plain
            assert client.get("/health").json()["placeholders"] >= 1

            server.start()  # the same data dir and ports
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30, "serving did not recover")
            assert client.get("/health").json()["status"] == "ok"
            for pid, w, h in sorted(hits):
                assert get(client, world, pid, w, h).headers["X-Cache"] == "hit"
            # the fallback has its product again (the cutout is read from the store)
            again = np.asarray(Image.open(io.BytesIO(get(client, world, pids[0], mw, mh, **unplanned).content)).convert("RGB"))
            assert np.ptp(again.reshape(-1, 3).astype(int), axis=0).max() > 40
            # and a version published after the restart is served
            newer = serving_index.publish(store, doc.model_copy(update={"generator_id": "after-outage"}))
            wait_until(lambda: service.index(MERCHANT, CATEGORY).version == newer.version, 10,
                       "the version published after the restart was not picked up")
    finally:
        server.kill()
