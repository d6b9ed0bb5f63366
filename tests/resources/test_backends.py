"""Backend behaviour that must hold on the embedded defaults AND on the real services.

The `store` / `metadata_db` fixtures (tests/conftest.py) are a local dir + SQLite, or SeaweedFS S3 +
MariaDB under BGGEN_TEST_BACKEND=services, so every test here runs on both in CI:

- the serving index is published atomically: a publisher SIGKILLed mid-write of the new version,
  or between the version and the pointer flip, leaves readers on the previous complete index;
  publishers killed at random points of their upload never show a reader a partial index;
- the miss queue: a storm over one key queues once (threads), concurrent consumers (threads and
  processes) claim disjoint misses, none lost;
- the bucket_miss_sensor reads whichever queue is configured (DB or Redis), requests the misses of
  a failed run again (new run key per attempt), and no partition is starved by another's storm.

The publisher children are forked from a forkserver that has done the imports once (a fresh
interpreter spends seconds importing, and the kills used to land there), and every kill is placed,
and then classified, by the markers the child writes around each object it uploads.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bggen_assets.core import serving_index
from bggen_assets.core.manifests import IndexDocument, IndexEntry

ROOT = Path(__file__).resolve().parents[2]
MERCHANT, CATEGORY = "northwind", "bags"


# -- publisher children ---------------------------------------------------------------------------
def store_env(store) -> dict:
    """Environment that rebuilds the same store in another process (store_from_env)."""
    from resources.object_store import LocalObjectStore

    if isinstance(store, LocalObjectStore):
        return {"BGGEN_STORE": "local", "BGGEN_STORE_ROOT": store.root}
    return {"BGGEN_STORE": "s3", "BGGEN_S3_BUCKET": store.bucket, "BGGEN_S3_PREFIX": store.prefix,
            "BGGEN_S3_ENDPOINT_URL": store.s3.endpoint_url, "AWS_ACCESS_KEY_ID": store.s3.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": store.s3.aws_secret_access_key, "AWS_REGION": store.s3.region_name}


def store_from_env(env: dict):
    from bggen_assets.deployment import DeploymentEnv, build_store

    return build_store(DeploymentEnv(env, read_secrets_now=True))


def big_document(tag: str, entries: int) -> IndexDocument:
    """An index of `entries` canvases, ~250 bytes of JSON each (20,000 make a ~5 MB version object)."""
    pad = "x" * 180
    return IndexDocument(
        merchant=MERCHANT, category=CATEGORY, bucket_ratio=1.2, canvas_pixels=120_000, generator_id=tag,
        prompts=("warm",), products={},
        entries={f"p{i}|b{i % 97}|warm": IndexEntry(image_key=f"canvas/{i:08d}-{pad}.png", canvas=(512, 512),
                                                     product_box=(1, 2, 3, 4)) for i in range(entries)})


def _publisher(env: dict, marks_path: str, mode: str, entries: int) -> None:
    """The publisher child. Before and after every object it uploads it appends a marker line
    (`<time> put <key> <bytes>`, `<time> stored <key>`), and `<time> published <version>` after
    each publish. mode `loop`: publish version after version until killed; `mid-version` /
    `before-flip`: publish once, stop at that point (`<time> parked`) and wait to be killed."""
    from resources.object_store import LocalObjectStore

    fd = os.open(marks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark(*words) -> None:  # one write(2) per line: whole lines, in order, whatever kills us
        os.write(fd, (" ".join(map(str, (repr(time.time()), *words))) + "\n").encode())

    def park() -> None:
        mark("parked")
        time.sleep(600)

    store = store_from_env(env)
    document = big_document("child", entries)
    if mode == "mid-version":  # the new version object is half written when the process dies
        if isinstance(store, LocalObjectStore):
            os.fsync = lambda fd: park()  # bytes in the temp file, not yet renamed into place
        else:
            client = store._c()
            real_put = client.put_object

            class HalfThenPark:
                """A request body that sends half of itself, then parks the process."""

                def __init__(self, data: bytes):
                    self.data, self.pos, self.armed = data, 0, False

                def read(self, n: int = -1) -> bytes:
                    half = len(self.data) // 2
                    if self.armed and self.pos >= half and n != 0:
                        park()
                    end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
                    if self.armed and self.pos < half < end:
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
                if not kw["Key"].endswith(serving_index.POINTER_NAME):
                    kw["Body"] = HalfThenPark(kw["Body"])
                    kw["ContentLength"] = len(kw["Body"])
                return real_put(**kw)

            client.put_object = put_object
    elif mode not in ("loop", "before-flip"):
        raise ValueError(f"unknown publisher mode {mode!r}")
    real = store.put_bytes

    def put_bytes(key, data, content_type="application/octet-stream"):
        if mode == "before-flip" and key.endswith(serving_index.POINTER_NAME):
            park()  # the new version is complete in the store; the pointer still names the old one
        mark("put", key, len(data))
        real(key, data, content_type)
        mark("stored", key)

    store.__dict__["put_bytes"] = put_bytes  # instance attribute shadows the method
    real_if_match, real_if_absent = store.put_if_match, store.put_if_absent

    def put_if_match(key, data, tag, content_type="application/octet-stream"):  # the pointer's compare-and-swap
        if mode == "before-flip":
            park()
        mark("put", key, len(data))
        flipped = real_if_match(key, data, tag, content_type)
        mark("stored", key)
        return flipped

    def put_if_absent(key, data, content_type="application/octet-stream"):
        mark("put", key, len(data))
        created = real_if_absent(key, data, content_type)
        mark("stored", key)
        return created

    store.__dict__["put_if_match"] = put_if_match
    store.__dict__["put_if_absent"] = put_if_absent
    n = 0
    while True:
        n += 1
        pointer = serving_index.publish(store, document.model_copy(update={"generator_id": f"child-{n}"}))
        mark("published", pointer.version)
        if mode != "loop":
            return


def _reader(env: dict, stop, results) -> None:
    """What a serving replica does, in a loop until `stop`: pointer -> document, parsed whole."""
    store = store_from_env(env)
    reads, versions, errors = 0, [], []
    while not stop.is_set():
        try:
            versions.append(read_current(store).version)
            reads += 1
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            errors.append(repr(exc)[:300])
    results.put({"reads": reads, "versions": versions, "errors": errors[:5]})


def forkserver():
    """A forkserver that has imported what the children need: a child starts in milliseconds."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([_publisher.__module__, "bggen_assets.deployment", "bggen_assets.core.serving_index"])
    return ctx


class Publisher:
    """A publisher child and the markers it has written: [(time, what, args...)]."""

    def __init__(self, store, marks_path: Path, mode: str, entries: int):
        self.marks_path = marks_path
        self.proc = forkserver().Process(target=_publisher, args=(store_env(store), str(marks_path), mode, entries),
                                         daemon=True)
        self.proc.start()

    def marks(self) -> list[tuple]:
        try:
            lines = self.marks_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(float(t), *rest) for t, *rest in (line.split() for line in lines)]

    def wait_for(self, found, timeout: float = 60.0):
        """Poll the markers until found(marks) returns something; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = found(self.marks())
            if hit:
                return hit
            if not self.proc.is_alive():
                raise AssertionError(f"publisher exited with {self.proc.exitcode}; markers: {self.marks()[-5:]}")
            time.sleep(0.0005)
        self.kill()
        raise AssertionError(f"publisher did not get there within {timeout:.0f}s; markers: {self.marks()[-5:]}")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()  # SIGKILL: no handler, no cleanup, no flush
        self.proc.join(30)


def read_current(store) -> IndexDocument:
    """What a serving reader does: pointer -> document; must always parse and be complete."""
    pointer = serving_index.read_pointer(store, MERCHANT, CATEGORY)
    doc = serving_index.read_document(store, pointer)
    assert doc.version == pointer.version and len(doc.entries) == pointer.entries
    return doc


def is_version(key: str) -> bool:
    return not key.endswith(serving_index.POINTER_NAME)


def temp_files(store) -> set[str]:
    """The local store's temp files in the index directory (a write not yet renamed into place)."""
    from resources.object_store import LocalObjectStore

    if not isinstance(store, LocalObjectStore):
        return set()
    where = Path(store.root) / serving_index.index_prefix(MERCHANT, CATEGORY)
    return {p.name for p in where.glob(".tmp-*")}


def version_of(key: str) -> int:
    return int(re.search(r"/v(\d{6})-[0-9a-f]{12}\.json$", key).group(1))


def listed_versions(store, checked: set | None = None) -> list[str]:
    """Every version object under the partition's index prefix, each parsed whole (those not in
    `checked` yet: a version object is never rewritten)."""
    checked = set() if checked is None else checked
    prefix = serving_index.index_prefix(MERCHANT, CATEGORY)
    keys = [k for k in store.list_keys(prefix) if is_version(k)]
    for key in keys:
        if key not in checked:
            IndexDocument.from_json(store.get_bytes(key))  # no partial object is visible
            checked.add(key)
    return keys


@pytest.mark.parametrize("mode", ["mid-version", "before-flip"])
def test_publish_killed_midway_leaves_previous_index(store, mode, tmp_path):
    first = serving_index.publish(store, big_document("first", 100))
    child = Publisher(store, tmp_path / "marks", mode, 20_000)  # ~5 MB: the kill lands inside a real transfer
    try:
        child.wait_for(lambda marks: any(m[1] == "parked" for m in marks))
        # while the publisher is parked half-way, readers see the first index, whole
        assert read_current(store).generator_id == "first"
    finally:
        child.kill()
    doc = read_current(store)
    assert doc.generator_id == "first" and doc.version == first.version
    versions = listed_versions(store)
    if mode == "mid-version":
        assert versions == [first.key], versions  # the half-sent version never became an object
    else:
        assert len(versions) == 2  # complete but unreferenced (the next publish supersedes it)
    # the next publish (a retried run) works and readers move to it
    again = serving_index.publish(store, big_document("third", 100))
    assert read_current(store).generator_id == "third" and again.version == first.version + 1


# Phases of a publish a kill can land in, from the markers the child wrote before it died.
IN_VERSION, BEFORE_FLIP, IN_FLIP, AFTER_FLIP, BETWEEN = (
    "in the version upload", "version stored, pointer not yet written", "in the pointer upload",
    "pointer stored", "between publishes")
MID_UPLOAD = (IN_VERSION, BEFORE_FLIP, IN_FLIP)


def phase_at_kill(marks: list[tuple]) -> tuple[str, int]:
    """(phase, version being published) from the markers after the child's last `published`."""
    last_done = max((i for i, m in enumerate(marks) if m[1] == "published"), default=-1)
    tail = marks[last_done + 1:]
    if not tail:
        return BETWEEN, int(marks[last_done][2]) + 1
    what, key = tail[-1][1], tail[-1][2]
    started = [m[2] for m in tail if m[1] == "put" and is_version(m[2])]
    version = version_of(started[0]) if started else int(marks[last_done][2]) + 1
    pointer = key.endswith(serving_index.POINTER_NAME)
    return {("put", False): IN_VERSION, ("stored", False): BEFORE_FLIP, ("put", True): IN_FLIP,
            ("stored", True): AFTER_FLIP}[(what, pointer)], version


def test_readers_never_see_a_partial_index_while_publishers_are_killed_mid_upload(store, tmp_path):
    """Publishers are SIGKILLed at random points after they started uploading a version; the kills
    are placed by the child's own markers and the store then shows what was and was not uploaded.
    A reader process loops meanwhile: every read it makes is a whole index."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    serving_index.publish(store, big_document("base", 50))
    ctx = forkserver()
    stop, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(store_env(store), stop, results), daemon=True)
    reader.start()
    landed: list[str] = []
    checked: set[str] = set()
    try:
        for attempt in range(12):
            child = Publisher(store, tmp_path / f"marks-{attempt}", "loop", 10_000)  # ~2.5 MB
            # one whole publish first: how long an upload (version PUT to stored pointer) takes here
            marks = child.wait_for(lambda m: m if any(x[1] == "published" for x in m) else None)
            done = next(i for i, x in enumerate(marks) if x[1] == "published")
            upload_s = marks[done - 1][0] - next(x[0] for x in marks if x[1] == "put" and is_version(x[2]))
            # then kill the next publish at a random point after its version upload started
            temp_before = temp_files(store)
            child.wait_for(lambda m: sum(x[1] == "put" and is_version(x[2]) for x in m) == 2)
            time.sleep(rng.uniform(0.0, 0.8 * upload_s))  # 0.8: the marker is seen, and the kill lands, a little late
            child.kill()
            phase, version = phase_at_kill(child.marks())
            landed.append(phase)
            pointer = serving_index.read_pointer(store, MERCHANT, CATEGORY)
            read_current(store)
            keys = listed_versions(store, checked)
            published_before = max(int(m[2]) for m in child.marks() if m[1] == "published")
            in_flight = [k for k in keys if version_of(k) == version]
            if phase in (IN_VERSION, BEFORE_FLIP):
                # some of the upload happened, not all: readers stay on the last whole version
                assert pointer.version == published_before == version - 1, (phase, pointer, seed)
                if phase == BEFORE_FLIP:
                    assert len(in_flight) == 1, (keys, seed)  # the version is whole in the store, unreferenced
                # bytes in a temp file not yet renamed into place are never listed
                assert not (temp_files(store) - temp_before) & {k.rsplit("/", 1)[-1] for k in keys}
            elif phase == IN_FLIP:
                assert pointer.version in (version - 1, version) and len(in_flight) == 1, (pointer, seed)
            elif phase == AFTER_FLIP:
                assert pointer.version == version and len(in_flight) == 1, (pointer, seed)
            else:  # BETWEEN: the next version was being serialised, nothing of it uploaded
                assert pointer.version == version - 1 and not in_flight, (pointer, seed)
            if sum(p in MID_UPLOAD for p in landed) >= 4 and IN_VERSION in landed:
                break
    finally:
        stop.set()
        outcome = results.get(timeout=60)
        reader.join(30)
    assert not outcome["errors"], outcome["errors"]
    assert outcome["reads"] > 0 and len(set(outcome["versions"])) >= 2, outcome["reads"]
    assert outcome["versions"] == sorted(outcome["versions"])  # no reader ever went back to an older index
    # four kills landed mid-upload (in 12 tries at most), at least one inside a version object's transfer
    assert IN_VERSION in landed and sum(p in MID_UPLOAD for p in landed) >= 4, (landed, seed)
    again = serving_index.publish(store, big_document("after", 50))
    assert read_current(store).generator_id == "after" and again.version == pointer.version + 1


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


# -- the queue per partition, and bucket_miss_sensor on whichever queue is configured ----------------
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


def with_lease(queue, claim_lease_s: float):
    """The same queue (same table / keys) read with another claim lease: `0.0` is the world after
    every claim's lease has run out, without waiting 15 minutes."""
    from resources.metadata_db import MetadataDB
    from resources.miss_queue import DbMissQueue

    if isinstance(queue, DbMissQueue):
        return DbMissQueue(metadata_db=MetadataDB(url=queue.metadata_db.url, claim_lease_s=claim_lease_s))
    return type(queue)(redis_url=queue.redis_url, namespace=queue.namespace, claim_lease_s=claim_lease_s)


def close(queue) -> None:
    if hasattr(queue, "metadata_db"):
        queue.metadata_db.dispose()
    else:
        queue.close()


def test_waiting_partitions_change_when_a_claim_lapses_not_when_it_is_released(configured_queue):
    from resources.metadata_db import Miss

    a, b = Miss(MERCHANT, CATEGORY, "pa", "b1", "warm"), Miss(MERCHANT, CATEGORY, "pb", "b1", "warm")
    configured_queue.record(a, now=100.0)
    configured_queue.record(b, now=200.0)
    configured_queue.record(Miss("acme-outfitters", "home", "px", "b1", "warm"), now=150.0)
    assert [(p.category, p.misses, p.oldest_request, p.changed_at) for p in configured_queue.waiting_partitions()] == [
        (CATEGORY, 2, 100.0, 200.0), ("home", 1, 150.0, 150.0)]  # the longest-waiting first
    before = time.time()
    assert len(configured_queue.claim("run:1", 10, MERCHANT, CATEGORY)) == 2
    after = time.time()
    assert [p.category for p in configured_queue.waiting_partitions()] == ["home"]  # claimed: not waiting
    configured_queue.release([a.request_key])  # a miss the plan could not use: back, and no change
    assert [(p.misses, p.changed_at) for p in configured_queue.waiting_partitions() if p.category == CATEGORY] == \
        [(1, 100.0)]
    later = with_lease(configured_queue, 0.0)
    try:  # b's claim lapsed: the partition changed when b was claimed
        [part] = [p for p in later.waiting_partitions() if p.category == CATEGORY]
        assert part.misses == 2 and part.oldest_request == 100.0 and before <= part.changed_at <= after
    finally:
        close(later)


def tick(instance, queue, cursor=None):
    """One evaluation of bucket_miss_sensor, as the daemon makes it."""
    from dagster import build_sensor_context

    from sensors.misses import bucket_miss_sensor

    with build_sensor_context(instance=instance, cursor=cursor, resources={"miss_queue": queue}) as ctx:
        return bucket_miss_sensor(ctx)


def requests_of(result) -> list:
    return list(getattr(result, "run_requests", None) or [])


def test_bucket_miss_sensor_reads_configured_queue(configured_queue):
    from dagster import DagsterInstance

    from bggen_assets.partitions import partition_key
    from resources.metadata_db import Miss

    t0 = time.time()
    configured_queue.record(Miss("northwind", "bags", "p1", "b1", "warm"), now=t0 - 5)
    for _ in range(30):  # a storm: one request for generation
        configured_queue.record(Miss("acme-outfitters", "footwear", "p9", "b2", "warm"), now=t0)
    with DagsterInstance.ephemeral() as instance:
        requests = requests_of(tick(instance, configured_queue))
    # the partition that has waited longest first
    assert [r.partition_key for r in requests] == [partition_key("northwind", "bags"),
                                                   partition_key("acme-outfitters", "footwear")]
    assert requests[1].tags["bggen/pending_misses"] == "1"  # the storm counts once


# What the sensor's pending() read was cut to: the newest misses of the whole queue.
OLD_PENDING_LIMIT = 5000


def test_a_partition_with_old_misses_is_not_starved_by_a_storm_of_newer_ones(configured_queue):
    """More newer misses in one partition than the queue read returns must not hide another
    partition's older ones: it is requested too, and first (it has waited longest)."""
    from dagster import DagsterInstance

    from bggen_assets.partitions import partition_key
    from resources.metadata_db import Miss

    configured_queue.record(Miss("northwind", "bags", "p-old", "b1", "warm"), now=1000.0)
    newer = [Miss("acme-outfitters", "footwear", f"p{i:05d}", "b1", "warm") for i in range(OLD_PENDING_LIMIT + 1)]
    with ThreadPoolExecutor(4) as pool:  # the storm, in any order
        list(pool.map(lambda i: configured_queue.record(newer[i], now=2000.0 + i), range(len(newer) - 2)))
    for i in (len(newer) - 2, len(newer) - 1):  # the two newest, in order (Redis: LIFO by arrival)
        configured_queue.record(newer[i], now=2000.0 + i)
    with DagsterInstance.ephemeral() as instance:
        requests = requests_of(tick(instance, configured_queue))
    assert [(r.partition_key, r.tags["bggen/pending_misses"]) for r in requests] == [
        (partition_key("northwind", "bags"), "1"), (partition_key("acme-outfitters", "footwear"), str(len(newer)))]
    # within a partition the newest misses are planned first (LIFO)
    assert [m.product_id for m in configured_queue.claim("run:x", 2, "acme-outfitters", "footwear")] == \
        [newer[-1].product_id, newer[-2].product_id]


def execute(instance, request, resources):
    """Run what a RunRequest asks for, as the daemon would launch it (its partition, assets, tags)."""
    from dagster import materialize

    from bggen_assets.assets.pipeline import pipeline_assets

    return materialize(pipeline_assets, selection=request.asset_selection, partition_key=request.partition_key,
                       tags=request.tags, resources=resources, instance=instance, raise_on_error=False)


def test_misses_of_a_failed_run_are_requested_again_with_a_new_run_key(configured_queue, store, metadata_db,
                                                                         creative_config, tmp_path):
    """record miss -> the sensor requests a run -> it fails before claiming (a broken placements
    file) -> the next tick requests it again, under a new run key -> that run claims the miss and
    dies (the GPU fell off the bus) -> while the claim holds nothing is requested -> the claim
    lapses -> the next tick requests a run, again a new key -> it serves the miss -> nothing left."""
    from dagster import DagsterInstance, Failure

    from pipeline_helpers import run_partition
    from pipeline_util import HookedGenerator, reset_hooks

    from bggen_assets.core.manifests import item_key
    from resources.creative_config import CreativeConfig
    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource
    from resources.metadata_db import Miss

    def resources(queue, config=creative_config):
        return {"store": store, "metadata_db": metadata_db, "miss_queue": queue, "creative_config": config,
                "masker": MaskerResource(), "generator": HookedGenerator(batch_size=4),
                "manifest_io_manager": ManifestIOManager(store=store)}

    instance = DagsterInstance.ephemeral()
    # the partition's catalog and masks exist (an earlier run); a shopper misses a size
    first, _ = run_partition(resources(configured_queue), MERCHANT, CATEGORY, instance=instance,
                             selection=["catalog", "product_masks"])
    assert first.success
    product = sorted(p.product_id for p in creative_config.read_feed(MERCHANT) if p.category == CATEGORY)[0]
    theme = creative_config.prompts(CATEGORY)[0].id
    miss = Miss(MERCHANT, CATEGORY, product, "r1.2-t1-r7-b1-l7", theme)
    configured_queue.record(miss)

    one = tick(instance, configured_queue)
    [r1] = requests_of(one)
    broken = CreativeConfig(**{**creative_config.model_dump(), "placements_path": str(tmp_path / "placements.yaml")})
    (tmp_path / "placements.yaml").write_text("placements: [unclosed\n")
    assert not execute(instance, r1, resources(configured_queue, broken)).success  # failed before claiming
    assert [m.request_key for m in configured_queue.pending()] == [miss.request_key]

    two = tick(instance, configured_queue, one.cursor)
    [r2] = requests_of(two)  # the failed run's miss, asked for again
    assert r2.run_key != r1.run_key and r2.partition_key == r1.partition_key

    def gpu_lost(_n):
        raise Failure("CUDA error: an illegal memory access was encountered", allow_retries=False)

    reset_hooks(on_generate=gpu_lost)
    try:
        assert not execute(instance, r2, resources(configured_queue)).success  # failed holding the claim
    finally:
        reset_hooks()
    assert configured_queue.pending() == []  # claimed by the dead run until its lease runs out
    three = tick(instance, configured_queue, two.cursor)
    assert not requests_of(three)

    later = with_lease(configured_queue, 0.0)
    try:
        assert [m.request_key for m in later.pending()] == [miss.request_key]  # the claim lapsed
        four = tick(instance, later, two.cursor)  # a skipped tick leaves the cursor as it was
        [r3] = requests_of(four)
        assert r3.run_key not in (r1.run_key, r2.run_key) and r3.partition_key == r1.partition_key
        assert execute(instance, r3, resources(later)).success
        doc = serving_index.read_current(store, MERCHANT, CATEGORY)
        assert item_key(miss.product_id, miss.bucket_id, miss.prompt_id) in doc.entries  # served
        assert later.pending() == []
        assert not requests_of(tick(instance, later, four.cursor))
    finally:
        close(later)
