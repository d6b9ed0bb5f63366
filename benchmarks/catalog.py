"""Merchant catalogs at scale: parsing + splitting a generated Merchant Center TSV (1M rows) and
RSS XML feed (100k items), the new-product sensor's tick on the unchanged feed, and image fetching
from a local HTTP server at the default concurrency beside a plain sequential httpx loop.

Each split runs in a process of its own (`python -m bggen_assets.core.feed_split`), so its peak
RSS is the split's alone (interpreter included). The image server answers each request after
LATENCY_S, as a CDN across a network would; without it a loopback server answers in microseconds
and concurrency has nothing to overlap.

    .venv/bin/python benchmarks/catalog.py [--rows 1000000] [--xml-items 100000] [--images 200] [--quick]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LATENCY_S = 0.02


def split_in_subprocess(feed: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bggen_assets.core.feed_split", str(feed), str(cache)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout)


def image_server(count: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    bodies = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        bodies.append(buf.getvalue())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            time.sleep(LATENCY_S)
            body = bodies[int(self.path.strip("/").split(".")[0]) % count]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def fetch_rates(count: int) -> tuple[float, float, int]:
    import httpx

    from resources.image_fetcher import FetchSettings, ImageFetcher

    httpd = image_server(count)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    urls = [f"{base}/{i}.jpg" for i in range(count)]
    settings = FetchSettings(allow_networks="127.0.0.0/8")  # the default concurrency and caps
    started = time.perf_counter()
    with ImageFetcher(settings) as fetcher:
        ok = sum(o.status == "fetched" for o in fetcher.fetch_all((u, None) for u in urls))
    concurrent = count / (time.perf_counter() - started)
    started = time.perf_counter()
    with httpx.Client() as client:
        for u in urls:
            client.get(u).raise_for_status()
    sequential = count / (time.perf_counter() - started)
    httpd.shutdown()
    return concurrent, sequential, settings.concurrency if ok == count else -1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--xml-items", type=int, default=100_000)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="100k rows, 10k XML items, 50 images")
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.xml_items, a.images = 100_000, 10_000, 50

    from bggen_assets.sample_catalog import write_large_gmc_tsv, write_large_gmc_xml
    from resources.creative_config import CreativeConfig
    from sensors.catalog import feed_fingerprints

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        feeds = root / "feeds"
        feeds.mkdir()
        tsv = write_large_gmc_tsv(feeds / "bigshop.tsv", a.rows)
        tsv_split = split_in_subprocess(tsv, root / "splits" / "bigshop")
        tsv_rate = tsv_split["read"] / tsv_split["seconds"]
        print(f"GMC TSV, {tsv_split['read']:,} rows ({tsv.stat().st_size / 2**20:.0f} MiB): parse + split "
              f"{tsv_split['seconds']:.2f} s = {tsv_rate:,.0f} rows/s, peak RSS {tsv_split['peak_rss_mib']:.0f} MiB, "
              f"{len(tsv_split['categories'])} categories, {tsv_split['out_of_stock']:,} out of stock skipped")
        xml = write_large_gmc_xml(root / "xmlshop.xml", a.xml_items)
        xml_split = split_in_subprocess(xml, root / "splits" / "xmlshop")
        print(f"GMC XML, {xml_split['read']:,} items ({xml.stat().st_size / 2**20:.0f} MiB): parse + split "
              f"{xml_split['seconds']:.2f} s = {xml_split['read'] / xml_split['seconds']:,.0f} items/s, "
              f"peak RSS {xml_split['peak_rss_mib']:.0f} MiB")

        cfg = CreativeConfig(feeds_dir=str(feeds), split_cache_dir=str(root / "splits"))
        ticks = []
        for _ in range(5):
            started = time.perf_counter()
            prints, errors = feed_fingerprints(cfg)
            ticks.append(time.perf_counter() - started)
        assert not errors and len(prints) == len(tsv_split["categories"]), (prints, errors)
        tick = statistics.median(ticks)
        print(f"new_product_sensor fingerprints, unchanged feed: median {tick * 1000:.1f} ms over 5 ticks "
              f"(max {max(ticks) * 1000:.1f} ms)")

    concurrent, sequential, concurrency = fetch_rates(a.images)
    print(f"images from a local HTTP server ({LATENCY_S * 1000:.0f} ms per response, {a.images} images): "
          f"ImageFetcher at concurrency {concurrency}: {concurrent:.1f} images/s; sequential httpx loop: "
          f"{sequential:.1f} images/s ({concurrent / sequential:.1f}x)")
    label = "1M-row TSV" if a.rows == 1_000_000 else f"{a.rows:,}-row TSV"
    print(f"{label}: {tsv_rate:,.0f} rows/s, peak RSS {tsv_split['peak_rss_mib']:.0f} MiB, unchanged tick {tick:.4f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
