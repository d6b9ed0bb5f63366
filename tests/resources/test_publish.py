"""Compare-and-swap publish of the serving index, on the local store and (services pass) SeaweedFS S3.

The `store` fixture (tests/conftest.py) is a local dir, or a fresh prefix in the SeaweedFS bucket
under BGGEN_TEST_BACKEND=services, so each test here runs on both:

- the conditional writes the publish is made of do what they say on this store (SeaweedFS is asked
  for real: `If-None-Match: *` refuses an existing key, `If-Match` a changed one);
- publishers racing on one partition, threads and processes together: every published version is
  distinct, the versions are exactly 1..n, each publisher's own are increasing, a reader looping
  meanwhile never goes back, and every reader ends on the newest;
- a publisher that loses the swap publishes again on top of the winner, or gives up with a clear
  PublishConflict after its attempts.
"""
from __future__ import annotations

import multiprocessing
import threading

import pytest
from test_backends import store_env, store_from_env

from bggen_assets.core import serving_index
from bggen_assets.core.manifests import IndexDocument, IndexEntry

MERCHANT, CATEGORY = "northwind", "boots"


def document(tag: str) -> IndexDocument:
    return IndexDocument(
        merchant=MERCHANT, category=CATEGORY, bucket_ratio=1.2, canvas_pixels=120_000, generator_id=tag,
        prompts=("warm",), products={},
        entries={f"p{i}|b{i}|warm": IndexEntry(image_key=f"canvas/{tag}-{i}.png", canvas=(512, 512),
                                               product_box=(1, 2, 3, 4)) for i in range(3)})


def publish_many(store, tag: str, n: int) -> list[int]:
    return [serving_index.publish(store, document(f"{tag}-{i}")).version for i in range(n)]


def _child(env: dict, tag: str, n: int, start, out) -> None:
    store = store_from_env(env)
    start.wait(30)
    out.put((tag, publish_many(store, tag, n)))


def test_conditional_writes_are_honoured_by_the_store(store):
    assert store.put_if_absent("cas/new.json", b"one")
    assert not store.put_if_absent("cas/new.json", b"two")  # the first writer's object stays
    assert store.get_bytes("cas/new.json") == b"one"
    data, tag = store.get_tagged("cas/new.json")
    assert data == b"one"
    assert store.put_if_match("cas/new.json", b"three", tag)
    assert not store.put_if_match("cas/new.json", b"four", tag)  # the tag names "one", the object is "three"
    assert store.get_bytes("cas/new.json") == b"three"
    assert not store.put_if_match("cas/absent.json", b"x", tag) and not store.exists("cas/absent.json")
    assert sorted(store.list_keys("cas")) == ["cas/new.json"]  # no lock or temp file is listed


def test_concurrent_publishers_never_share_a_version(store):
    threads, processes, each = 6, 3, 4
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "bggen_assets.deployment", "bggen_assets.core.serving_index"])
    start, out = ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=_child, args=(store_env(store), f"proc{i}", each, start, out), daemon=True)
                for i in range(processes)]
    for child in children:
        child.start()
    results: dict[str, list[int]] = {}
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            pointer = serving_index.read_pointer(store, MERCHANT, CATEGORY)
            if pointer is not None:
                doc = serving_index.read_document(store, pointer)
                assert doc.version == pointer.version
                seen.append(pointer.version)

    def thread_publisher(tag: str) -> None:
        start.wait(30)
        results[tag] = publish_many(store, tag, each)

    workers = [threading.Thread(target=thread_publisher, args=(f"thread{i}",)) for i in range(threads)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for w in workers:
        w.start()
    start.set()
    try:
        for w in workers:
            w.join(120)
        for _ in children:
            tag, versions = out.get(timeout=120)
            results[tag] = versions
    finally:
        stop.set()
        watcher.join(30)
        for child in children:
            child.join(30)
    total = (threads + processes) * each
    published = [v for versions in results.values() for v in versions]
    assert len(results) == threads + processes
    assert sorted(published) == list(range(1, total + 1)), sorted(published)  # distinct, none skipped
    assert all(versions == sorted(versions) for versions in results.values()), results
    assert seen and seen == sorted(seen), "a reader went back to an older index"
    newest = serving_index.read_current(store, MERCHANT, CATEGORY)
    assert newest.version == total
    # every reader, in any process, converges on the newest
    assert serving_index.read_current(store_from_env(store_env(store)), MERCHANT, CATEGORY).version == total


def test_a_publisher_that_loses_the_swap_publishes_on_top_of_the_winner(tmp_path):
    from resources.object_store import LocalObjectStore

    class Interloper(LocalObjectStore):
        """A store on which another publisher flips the pointer while this one uploads its version."""

        def put_bytes(self, key, data, content_type="application/octet-stream"):
            super().put_bytes(key, data, content_type)
            if self.__dict__.get("interrupt", 0) > 0 and key != serving_index.pointer_key(MERCHANT, CATEGORY):
                self.__dict__["interrupt"] -= 1
                serving_index.publish(LocalObjectStore(root=self.root), document("winner"))

    store = Interloper(root=str(tmp_path))
    serving_index.publish(store, document("first"))
    store.__dict__["interrupt"] = 1
    mine = serving_index.publish(store, document("mine"))
    assert mine.version == 3  # the winner took 2; this one renumbered and published after it
    current = serving_index.read_current(store, MERCHANT, CATEGORY)
    assert (current.version, current.generator_id) == (3, "mine")

    store.__dict__["interrupt"] = 2
    with pytest.raises(serving_index.PublishConflict, match=r"northwind/boots lost the pointer's compare-and-swap 2 times"):
        serving_index.publish(store, document("loser"), attempts=2)
    current = serving_index.read_current(store, MERCHANT, CATEGORY)
    assert (current.version, current.generator_id) == (5, "winner")  # the loser changed nothing live
