"""`bggen-run` over a Merchant Center feed: the sensor's partitions, then their runs, with progress
lines and a summary; a second run with nothing changed runs nothing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import test_feeds as feeds_helpers

ROOT = Path(__file__).resolve().parents[2]


def test_bggen_run_runs_the_changed_partitions_and_summarises(tmp_path, sample_dir):
    feeds = tmp_path / "feeds"
    (feeds / "img").mkdir(parents=True)
    for name in ("NO-0001.jpg", "NO-0004.jpg"):
        shutil.copy(sample_dir / "feeds" / "images" / "northwind" / name, feeds / "img" / name)
    feeds_helpers.write_delimited(feeds / "shop.tsv", feeds_helpers.GMC_COLUMNS,
                                  feeds_helpers.gmc_rows(feeds_helpers.LOCAL_IMAGES), "\t")
    (feeds / "Shop (copy).tsv").write_text("stray")
    prompts = yaml.safe_load((sample_dir / "prompts.yaml").read_text())
    prompts["categories"]["default"] = prompts["categories"]["footwear"][:1]
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BGGEN_DATA_DIR": str(tmp_path / "data"),
           "DAGSTER_HOME": str(tmp_path / "data" / "dagster_home"), "BGGEN_FEEDS_DIR": str(feeds),
           "BGGEN_PROMPTS": str(tmp_path / "prompts.yaml"), "BGGEN_PLACEMENTS": str(sample_dir / "placements.yaml"),
           "BGGEN_CANVAS_PIXELS": "120000"}

    def run():
        return subprocess.run([sys.executable, "-m", "bggen_assets.run"], env=env, capture_output=True, text=True,
                              timeout=300)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "skipped: " in out and "Shop (copy).tsv: feed file name" in out
    assert "[1/1] apparel-accessories|shop: ok: 2 products, 1 rejected, images 2 fetched / 0 reused / 0 failed" in out
    assert "rows: 3 in the partitions run, 2 usable, 1 rejected, 1 out of stock skipped" in out
    assert "1 x column 'id': product id 'café' is not allowed" in out
    assert "partitions: 1 ok, 0 failed" in out
    second = run()
    assert second.returncode == 0 and "0 partition run(s) to do (no feed changes since the last run)" in second.stdout
