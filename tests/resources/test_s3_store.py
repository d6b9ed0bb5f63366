"""The object store on S3 (dagster-aws S3Resource -> boto3) against a real SeaweedFS server.

Services pass only. The outage test starts its own SeaweedFS (the session one stays up for the
other tests), stops it while the generation step runs, and checks: the step fails with a clear
error naming the S3 operation and endpoint, the rerun after the server is back completes, and no
half-written object is visible (every canvas in the store decodes whole).
"""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from services import SeaweedServer, make_s3_store, s3_resource, services_only

pytestmark = services_only


def test_roundtrip_list_delete_and_missing(s3_store):
    from resources.object_store import ObjectNotFound

    s3_store.put_bytes("a/b/one.json", b'{"x": 1}', "application/json")
    s3_store.put_bytes("a/b/two.bin", bytes(range(256)) * 4096)
    assert s3_store.get_bytes("a/b/one.json") == b'{"x": 1}'
    assert s3_store.get_bytes("a/b/two.bin") == bytes(range(256)) * 4096
    assert sorted(s3_store.list_keys("a/b")) == ["a/b/one.json", "a/b/two.bin"]
    assert s3_store.exists("a/b/one.json") and not s3_store.exists("a/b/none")
    with pytest.raises(ObjectNotFound):
        s3_store.get_bytes("a/b/none")
    s3_store.delete("a/b/one.json")
    assert list(s3_store.list_keys("a")) == ["a/b/two.bin"]
    assert s3_store.describe().startswith(f"s3://{s3_store.bucket}/")


def test_prefixes_isolate_tenants(seaweedfs):
    a = make_s3_store(seaweedfs.endpoint_url, bucket=seaweedfs.bucket)
    b = make_s3_store(seaweedfs.endpoint_url, bucket=seaweedfs.bucket)
    a.put_bytes("k/x", b"a")
    assert not b.exists("k/x") and list(b.list_keys("k")) == []


def test_unchecked_keys_are_refused(s3_store):
    from bggen_assets.core.keys import InvalidName

    for bad in ("../etc/passwd", "/abs", "a/../../b", ""):
        with pytest.raises(InvalidName):
            s3_store.put_bytes(bad, b"x")


def test_concurrent_writers_last_whole_object_wins(s3_store):
    """PUT is atomic: readers racing writers only ever see one writer's whole object."""
    bodies = [bytes([i]) * 300_000 for i in range(6)]
    s3_store.put_bytes("race/obj", bodies[0])
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(s3_store.get_bytes("race/obj"))

    t = threading.Thread(target=reader)
    t.start()
    writers = [threading.Thread(target=s3_store.put_bytes, args=("race/obj", b)) for b in bodies[1:]]
    [w.start() for w in writers]
    [w.join() for w in writers]
    stop.set()
    t.join()
    assert seen and all(s in bodies for s in seen)
    assert s3_store.get_bytes("race/obj") in bodies


def test_unreachable_endpoint_is_a_clear_error():
    from services import free_ports

    from resources.object_store import ObjectStoreError, S3ObjectStore

    port = free_ports(1)[0]
    res = s3_resource(f"http://127.0.0.1:{port}").model_copy(update={"max_attempts": 1})
    store = S3ObjectStore(bucket="nobody", prefix="p", s3=res)
    with pytest.raises(ObjectStoreError) as info:
        store.put_bytes("x/y", b"1")
    msg = str(info.value)
    assert "S3 put s3://nobody/p/x/y" in msg and f"127.0.0.1:{port}" in msg and "EndpointConnectionError" in msg


def test_s3_stopped_mid_generation_then_rerun_completes(tmp_path, metadata_db, creative_config):
    from pipeline_util import HookedGenerator, materialize_partition, reset_hooks, step_events

    from bggen_assets.core import serving_index
    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource
    from resources.miss_queue import DbMissQueue
    from resources.object_store import S3ObjectStore

    server = SeaweedServer(tmp_path / "weed").start()
    try:
        server.client().create_bucket(Bucket="outage")
        # few client-side retries: the test waits for the failure, not for botocore's backoff
        store = S3ObjectStore(bucket="outage", prefix="run", s3=s3_resource(server.endpoint_url).model_copy(
            update={"max_attempts": 2}))
        resources = {"store": store, "metadata_db": metadata_db, "miss_queue": DbMissQueue(metadata_db=metadata_db),
                     "creative_config": creative_config, "masker": MaskerResource(),
                     "generator": HookedGenerator(batch_size=4), "manifest_io_manager": ManifestIOManager(store=store)}
        merchant, category = "acme-outfitters", "beauty"

        def on_generate(n):
            if n == 3:  # some canvases are stored; the server goes away mid-step
                server.kill()

        reset_hooks(on_generate=on_generate)
        try:
            failed = materialize_partition(resources, merchant, category)
        finally:
            reset_hooks()
        assert not failed.success
        # the attempt that was generating fails on a canvas; its retries (RetryPolicy) fail too
        first = step_events(failed, "generated_backgrounds", "STEP_UP_FOR_RETRY")
        assert first, "the generation step should fail while S3 is down"
        text = first[0].event_specific_data.error.to_string()
        assert "ObjectStoreError: S3 " in text and "s3://outage/run/canvases/" in text and server.endpoint_url in text, text
        final = step_events(failed, "generated_backgrounds", "STEP_FAILURE")
        assert final and "ObjectStoreError: S3 " in final[0].event_specific_data.error.to_string()

        server.start()  # same data dir and ports: the objects written before the outage are back
        done = materialize_partition(resources, merchant, category)
        assert done.success
        index = serving_index.read_current(store, merchant, category)
        canvases = list(store.list_keys("canvases"))
        assert {e.image_key for e in index.entries.values()} <= set(canvases)
        for key in canvases:  # nothing half-written: every stored canvas decodes whole
            img = cv2.imdecode(np.frombuffer(store.get_bytes(key), np.uint8), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.size > 0, key
        gen = step_events(done, "generated_backgrounds", "STEP_SUCCESS")
        assert gen
    finally:
        server.stop()
