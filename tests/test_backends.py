"""Backend behaviour that must hold on the embedded defaults AND on the real services.

The `store` / `metadata_db` fixtures (tests/conftest.py) are a local dir + SQLite, or SeaweedFS S3 +
MariaDB under BGGEN_TEST_BACKEND=services, so every test here runs on both in CI:

- the serving index is published atomically: a publisher SIGKILLed mid-write of the new version,
  or between the version and the pointer flip, leaves readers on the previous complete index;
- the miss queue: a storm over one key queues once (threads), concurrent consumers (threads and
  processes) claim disjoint misses, none lost;
- the bucket_miss_sensor reads whichever queue is configured (DB or Redis).

Run as a script (`python tests/test_backends.py publish-child ...`) it is the publisher child.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # the child process: make the repo importable
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

MERCHANT, CATEGORY = "northwind", "bags"


# -- publisher child ----------------------------------------------------------------------------
def store_env(store) -> dict:
    """Environment that rebuilds the same store in another process (object_store_from_env)."""
    from resources.object_store import LocalObjectStore

    if isinstance(store, LocalObjectStore):
        return {"BGGEN_STORE": "local", "BGGEN_STORE_ROOT": store.root}
    return {"BGGEN_STORE": "s3", "BGGEN_S3_BUCKET": store.bucket, "BGGEN_S3_PREFIX": store.prefix,
            "BGGEN_S3_ENDPOINT_URL": store.s3.endpoint_url, "AWS_ACCESS_KEY_ID": store.s3.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": store.s3.aws_secret_access_key, "AWS_REGION": store.s3.region_name}


def big_document(version_tag: str, entries: int) -> dict:
    return {"format": 1, "merchant": MERCHANT, "category": CATEGORY, "tag": version_tag, "products": {},
            "entries": {f"p{i}|b{i % 97}|warm": {"image_key": f"canvas/{i:08d}.png", "canvas": [512, 512],
                                                  "product_box": [1, 2, 3, 4], "pad": "x" * 200}
                        for i in range(entries)}}


def _publish_child(mode: str, tag: str, entries: int) -> None:
    """Publish one index; stop (print READY, sleep) at the point `mode` names, to be SIGKILLed there."""
    from bggen_assets import steps
    from resources.object_store import LocalObjectStore, object_store_from_env

    store = object_store_from_env("/nonexistent", dict(os.environ))
    park = lambda: (print("READY", flush=True), time.sleep(60))  # noqa: E731
    if mode == "mid-version":
        # the new version object is half written when the process dies
        if isinstance(store, LocalObjectStore):
            os.fsync = lambda fd: park()  # data written to the temp file, not yet renamed into place
        else:
            client = store._c()
            real_put = client.put_object

            class HalfThenPark:
                """A request body that sends half of itself, then parks the process."""

                def __init__(self, data: bytes):
                    self.data, self.pos = data, 0

                def read(self, n: int = -1) -> bytes:
                    half = len(self.data) // 2
                    if self.pos >= half and n != 0 and getattr(self, "armed", False):
                        park()
                    end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
                    if getattr(self, "armed", False) and self.pos < half < end:
                        end = half
                    out, self.pos = self.data[self.pos:end], end
                    return out

                def seek(self, pos: int, whence: int = 0) -> int:
                    self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else len(self.data) + pos)
                    self.armed = True  # the first pass is botocore's checksum; the send comes after a seek
                    return self.pos

                def tell(self) -> int:
                    return self.pos

                def __len__(self) -> int:
                    return len(self.data)

            def put_object(**kw):
                if not kw["Key"].endswith("current.json"):
                    kw["Body"] = HalfThenPark(kw["Body"])
                    kw["ContentLength"] = len(kw["Body"])
                return real_put(**kw)

            client.put_object = put_object
    elif mode == "before-flip":
        real = store.put_bytes

        def put_bytes(key, data, content_type="application/octet-stream"):
            if key.endswith("current.json"):
                park()  # the new version is complete in the store; the pointer still names the old one
            return real(key, data, content_type)

        store.__dict__["put_bytes"] = put_bytes  # instance attribute shadows the method
    elif mode != "complete":
        raise SystemExit(f"unknown mode {mode}")
    steps.publish_index(store, MERCHANT, CATEGORY, big_document(tag, entries))
    print("PUBLISHED", flush=True)


def run_child(store, mode: str, tag: str, entries: int) -> subprocess.Popen:
    env = {**os.environ, **store_env(store), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, "publish-child", mode, tag, str(entries)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_line(proc: subprocess.Popen, want: str, timeout: float = 60.0) -> None:
    box: list = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    line = box[0].strip() if box else ""
    if line != want:
        proc.kill()
        raise AssertionError(f"child said {line!r}, wanted {want!r}; stderr:\n{proc.stderr.read()[-3000:]}")


def read_current(store) -> dict:
    """What a serving reader does: pointer -> document; must always parse and be complete."""
    from bggen_assets import steps

    pointer = steps.read_index_pointer(store, MERCHANT, CATEGORY)
    doc = json.loads(store.get_bytes(pointer["key"]))
    assert doc["version"] == pointer["version"] and len(doc["entries"]) == pointer["entries"]
    return doc


@pytest.mark.parametrize("mode", ["mid-version", "before-flip"])
def test_publish_killed_midway_leaves_previous_index(store, mode):
    from bggen_assets import steps

    entries = 20_000  # ~5 MB: the kill lands inside a real transfer
    first = steps.publish_index(store, MERCHANT, CATEGORY, big_document("first", 100))
    proc = run_child(store, mode, "second", entries)
    try:
        wait_line(proc, "READY")
        # while the publisher is parked half-way, readers see the first index, whole
        assert read_current(store)["tag"] == "first"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    doc = read_current(store)
    assert doc["tag"] == "first" and doc["version"] == first["version"]
    # no partial object is visible under the index prefix: every listed object parses completely
    prefix = steps.index_prefix(MERCHANT, CATEGORY)
    versions = [k for k in store.list_keys(prefix) if not k.endswith("current.json")]
    for key in versions:
        json.loads(store.get_bytes(key))
    if mode == "mid-version":
        assert versions == [first["key"]], versions  # the half-sent version never became an object
    else:
        assert len(versions) == 2  # complete but unreferenced (the next publish supersedes it)
    # the next publish (a retried run) works and readers move to it
    again = steps.publish_index(store, MERCHANT, CATEGORY, big_document("third", 100))
    assert read_current(store)["tag"] == "third" and again["version"] == first["version"] + 1


def test_readers_never_see_partial_index_under_repeated_kills(store):
    """A reader loops while publishers are killed at arbitrary moments: every read is whole."""
    from bggen_assets import steps

    steps.publish_index(store, MERCHANT, CATEGORY, big_document("base", 50))
    stop, reads, errors = threading.Event(), [0], []

    def reader():
        while not stop.is_set():
            try:
                read_current(store)
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i, delay in enumerate((0.4, 0.7, 1.0)):
            proc = run_child(store, "complete", f"kill-{i}", 5_000)
            time.sleep(delay)  # somewhere in imports, the version PUT, the flip, or done
            proc.kill()
            proc.wait(timeout=30)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert reads[0] > 0


# -- miss queue: storms and concurrent consumers ------------------------------------------------------
def test_miss_storm_queues_once_under_concurrency(metadata_db):
    from resources.metadata_db import Miss

    miss = Miss(MERCHANT, CATEGORY, "p1", "b1", "warm")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: metadata_db.record_miss(miss), range(200)))
    rows = metadata_db.miss_rows()
    assert len(rows) == 1 and rows[0]["request_count"] == 200 and rows[0]["status"] == "pending"


def test_concurrent_consumers_claim_disjoint_misses(metadata_db):
    from resources.metadata_db import Miss
    from resources.miss_queue import DbMissQueue

    queue = DbMissQueue(metadata_db=metadata_db)
    for i in range(120):
        queue.record(Miss(MERCHANT, CATEGORY, f"p{i:03d}", "b1", "warm"), now=1000.0 + i)
    # newest first
    assert queue.claim("probe", 1)[0].product_id == "p119"
    got: dict[str, list[str]] = {}

    def consumer(name):
        mine = []
        while True:
            batch = queue.claim(name, 7)
            if not batch:
                break
            mine += [m.request_key for m in batch]
        got[name] = mine

    threads = [threading.Thread(target=consumer, args=(f"c{i}",)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    everything = [k for ks in got.values() for k in ks]
    assert len(everything) == len(set(everything)) == 119  # none twice, none lost
    assert queue.pending() == []
    assert queue.mark_done(everything) == 119


def test_claim_lease_expiry_and_rerequest(metadata_db):
    from resources.metadata_db import Miss
    from resources.miss_queue import DbMissQueue

    queue = DbMissQueue(metadata_db=metadata_db)
    a, b = Miss(MERCHANT, CATEGORY, "pa", "b1", "warm"), Miss(MERCHANT, CATEGORY, "pb", "b1", "warm")
    queue.record(a)
    queue.record(b)
    claimed = queue.claim("worker-1", 10)
    assert {m.product_id for m in claimed} == {"pa", "pb"}
    planned_at = time.time()
    time.sleep(0.01)
    queue.record(b)  # requested again while claimed: stays claimed (no second consumer takes it)
    assert queue.claim("worker-2", 10) == []
    assert queue.mark_done([a.request_key, b.request_key], served_before=planned_at) == 1
    assert [m.product_id for m in queue.pending()] == ["pb"]  # re-requested after the plan: back in the queue
    # a dead consumer's claim returns after the lease
    [m] = queue.claim("worker-3", 10)
    assert queue.pending() == []
    from resources.metadata_db import MetadataDB

    short = DbMissQueue(metadata_db=MetadataDB(url=metadata_db.url, claim_lease_s=0.0))
    time.sleep(0.01)
    assert [x.product_id for x in short.pending()] == ["pb"]
    assert [x.product_id for x in short.claim("worker-4", 10)] == ["pb"]
    short.metadata_db.dispose()


CLAIM_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from resources.metadata_db import MetadataDB
db = MetadataDB(url=sys.argv[2])
keys = []
while True:
    batch = db.claim_misses(sys.argv[3], 3)
    if not batch:
        break
    keys += [m.request_key for m in batch]
print(json.dumps(keys))
"""


def test_consumer_processes_claim_disjoint_misses(metadata_db):
    """Separate processes (separate pools / connections) against the same DB: no double work."""
    from resources.metadata_db import Miss

    for i in range(60):
        metadata_db.record_miss(Miss(MERCHANT, CATEGORY, f"p{i:03d}", "b2", "warm"), now=2000.0 + i)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_SCRIPT, str(ROOT), metadata_db.url, f"proc{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    claimed = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        claimed += json.loads(out)
    assert len(claimed) == len(set(claimed)) == 60


# -- the sensor reads whichever queue is configured ---------------------------------------------------
@pytest.fixture(params=["db", pytest.param("redis", marks=pytest.mark.services)])
def configured_queue(request, metadata_db):
    if request.param == "db":
        from resources.miss_queue import DbMissQueue

        yield DbMissQueue(metadata_db=metadata_db)
        return
    import uuid

    from resources.redis_miss_queue import RedisMissQueue

    q = RedisMissQueue(redis_url=request.getfixturevalue("redis_url"), namespace=f"{{bggen-t-{uuid.uuid4().hex[:8]}}}:m")
    yield q
    q.clear()
    q.close()


def test_bucket_miss_sensor_reads_configured_queue(configured_queue):
    from dagster import DagsterInstance, build_sensor_context

    from bggen_assets.partitions import partition_key
    from resources.metadata_db import Miss
    from sensors.misses import bucket_miss_sensor

    t0 = time.time()
    configured_queue.record(Miss("northwind", "bags", "p1", "b1", "warm"), now=t0 - 5)
    for _ in range(30):  # a storm: one request for generation
        configured_queue.record(Miss("acme-outfitters", "footwear", "p9", "b2", "warm"), now=t0)
    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(instance=instance, resources={"miss_queue": configured_queue}) as ctx:
            result = bucket_miss_sensor(ctx)
    requests = result.run_requests
    assert [r.partition_key for r in requests] == [partition_key("acme-outfitters", "footwear"),
                                                   partition_key("northwind", "bags")]  # newest first
    assert requests[0].tags["bggen/pending_misses"] == "1"  # the storm counts once


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "publish-child":
    _publish_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
