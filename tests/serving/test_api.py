"""The serving API over real HTTP: uvicorn on 127.0.0.1 (a free port) in a thread, httpx as the client.

A populated index comes from materializing the pipeline once per session for one small partition
(northwind x footwear); each test copies those objects into its own `store` fixture (a local dir,
or the S3 bucket on the services backend) and uses its own `metadata_db`.
"""
import concurrent.futures as cf
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from bggen_assets.core import serving_index
from bggen_assets.core.keys import source_key

MERCHANT, CATEGORY = "northwind", "footwear"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/composite"
_GOLDEN: dict = {}


def golden_world(tmp_path_factory, sample_dir) -> dict:
    """Materialize northwind x footwear once per session into a local store; returns its root."""
    if "root" in _GOLDEN:
        return _GOLDEN
    from dagster import DagsterInstance, materialize

    from bggen_assets.assets.pipeline import pipeline_assets
    from bggen_assets.partitions import partition_key
    from resources.creative_config import CreativeConfig
    from resources.generator import GeneratorResource
    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource
    from resources.metadata_db import MetadataDB
    from resources.miss_queue import DbMissQueue
    from resources.object_store import LocalObjectStore

    base = tmp_path_factory.mktemp("golden")
    store = LocalObjectStore(root=str(base / "objects"))
    db = MetadataDB(url=f"sqlite:///{base / 'golden.db'}")
    cc = CreativeConfig(feeds_dir=str(sample_dir / "feeds"), placements_path=str(sample_dir / "placements.yaml"),
                        prompts_path=str(sample_dir / "prompts.yaml"), canvas_pixels=120_000)
    resources = {"store": store, "metadata_db": db, "miss_queue": DbMissQueue(metadata_db=db), "creative_config": cc,
                 "masker": MaskerResource(), "generator": GeneratorResource(),
                 "manifest_io_manager": ManifestIOManager(store=store)}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("merchant", [MERCHANT])
    instance.add_dynamic_partitions("category", [CATEGORY])
    result = materialize(pipeline_assets, partition_key=partition_key(MERCHANT, CATEGORY), resources=resources,
                         instance=instance, raise_on_error=True)
    assert result.success
    pointer = serving_index.read_pointer(store, MERCHANT, CATEGORY)
    doc = serving_index.read_document(store, pointer)
    keys = [serving_index.pointer_key(MERCHANT, CATEGORY), pointer.key]
    keys += sorted({e.image_key for e in doc.entries.values()})
    for p in doc.products.values():
        keys += [p.cutout_key, source_key(p.image_hash)]
    _GOLDEN.update(root=base / "objects", keys=keys, doc=doc, pointer=pointer)
    return _GOLDEN


def copy_world(golden: dict, store) -> None:
    root: Path = golden["root"]

    def put(key: str) -> None:
        store.put_bytes(key, (root / key).read_bytes())

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, golden["keys"]))


@pytest.fixture
def world(tmp_path_factory, sample_dir, store, metadata_db, creative_config):
    golden = golden_world(tmp_path_factory, sample_dir)
    copy_world(golden, store)
    return {"store": store, "metadata_db": metadata_db, "creative_config": creative_config, "doc": golden["doc"]}


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def make_app(world, serving_config=None, **kwargs):
    from bggen_assets.serving.api import create_app
    from resources.bandit_store import BanditStore
    from resources.miss_queue import DbMissQueue

    db = world["metadata_db"]
    kwargs.setdefault("background", False)
    return create_app(world["store"], DbMissQueue(metadata_db=db), BanditStore(metadata_db=db),
                      world["creative_config"], serving_config, **kwargs)


@pytest.fixture
def bandit_only():
    from bggen_assets.serving.personalize import ServingConfig

    return ServingConfig(variant_shares={"bandit": 1.0}, seed=0)


@pytest.fixture
def live(world, bandit_only):
    app = make_app(world, bandit_only)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        srv.client = client
        srv.state = app.state.serving
        yield srv


def product(world, pid=None):
    return pid or sorted(world["doc"].products)[0]


def find_miss_size(doc, pid, fill=0.35, anchor=(0.1, 0.9)):
    """A size whose bucket no plan covered (so every theme misses) when placed with this fill and
    anchor (the preview's extra sizes use Placement's defaults)."""
    from bggen_assets.core.geometry import Placement
    from bggen_assets.serving.preview import cell_status

    for w in range(120, 1600, 37):
        for h in (40, 61, 90, 333, 1500):
            if not any(cell_status(doc, pid, Placement(w, h, fill, *anchor), t)[0] for t in doc.prompts):
                return w, h
    raise AssertionError("no miss size found")


def params(world, **kw):
    return {"merchant": MERCHANT, "product": product(world), "width": 300, "height": 250, **kw}


#: a JPEG q85 of a crop is above this PSNR to the crop; the crops of two themes are far below it
JPEG_PSNR_DB = 30.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def expected_crop(world, pid: str, width: int, height: int, theme: str) -> tuple[np.ndarray, str]:
    """The crop a hit must show, from the stored canvas with the core functions: (RGB pixels, bucket id)."""
    from bggen_assets.core.compositing import canvas_pyramid, crop_placement
    from bggen_assets.core.geometry import Placement, bucket_for, place_product

    doc = world["doc"]
    configured = [p for p in world["creative_config"].placements(MERCHANT) if (p.width, p.height) == (width, height)]
    placement = configured[0] if configured else Placement(width, height)
    _, _, bw, bh = doc.products[pid].bbox
    placed = place_product(bw, bh, placement)
    bucket = bucket_for(placed, doc.bucket_ratio)
    entry = doc.entry(pid, bucket.id, theme)
    canvas = Image.open(io.BytesIO(world["store"].get_bytes(entry.image_key))).convert("RGB")
    crop = crop_placement(canvas_pyramid(canvas), entry.layout, placed)
    return np.asarray(crop), bucket.id


# ---------------------------------------------------------------------------------------- tests
def test_health_and_openapi(live):
    r = live.client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert {"prefetched_canvases", "prefetching", "cache_bytes"} <= set(r.json())
    spec = live.client.get("/openapi.json").json()
    assert {"/creative", "/events", "/health", "/preview"} <= set(spec["paths"])
    names = {p["name"] for p in spec["paths"]["/creative"]["get"]["parameters"]}
    assert {"merchant", "product", "width", "height", "fill", "anchor", "country", "gender", "device", "user_id"} <= names


def test_hit_serves_the_bucket_crop_with_headers(live, world):
    r = live.client.get("/creative", params=params(world, user_id="alice", country="us", device="mobile"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-cache"] == "hit" and r.headers["x-variant"] == "bandit" and r.headers["x-policy"] == "linucb"
    assert r.headers["x-theme"] in world["doc"].prompts
    assert r.headers["x-bucket"].startswith("r1.2-")
    assert len(r.headers["x-impression-id"]) == 32
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and img.size == (300, 250)
    # the pixels are the crop of the bucket canvas of that theme (computed here from the stored
    # canvas with the core functions), within what JPEG q85 changes, and not another theme's crop
    expected = {theme: expected_crop(world, product(world), 300, 250, theme) for theme in world["doc"].prompts}
    assert r.headers["x-bucket"] == expected[r.headers["x-theme"]][1]
    got = np.asarray(img.convert("RGB"))
    assert psnr(got, expected[r.headers["x-theme"]][0]) > JPEG_PSNR_DB
    assert all(psnr(got, crop) < JPEG_PSNR_DB for theme, (crop, _) in expected.items() if theme != r.headers["x-theme"])
    # the same bytes as the serving function for that theme (the API adds no pixel change)
    from bggen_assets.serving.creative import CreativeService

    svc = CreativeService(world["store"], None, world["creative_config"], jpeg_quality=85)
    ref = svc.serve(MERCHANT, product(world), svc.default_placement(MERCHANT, 300, 250), prompt_id=r.headers["x-theme"])
    assert ref.hit and ref.body == r.content
    # WebP by Accept
    r = live.client.get("/creative", params=params(world), headers={"Accept": "image/webp,image/*;q=0.8"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).format == "WEBP"
    assert live.client.get("/creative", params=params(world), headers={"Accept": "image/*"}).headers["content-type"] == "image/jpeg"


def test_a_request_covered_by_a_neighbour_canvas_is_a_hit_in_the_api(live, world):
    from bggen_assets.core.serving_index import CanvasLookup
    from test_serving import neighbour_covered

    doc, pid = world["doc"], product(world)
    placement = neighbour_covered(doc, pid, doc.prompts)  # its own grid bucket was not generated
    q = params(world, width=placement.width, height=placement.height, fill=f"{placement.fill:g}", user_id="carol")
    r = live.client.get("/creative", params=q)
    assert r.status_code == 200, r.text
    assert r.headers["x-cache"] == "hit"
    found = CanvasLookup(doc).find(pid, r.headers["x-theme"], placement)
    assert r.headers["x-bucket"] == found.canvas_id
    assert Image.open(io.BytesIO(r.content)).size == (placement.width, placement.height)
    live.state.flush()
    from resources.miss_queue import DbMissQueue

    assert DbMissQueue(metadata_db=world["metadata_db"]).pending() == []


def test_miss_answers_fallback_at_once_and_queues_once(live, world):
    pid = product(world)
    w, h = find_miss_size(world["doc"], pid)
    q = params(world, width=w, height=h, fill=0.35, anchor="0.1,0.9", user_id="bob")
    seen_keys = set()
    for _ in range(5):  # a storm on one key queues once
        r = live.client.get("/creative", params=q)  # answered without any generation run
        assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        assert Image.open(io.BytesIO(r.content)).size == (w, h)
        seen_keys.add((r.headers["x-bucket"], r.headers["x-theme"]))
    from resources.miss_queue import DbMissQueue

    queue = DbMissQueue(metadata_db=world["metadata_db"])
    assert queue.pending() == []  # not written on the request path
    live.state.flush()
    pending = queue.pending()
    # every theme of the bucket is queued (the bandit will try them all), not only the ones shown;
    # the size is not declared, so it earned generation at its 3rd request: 3 requests counted
    # (requests 3..5) by 1 user, and the first 2 were held (served the fallback only, counted)
    (bucket,) = {b for b, _ in seen_keys}
    assert sorted((m.bucket_id, m.prompt_id) for m in pending) == sorted((bucket, t) for t in world["doc"].prompts)
    assert all(m.product_id == pid and m.merchant == MERCHANT and m.category == CATEGORY for m in pending)
    assert [(m.request_count, m.distinct_users) for m in pending] == [(3, 1)] * len(pending)
    assert live.client.get("/health").json()["misses"]["held"]["below_threshold"] == 2
    # bucket_miss_sensor turns them into a run request for the partition
    from dagster import DagsterInstance, build_sensor_context

    from sensors.misses import bucket_miss_sensor

    with build_sensor_context(instance=DagsterInstance.ephemeral(), resources={"miss_queue": queue}) as ctx:
        result = bucket_miss_sensor(ctx)
    assert [str(rr.partition_key) for rr in result.run_requests] == [f"{CATEGORY}|{MERCHANT}"]


def test_click_feedback_updates_bandit_and_is_counted_once(live, world):
    r = live.client.get("/creative", params=params(world, user_id="carol", country="gb", gender="female"))
    imp, theme = r.headers["x-impression-id"], r.headers["x-theme"]
    c1 = live.client.post("/events", json={"impression_id": imp, "event": "click"})
    assert c1.status_code == 200, c1.text
    assert c1.json()["first_click"] is True and c1.json()["bandit_updated"] is True
    c2 = live.client.post("/events", json={"impression_id": imp})
    assert c2.status_code == 200 and c2.json()["first_click"] is False and c2.json()["bandit_updated"] is False
    live.state.flush()
    from resources.bandit_store import BanditStore

    bs = BanditStore(metadata_db=world["metadata_db"])
    assert bs.variant_counts() == [{"merchant": MERCHANT, "variant": "bandit", "impressions": 1, "clicks": 1}]
    sums = bs.load_sums(MERCHANT, CATEGORY, "linucb")
    A, b = sums[theme]
    assert A[0, 0] == 1.0 and b[0] == 1.0  # one impression (x x^T), one click (r x) on the bias term
    row = bs.get_impression(imp)
    assert row["theme"] == theme and json.loads(row["context"])["country"] == "gb"
    # a click for an impression this replica never served but another one flushed: found in the DB
    app2 = make_app(world)
    with LiveServer(app2) as srv2, httpx.Client(base_url=srv2.url) as c:
        c3 = c.post("/events", json={"impression_id": imp})
        assert c3.status_code == 200 and c3.json()["first_click"] is False


@pytest.mark.parametrize("query,status,needle", [
    ({"width": 0}, 400, "width"),
    ({"width": 5000}, 400, "width"),
    ({"height": -3}, 400, "height"),
    ({"width": "wide"}, 400, "width"),
    ({"width": 4096, "height": 4096}, 400, "pixels"),
    ({"fill": 0}, 400, "fill"),
    ({"fill": 1.5}, 400, "fill"),
    ({"fill": "nan"}, 400, "fill"),
    ({"anchor": "2,0"}, 400, "anchor"),
    ({"anchor": "middle"}, 400, "anchor"),
    ({"anchor": "x" * 40}, 400, "anchor"),
    ({"merchant": "North Wind"}, 400, "merchant"),
    ({"merchant": "m" * 65}, 400, "merchant"),
    ({"merchant": "nobody"}, 404, "unknown merchant"),
    ({"product": "NO-9999"}, 404, "unknown product"),
    ({"product": "../etc/passwd"}, 400, "product"),
    ({"product": "p" * 129}, 400, "product"),
    ({"country": "usa"}, 400, "country"),
    ({"gender": "x" * 40}, 400, "gender"),
    ({"device": "<script>"}, 400, "device"),
    ({"user_id": "u" * 129}, 400, "user_id"),
    ({"user_id": "two words"}, 400, "user_id"),
    ({"merchant": None}, 400, "merchant"),
    ({"width": None}, 400, "width"),
])
def test_bad_parameters_are_4xx_with_a_clear_message(live, world, query, status, needle):
    q = {**params(world), **query}
    q = {k: v for k, v in q.items() if v is not None}
    r = live.client.get("/creative", params=q)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_bad_accept_events_and_methods_are_4xx(live, world):
    r = live.client.get("/creative", params=params(world), headers={"Accept": "text/html"})
    assert r.status_code == 406 and "image/jpeg" in r.json()["error"]
    for body in ({"impression_id": "nothex"}, {"impression_id": "a" * 32, "event": "purchase"}, {}, [1, 2]):
        r = live.client.post("/events", json=body)
        assert r.status_code == 400, (body, r.text)
    r = live.client.post("/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = live.client.post("/events", json={"impression_id": "0" * 32})
    assert r.status_code == 404 and "unknown impression" in r.json()["error"]
    assert live.client.post("/creative", params=params(world)).status_code == 405
    assert live.client.get("/nope").status_code == 404
    r = live.client.get("/creative?" + "x=" + "a" * 20000 + "&" + "&".join(f"{k}={v}" for k, v in params(world).items()))
    assert r.status_code == 414 and r.json() == {"error": "query string longer than 2048 bytes"}


def _break_canvases(world, pid):
    """Every canvas the product's 300x250 hit could come from, overwritten with bytes that are no image."""
    for theme in world["doc"].prompts:
        _, bucket_id = expected_crop(world, pid, 300, 250, theme)
        world["store"].put_bytes(world["doc"].entry(pid, bucket_id, theme).image_key, b"this is not a PNG")


def _break_index(world, pid):
    world["store"].put_bytes(serving_index.read_pointer(world["store"], MERCHANT, CATEGORY).key, b'{"products": ')


@pytest.mark.parametrize("fault,raised", [(_break_canvases, UnidentifiedImageError), (_break_index, ValueError)])
def test_an_internal_error_is_a_bare_500_and_logged(world, bandit_only, caplog, fault, raised):
    """A real fault below the API (a stored canvas or index that does not decode): the answer is
    500 with no internals (no exception type or text, no traceback, no key or path); the log has it."""
    pid = product(world)
    fault(world, pid)
    app = make_app(world, bandit_only, prefetch=False)
    with caplog.at_level("ERROR", logger="bggen.serving"), LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.get("/creative", params=params(world))
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json" and r.json() == {"error": "internal error"}
    logged = [rec for rec in caplog.records if rec.name == "bggen.serving" and rec.exc_info]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], raised) and str(logged[0].exc_info[1])


def test_the_api_starts_without_the_dagster_definitions(tmp_path):
    """bggen-serve builds its resources without importing the code location (assets, sensors, jobs)."""
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from bggen_assets.serving.api import app_from_env\n"
        "app = app_from_env(env={'BGGEN_DATA_DIR': sys.argv[1]}, background=False, prefetch=False)\n"
        "with TestClient(app) as c:\n"
        "    assert c.get('/health').json()['status'] == 'ok'\n"
        "print(sorted(m for m in sys.modules if m == 'bggen_assets.definitions' or m == 'bggen_assets.jobs'\n"
        "             or m.startswith(('bggen_assets.assets', 'sensors'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_ab_variants_are_deterministic_with_configured_shares(world):
    from bggen_assets.serving.personalize import ServingConfig

    cfg = ServingConfig(variant_shares={"control": 1, "positioned": 1, "random": 1, "bandit": 1}, seed=1)
    app = make_app(world, cfg)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        seen = {}
        for i in range(40):
            r = c.get("/creative", params=params(world, user_id=f"user-{i}"))
            assert r.status_code == 200
            seen[f"user-{i}"] = r.headers["x-variant"]
            if r.headers["x-variant"] in ("control", "positioned"):
                assert r.headers["x-theme"] == "none"
            # what the creative is, in its XMP: the product photo says nothing; the rest are
            # composites (the template's backgrounds are not a trained model's)
            from test_serving import digital_source_type

            expected = None if r.headers["x-variant"] == "control" else COMPOSITE
            assert digital_source_type(r.content) == expected, r.headers["x-variant"]
        assert set(seen.values()) == {"control", "positioned", "random", "bandit"}
        for uid in list(seen)[:10]:  # sticky
            assert c.get("/creative", params=params(world, user_id=uid)).headers["x-variant"] == seen[uid]
        ctrl = next(u for u, v in seen.items() if v == "control")
        img = Image.open(io.BytesIO(c.get("/creative", params=params(world, user_id=ctrl)).content))
        assert img.size == (300, 250)
        app.state.serving.flush()
    from resources.bandit_store import BanditStore

    counts = {r["variant"]: r["impressions"] for r in BanditStore(metadata_db=world["metadata_db"]).variant_counts()}
    assert sum(counts.values()) == 51


def test_new_index_version_is_picked_up_without_restart(world, bandit_only):
    from bggen_assets.serving.creative import LRUBytes

    app = make_app(world, bandit_only, index_ttl_s=0.0)
    store = world["store"]
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        pid = product(world)
        assert c.get("/creative", params=params(world)).status_code == 200
        # publish a new version without that product: the API answers 404 at once
        doc = serving_index.read_current(store, MERCHANT, CATEGORY)
        others = {k: p for k, p in doc.products.items() if k != pid}
        assert serving_index.publish(store, doc.model_copy(update={"products": others})).version == doc.version + 1
        r = c.get("/creative", params=params(world))
        assert r.status_code == 404 and "unknown product" in r.json()["error"]
    # the decoded-canvas LRU is bounded by bytes
    lru = LRUBytes(100)
    for i in range(10):
        lru.put(f"k{i}", object(), 30)
    assert lru.size <= 100 and lru.get("k9") is not None and lru.get("k0") is None


def test_concurrent_requests_are_all_answered(live, world):
    def one(i):
        r = live.client.get("/creative", params=params(world, user_id=f"c{i}", width=300 + (i % 3), height=250))
        return r.status_code

    with cf.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(64))) == {200}
    assert live.client.get("/health").json()["served"]["hit"] == 64
