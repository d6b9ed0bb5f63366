"""The scale path: a generated 1M-row Merchant Center TSV (rows only, no images) split in a process
of its own in bounded memory, then the sensor's fingerprinting of the unchanged feed in well
under a second (it reads the split's per-category hashes; it parses nothing)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bggen_assets.sample_catalog import write_large_gmc_tsv
from resources.creative_config import CreativeConfig
from sensors.catalog import feed_fingerprints

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1_000_000
PEAK_RSS_MIB = 200  # the target is < 500 MiB; benchmarks/catalog.py measured 97 MiB


def test_a_million_row_feed_is_split_in_bounded_memory_and_an_unchanged_tick_is_cheap(tmp_path):
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    feed = write_large_gmc_tsv(feeds / "bigshop.tsv", ROWS)
    cache = tmp_path / "splits"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bggen_assets.core.feed_split", str(feed), str(cache / "bigshop")],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    found = json.loads(out.stdout)
    assert found["read"] == ROWS and found["out_of_stock"] == ROWS // 50 and found["rejected"] == 0
    assert found["format"] == "google-merchant-center-tsv" and len(found["categories"]) == 4
    assert found["peak_rss_mib"] < PEAK_RSS_MIB, found  # the whole process, interpreter included

    cfg = CreativeConfig(feeds_dir=str(feeds), split_cache_dir=str(cache))
    ticks = []
    for _ in range(3):
        started = time.perf_counter()
        prints, errors = feed_fingerprints(cfg)
        ticks.append(time.perf_counter() - started)
    assert not errors and sorted(c for _, c in prints) == sorted(found["categories"])
    assert max(ticks) < 0.5, ticks  # the split made by the other process is found by size + mtime
