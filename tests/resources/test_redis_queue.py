"""The miss queue on Redis (LIFO list + dedupe set, Lua-atomic claims) against the local Redis.

Services pass only. Each test uses its own key namespace and deletes it afterwards.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services import services_only

pytestmark = services_only
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def queue(redis_url):
    from resources.redis_miss_queue import RedisMissQueue

    q = RedisMissQueue(redis_url=redis_url, namespace=f"{{bggen-t-{uuid.uuid4().hex[:10]}}}:misses")
    yield q
    q.clear()
    q.close()


def miss(i, category="bags", merchant="northwind"):
    from resources.metadata_db import Miss

    return Miss(merchant, category, f"p{i:03d}", "b1", "warm")


def test_storm_queues_once_newest_first(queue):
    with ThreadPoolExecutor(8) as pool:  # a storm of 400 requests for one missing bucket
        list(pool.map(lambda _: queue.record(miss(1)), range(400)))
    assert queue.stats() == {"queued": 1, "dedupe": 1, "claimed": 0}
    for i in (2, 3, 4):
        queue.record(miss(i))
    pending = queue.pending()
    assert [m.product_id for m in pending] == ["p004", "p003", "p002", "p001"]  # LIFO
    assert pending[-1].request_count == 400
    assert [m.product_id for m in queue.pending(limit=2)] == ["p004", "p003"]


def test_filters_and_mark_done(queue):
    queue.record(miss(1, "bags"))
    queue.record(miss(2, "home"))
    queue.record(miss(3, "bags", merchant="acme-outfitters"))
    assert [m.product_id for m in queue.pending(merchant="northwind", category="bags")] == ["p001"]
    assert [m.product_id for m in queue.pending(category="bags")] == ["p003", "p001"]
    assert queue.mark_done([miss(1).request_key, "unknown-key"]) == 1
    assert {m.product_id for m in queue.pending()} == {"p002", "p003"}
    queue.record(miss(1, "bags"))  # requested again after it was served: queued again, count restarts
    [m] = queue.pending(merchant="northwind", category="bags")
    assert m.request_count == 1


def test_rerequest_after_plan_stays_pending(queue):
    queue.record(miss(1), now=100.0)
    queue.record(miss(2), now=101.0)
    claimed = queue.claim("w1", 10)
    assert len(claimed) == 2
    queue.record(miss(2), now=300.0)  # again, after the plan (made at 200)
    assert queue.claim("w2", 10) == []  # still claimed by w1: nobody else takes it
    assert queue.mark_done([m.request_key for m in claimed], served_before=200.0) == 1
    assert [m.product_id for m in queue.pending()] == ["p002"]


def test_concurrent_consumers_claim_disjoint(queue):
    for i in range(300):
        queue.record(miss(i, category="bags" if i % 3 else "home"))
    got, lock = [], threading.Lock()

    def consumer(name, category):
        while True:
            batch = queue.claim(name, 7, category=category)
            if not batch:
                return
            with lock:
                got.extend(m.request_key for m in batch)

    threads = [threading.Thread(target=consumer, args=(f"c{i}", None if i % 2 else "bags")) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(got) == len(set(got)) == 300
    assert queue.stats() == {"queued": 0, "dedupe": 0, "claimed": 300}
    assert queue.mark_done(got) == 300
    assert queue.stats() == {"queued": 0, "dedupe": 0, "claimed": 0}


def test_claim_takes_newest_first_and_release_returns(queue):
    for i in range(5):
        queue.record(miss(i))
    first = queue.claim("w", 2)
    assert [m.product_id for m in first] == ["p004", "p003"]
    assert queue.release([first[1].request_key]) == 1
    assert [m.product_id for m in queue.pending()][:1] == ["p003"]


def test_expired_claims_come_back(redis_url, queue):
    from resources.redis_miss_queue import RedisMissQueue

    queue.record(miss(1))
    assert len(queue.claim("dead-worker", 5)) == 1
    assert queue.pending() == []
    short = RedisMissQueue(redis_url=redis_url, namespace=queue.namespace, claim_lease_s=0.0)
    time.sleep(0.01)
    assert [m.product_id for m in short.pending()] == ["p001"]
    assert [m.product_id for m in short.claim("alive", 5)] == ["p001"]
    short.close()


CLAIM_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from resources.redis_miss_queue import RedisMissQueue
q = RedisMissQueue(redis_url=sys.argv[2], namespace=sys.argv[3])
keys = []
while True:
    batch = q.claim(sys.argv[4], 4)
    if not batch:
        break
    keys += [m.request_key for m in batch]
print(json.dumps(keys))
"""


def test_consumer_processes_claim_disjoint(queue, redis_url):
    for i in range(200):
        queue.record(miss(i))
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_SCRIPT, str(ROOT), redis_url, queue.namespace, f"p{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    keys = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        keys += json.loads(out)
    assert len(keys) == len(set(keys)) == 200


def test_definitions_pick_the_redis_queue(redis_url, tmp_path):
    from bggen_assets.deployment import build_resources
    from resources.redis_miss_queue import RedisMissQueue

    res = build_resources({"BGGEN_DATA_DIR": str(tmp_path), "BGGEN_MISS_QUEUE": "redis", "BGGEN_REDIS_URL": redis_url,
                           "BGGEN_REDIS_NAMESPACE": "{bggen-defs}:m"})
    assert isinstance(res["miss_queue"], RedisMissQueue) and res["miss_queue"].namespace == "{bggen-defs}:m"
    with pytest.raises(ValueError, match="BGGEN_MISS_QUEUE"):
        build_resources({"BGGEN_DATA_DIR": str(tmp_path), "BGGEN_MISS_QUEUE": "kafka"})


def test_buffered_requests_and_distinct_users_are_counted(queue):
    """8 requests by 3 users over 3 flushes of the API's buffer: the Redis record says 8 and 3."""
    from bggen_assets.core.miss_policy import MissPolicy
    from bggen_assets.serving.state import BufferedMissQueue
    from resources.metadata_db import Miss

    buf = BufferedMissQueue(queue, policy=MissPolicy(min_requests=1))
    for i in range(8):
        buf.record_request([Miss("northwind", "bags", "p1", "b1", t) for t in ("warm", "cool")], 300, 250, f"u{i % 3}")
        if i in (2, 5):
            buf.flush()
    buf.flush()
    pending = queue.pending()
    assert sorted(m.prompt_id for m in pending) == ["cool", "warm"]
    assert {(m.request_count, m.distinct_users) for m in pending} == {(8, 3)}
