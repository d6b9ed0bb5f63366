"""The serving function: a hit is exactly W x H cut from the bucket canvas; a miss is the fallback."""
import io

import numpy as np
import pytest
from PIL import Image

from bggen_assets.core.compositing import canvas_pyramid, crop_placement, fallback_creative, lanczos_crop
from bggen_assets.core.geometry import Placement, bucket_for, place_product
from bggen_assets.core.manifests import item_key
from bggen_assets.serving.creative import CreativeService, LRUBytes, NotFound
from pipeline_helpers import run_partition


@pytest.fixture
def served(pipeline_resources):
    run_partition(pipeline_resources, "northwind", "footwear")
    service = CreativeService(pipeline_resources["store"], pipeline_resources["miss_queue"],
                              pipeline_resources["creative_config"], index_ttl_s=0.0)
    return service, pipeline_resources


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _decode(body):
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_a_hit_is_exactly_the_crop_of_the_bucket_canvas(served):
    service, res = served
    doc = service.index("northwind", "footwear")
    pid = sorted(doc.products)[0]
    for placement in res["creative_config"].placements("northwind"):
        c = service.serve("northwind", pid, placement.width, placement.height, "beach-sunset",
                          fill=placement.fill, anchor=(placement.anchor_x, placement.anchor_y), fmt="png")
        assert c.hit and c.category == "footwear"
        got = _decode(c.body)
        assert got.shape == (placement.height, placement.width, 3)
        _, _, bw, bh = doc.products[pid].bbox
        placed = place_product(bw, bh, placement)
        entry = doc.entries[item_key(pid, bucket_for(placed, 1.2).id, "beach-sunset")]
        assert c.image_key == entry.image_key and c.bucket_id == bucket_for(placed, 1.2).id
        canvas = Image.open(io.BytesIO(res["store"].get_bytes(entry.image_key))).convert("RGB")
        layout = entry.layout
        assert np.array_equal(got, np.asarray(crop_placement(canvas_pyramid(canvas), layout, placed)))
        # the fast path (reduced canvas copies, bilinear upscale) stays visually that of one Lanczos pass
        assert psnr(got, np.asarray(lanczos_crop(canvas, layout, placed))) > 40.0


def test_a_miss_records_it_and_answers_the_fallback_at_once(served):
    service, res = served
    pid = "NO-0001"
    c = service.serve("northwind", pid, 333, 222, "beach-sunset", fill=0.5, anchor=(0.1, 0.9), fmt="png")
    assert not c.hit and c.image_key is None
    img = _decode(c.body)
    assert img.shape == (222, 333, 3)
    doc = service.index("northwind", "footwear")
    _, _, bw, bh = doc.products[pid].bbox
    placed = place_product(bw, bh, Placement(333, 222, 0.5, 0.1, 0.9))
    cutout = np.asarray(Image.open(io.BytesIO(res["store"].get_bytes(doc.products[pid].cutout_key))).convert("RGBA"))
    assert np.abs(img.astype(int) - fallback_creative(cutout, placed).astype(int)).max() <= 1
    pending = res["miss_queue"].pending()  # every theme of the bucket, not only the one asked for
    assert sorted((m.product_id, m.bucket_id, m.prompt_id) for m in pending) == \
        sorted((pid, c.bucket_id, t) for t in doc.prompts)


def test_a_miss_becomes_a_hit_after_the_miss_run(served):
    service, res = served
    first = service.serve("northwind", "NO-0001", 333, 222, "beach-sunset", fill=0.5, anchor=(0.1, 0.9))
    assert not first.hit
    run_partition(res, "northwind", "footwear", selection=["bucket_plans", "generated_backgrounds", "serving_index"])
    second = service.serve("northwind", "NO-0001", 333, 222, "beach-sunset", fill=0.5, anchor=(0.1, 0.9))
    assert second.hit  # picked up the new index version without a new service
    assert res["miss_queue"].pending() == []


def test_unknown_input_is_a_clear_error(served):
    service, _ = served
    with pytest.raises(NotFound, match="unknown product"):
        service.serve("northwind", "NOPE", 300, 250)
    with pytest.raises(NotFound, match="unknown merchant"):
        service.serve("nobody", "NO-0001", 300, 250)
    with pytest.raises(NotFound, match="unknown prompt"):
        service.serve("northwind", "NO-0001", 300, 250, "disco")
    with pytest.raises(ValueError, match="placement width"):
        service.serve("northwind", "NO-0001", 0, 250)
    with pytest.raises(ValueError, match="merchant name"):
        service.serve("../etc", "NO-0001", 300, 250)
    with pytest.raises(ValueError, match="unsupported format"):
        service.serve("northwind", "NO-0001", 300, 250, fmt="gif")


def test_formats(served):
    service, _ = served
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF"), ("png", b"\x89PNG")):
        c = service.serve("northwind", "NO-0001", 300, 250, fmt=fmt)
        assert c.body.startswith(magic) and Image.open(io.BytesIO(c.body)).size == (300, 250)


def test_lru_is_bounded_by_bytes():
    lru = LRUBytes(100)
    for i in range(10):
        lru.put(str(i), i, 30)
    assert lru.size <= 100 and lru.get("9") == 9 and lru.get("0") is None
    lru.put("huge", 0, 1000)
    assert lru.get("huge") is None


class CountingStore:
    """The real object store, counting reads of each key (to see what a request had to fetch)."""

    def __init__(self, store):
        self.store, self.reads = store, {}

    def get_bytes(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return self.store.get_bytes(key)

    def list_keys(self, prefix):
        return self.store.list_keys(prefix)


def _wait_prefetch(service, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while service.prefetching:
        assert time.monotonic() < deadline, "prefetch did not finish"
        time.sleep(0.05)


def test_prefetch_decodes_every_canvas_before_the_first_request(served):
    _, res = served
    store = CountingStore(res["store"])
    service = CreativeService(store, res["miss_queue"], res["creative_config"], prefetch=True)
    assert service.load_all_indexes() == 1
    _wait_prefetch(service)
    doc = service.index("northwind", "footwear")
    keys = {e.image_key for e in doc.entries.values()}
    assert service.prefetched == len(keys) and all(store.reads[k] == 1 for k in keys)
    placement = res["creative_config"].placements("northwind")[0]
    c = service.serve("northwind", sorted(doc.products)[0], placement.width, placement.height, "beach-sunset")
    assert c.hit and store.reads[c.image_key] == 1  # served from the prefetched canvas, not re-read


def test_prefetch_stops_before_it_would_evict(served):
    _, res = served
    probe = CreativeService(res["store"], res["miss_queue"])
    doc = probe.index("northwind", "footwear")
    one = probe._pyramid(next(iter(doc.entries.values())).image_key).nbytes
    service = CreativeService(res["store"], res["miss_queue"], cache_bytes=3 * one, prefetch=True)
    service.load_all_indexes()
    _wait_prefetch(service)
    assert 0 < service.prefetched <= 3 and service.cache.size <= 3 * one


def test_a_broken_canvas_does_not_stop_the_prefetch(served, caplog):
    _, res = served
    doc = CreativeService(res["store"], res["miss_queue"]).index("northwind", "footwear")
    broken = next(iter(doc.entries.values())).image_key
    original = res["store"].get_bytes(broken)
    res["store"].put_bytes(broken, b"not a png")
    try:
        service = CreativeService(res["store"], res["miss_queue"], prefetch=True)
        service.load_all_indexes()
        _wait_prefetch(service)
        keys = {e.image_key for e in doc.entries.values()}
        assert service.prefetched == len(keys) - 1 and "prefetch of " + broken in caplog.text
    finally:
        res["store"].put_bytes(broken, original)
