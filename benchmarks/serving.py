"""Serving a hit through the API vs the bare floor, measured side by side.

1. Builds a world once (sample catalog, one partition northwind x footwear materialized with the
   template generator at the production canvas budget) under --data (default bggen_data/bench/serving).
2. Starts the API with uvicorn, 1 worker, on 127.0.0.1 in a subprocess pinned to CPU 0; the client
   runs in this process pinned to CPU 1 (keep-alive httpx clients, a bounded request loop).
3. Floor, in one process on CPU 0: for the same requests, decode the canvas PNG + crop + resize +
   JPEG encode (the issue's floor), and the same without the decode (canvas already in memory, as
   the API keeps it).
Prints p50/p99 latency and requests/s, sequential and with 8 concurrent clients, and the ratios.

    .venv/bin/python benchmarks/serving.py [--quick] [--requests 2000]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZES = [(300, 250), (728, 90), (160, 600), (300, 600), (320, 50), (970, 250), (336, 280), (468, 60), (250, 250),
         (120, 600), (1200, 628), (1080, 1080)]


def pin(cpu: int) -> None:
    try:
        if len(os.sched_getaffinity(0)) > 1 and cpu < os.cpu_count():
            os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def resources(data: Path):
    from resources.creative_config import CreativeConfig
    from resources.metadata_db import MetadataDB
    from resources.miss_queue import DbMissQueue
    from resources.object_store import LocalObjectStore

    store = LocalObjectStore(root=str(data / "objects"))
    db = MetadataDB(url=f"sqlite:///{data / 'bggen.db'}")
    cc = CreativeConfig(feeds_dir=str(data / "sample" / "feeds"), placements_path=str(data / "sample" / "placements.yaml"),
                        prompts_path=str(data / "sample" / "prompts.yaml"))
    return store, db, DbMissQueue(metadata_db=db), cc


def build_world(data: Path) -> None:
    if (data / "objects" / "index" / "northwind" / "footwear" / "current.json").exists():
        return
    from dagster import DagsterInstance, materialize

    from bggen_assets.assets.pipeline import pipeline_assets
    from bggen_assets.partitions import partition_key
    from bggen_assets.sample_catalog import generate_sample_catalog
    from resources.generator import GeneratorResource
    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource

    generate_sample_catalog(data / "sample", products_per_merchant=8, image_size=800)
    store, db, mq, cc = resources(data)
    inst = DagsterInstance.ephemeral()
    inst.add_dynamic_partitions("merchant", ["northwind"])
    inst.add_dynamic_partitions("category", ["footwear"])
    res = {"store": store, "metadata_db": db, "miss_queue": mq, "creative_config": cc, "masker": MaskerResource(),
           "generator": GeneratorResource(), "manifest_io_manager": ManifestIOManager(store=store)}
    materialize(pipeline_assets, partition_key=partition_key("northwind", "footwear"), resources=res, instance=inst)


def serve(data: Path, port: int, response_cache_mb: int) -> None:
    import uvicorn

    from bggen_assets.serving.api import create_app
    from bggen_assets.serving.personalize import ServingConfig
    from resources.bandit_store import BanditStore

    pin(0)
    store, db, mq, cc = resources(data)
    app = create_app(store, mq, BanditStore(metadata_db=db), cc, ServingConfig(variant_shares={"bandit": 1.0}),
                     response_cache_bytes=response_cache_mb * 2**20)
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")


def request_list(data: Path, n: int) -> list[dict]:
    store, *_ = resources(data)
    ptr = json.loads(store.get_bytes("index/northwind/footwear/current.json"))
    doc = json.loads(store.get_bytes(ptr["key"]))
    pids = sorted(doc["products"])
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        out.append({"merchant": "northwind", "product": pids[(i // len(SIZES)) % len(pids)], "width": w, "height": h,
                    "user_id": f"u{i % 997}", "country": ("us", "gb", "de")[i % 3], "device": ("mobile", "desktop")[i % 2]})
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_client(url: str, reqs: list[dict], concurrency: int) -> dict:
    import httpx

    lat: list[float] = []
    hits = [0]
    lock = threading.Lock()
    chunks = [reqs[i::concurrency] for i in range(concurrency)]

    def worker(chunk):
        local = []
        h = 0
        with httpx.Client(base_url=url, timeout=30) as c:
            for q in chunk:
                t = time.perf_counter()
                r = c.get("/creative", params=q)
                local.append(time.perf_counter() - t)
                h += r.headers.get("x-cache") == "hit"
        with lock:
            lat.extend(local)
            hits[0] += h

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(ch,)) for ch in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50_ms": 1000 * pct(lat, 0.5), "p99_ms": 1000 * pct(lat, 0.99), "rps": len(lat) / wall, "hits": hits[0], "n": len(lat)}


def floor(data: Path, reqs: list[dict], decode: bool) -> dict:
    """decode PNG + crop + resize + JPEG encode of the same (canvas, placement)s, in this process."""
    from PIL import Image

    from bggen_assets.core.compositing import crop_placement
    from bggen_assets.core.geometry import CanvasLayout, Placement, bucket_for, place_product

    store, *_ = resources(data)
    ptr = json.loads(store.get_bytes("index/northwind/footwear/current.json"))
    doc = json.loads(store.get_bytes(ptr["key"]))
    theme = doc["prompts"][0]
    raw, decoded = {}, {}
    jobs = []
    for q in reqs:
        p = doc["products"][q["product"]]
        placed = place_product(p["bbox"][2], p["bbox"][3], Placement(q["width"], q["height"]))
        e = doc["entries"][f"{q['product']}|{bucket_for(placed, doc['bucket_ratio']).id}|{theme}"]
        k = e["image_key"]
        if k not in raw:
            raw[k] = store.get_bytes(k)
            im = Image.open(io.BytesIO(raw[k]))
            decoded[k] = im.convert("RGB")
        jobs.append((k, CanvasLayout(*e["canvas"], *e["product_box"]), placed))
    lat = []
    t0 = time.perf_counter()
    for k, layout, placed in jobs:
        t = time.perf_counter()
        canvas = Image.open(io.BytesIO(raw[k])).convert("RGB") if decode else decoded[k]
        img = crop_placement(canvas, layout, placed)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"p50_ms": 1000 * pct(lat, 0.5), "p99_ms": 1000 * pct(lat, 0.99), "rps": len(lat) / wall, "n": len(lat)}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def measure_api(data: Path, reqs: list[dict], warm: list[dict], response_cache_mb: int) -> dict:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--data", str(data), "--port", str(port),
                             "--response-cache-mb", str(response_cache_mb)], cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        run_client(url, warm, 4)  # decode every canvas once, warm the policies
        seq = run_client(url, reqs, 1)
        conc = run_client(url, reqs, 8)
        return {"seq": seq, "conc": conc}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--data", default=str(ROOT / "bggen_data" / "bench" / "serving"))
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--response-cache-mb", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    data = Path(a.data)
    if a.serve:
        serve(data, a.port, a.response_cache_mb)
        return 0
    n = 400 if a.quick else a.requests
    t = time.perf_counter()
    build_world(data)
    print(f"world ready in {time.perf_counter() - t:.1f} s ({data})", flush=True)
    reqs = request_list(data, n)
    warm = request_list(data, len(SIZES) * 8)
    pin(0)
    fl_dec = floor(data, reqs, decode=True)
    fl_mem = floor(data, reqs, decode=False)
    pin(1)
    api = measure_api(data, reqs, warm, 0)
    cpus = os.cpu_count()
    print(f"\nserving a hit: {n} requests over {len(SIZES)} placement sizes, canvas budget 786,432 px, JPEG q85; "
          f"server: uvicorn 1 worker pinned to CPU 0; client pinned to CPU 1; {cpus} CPUs (shared)")
    print(f"{'path':58s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s}")
    rows = [("floor: decode PNG + crop + resize + encode (1 process)", fl_dec),
            ("floor without decode (canvas in memory, as the API)", fl_mem),
            ("API sequential (1 client)", api["seq"]), ("API 8 concurrent clients", api["conc"])]
    for name, r in rows:
        print(f"{name:58s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['rps']:8.0f}")
    for label, fl in (("floor with decode", fl_dec), ("floor without decode", fl_mem)):
        print(f"ratio API/{label}: p50 {api['seq']['p50_ms'] / fl['p50_ms']:.2f}x sequential; "
              f"throughput {fl['rps'] / api['conc']['rps']:.2f}x (floor req/s / API req/s at concurrency 8)")
    print(f"hits: {api['seq']['hits']}/{api['seq']['n']} sequential, {api['conc']['hits']}/{api['conc']['n']} concurrent")
    print(f"targets: <= 1.5x the floor, p99 <= 20 ms: sequential p99 {api['seq']['p99_ms']:.2f} ms, "
          f"concurrent p99 {api['conc']['p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
