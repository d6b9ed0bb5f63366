"""new_product_sensor across ticks when a feed breaks and is fixed, and the daily schedule as declared."""
import csv
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, DefaultScheduleStatus, SensorResult, SkipReason, build_sensor_context

from bggen_assets.partitions import partition_key
from resources.creative_config import CreativeConfig
from sensors.catalog import daily_catalog_refresh, new_product_sensor

README = Path(__file__).resolve().parents[2] / "README.md"
BROKEN_FEED = "product_id,title\n1,2,3\n"  # a row longer than its header


@pytest.fixture
def catalog(tmp_path, sample_dir) -> Path:
    shutil.copytree(sample_dir, tmp_path / "sample")
    return tmp_path / "sample"


class Ticks:
    """Successive new_product_sensor ticks on one instance, carrying the cursor as the daemon does
    (a SkipReason leaves it as it was) and adding the partitions each tick asks for."""

    def __init__(self, catalog: Path):
        self.instance = DagsterInstance.ephemeral()
        self.cursor = None
        self.config = CreativeConfig(feeds_dir=str(catalog / "feeds"), placements_path=str(catalog / "placements.yaml"),
                                     prompts_path=str(catalog / "prompts.yaml"))

    def tick(self):
        with build_sensor_context(instance=self.instance, cursor=self.cursor,
                                  resources={"creative_config": self.config}) as ctx:
            result = new_product_sensor(ctx)
        if isinstance(result, SensorResult):
            for req in result.dynamic_partitions_requests:
                self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            self.cursor = result.cursor
        return result


def requested(result) -> list[str]:
    return [str(r.partition_key) for r in result.run_requests]


def add_row(feed: Path, product_id: str, category: str, image: str) -> None:
    with open(feed, "a", newline="") as f:
        csv.writer(f).writerow([product_id, "New product", category, category, "red", image])


def test_a_malformed_feed_is_reported_and_its_fix_runs_on_the_next_tick(catalog, capfd):
    ticks = Ticks(catalog)
    assert len(ticks.tick().run_requests) == 7  # every partition of the sample catalog, once
    feed = catalog / "feeds" / "northwind.csv"
    good = feed.read_text()
    feed.write_text(BROKEN_FEED)
    capfd.readouterr()
    broken = ticks.tick()
    logged = capfd.readouterr().err  # the tick's log (Dagster's console handler here; the tick's logs in the UI)
    assert isinstance(broken, SkipReason)  # nothing else changed: no run, and the tick says why
    assert broken.skip_message.startswith("no feed changes; 1 feed(s) malformed: ")
    assert str(feed) in broken.skip_message
    assert f"ERROR - feed skipped: {feed}:1: header is missing column 'category'" in logged

    # fixed back to the rows it had: nothing changed, nothing runs
    feed.write_text(good)
    assert ticks.tick().skip_message == "no feed changes"

    # broken again, then fixed with a new bag: the next tick runs exactly that partition
    feed.write_text(BROKEN_FEED)
    assert isinstance(ticks.tick(), SkipReason)
    feed.write_text(good)
    add_row(feed, "NO-NEW-1", "bags", "images/northwind/NO-0002.jpg")
    fixed = ticks.tick()
    assert requested(fixed) == [str(partition_key("northwind", "bags"))]
    assert not fixed.dynamic_partitions_requests
    assert ticks.tick().skip_message == "no feed changes"


def test_a_new_merchant_whose_first_feed_is_malformed_is_added_once_fixed(catalog):
    ticks = Ticks(catalog)
    ticks.tick()
    feed = catalog / "feeds" / "zephyr.csv"
    feed.write_text(BROKEN_FEED)
    broken = ticks.tick()
    assert isinstance(broken, SkipReason) and str(feed) in broken.skip_message
    assert "zephyr" not in ticks.instance.get_dynamic_partitions("merchant")

    feed.write_text("product_id,title,category,subcategory,colour,image_uri\n")
    add_row(feed, "ZE-1", "footwear", "images/northwind/NO-0001.jpg")
    fixed = ticks.tick()
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in fixed.dynamic_partitions_requests] == [
        ("merchant", ["zephyr"])]
    assert requested(fixed) == [str(partition_key("zephyr", "footwear"))]
    assert "zephyr" in ticks.instance.get_dynamic_partitions("merchant")


def test_the_daily_refresh_is_declared_for_three_utc_and_off_by_default():
    assert daily_catalog_refresh.cron_schedule == "0 3 * * *"
    assert daily_catalog_refresh.execution_timezone is None  # Dagster's default: UTC
    assert daily_catalog_refresh.default_status == DefaultScheduleStatus.STOPPED
    assert daily_catalog_refresh.job_name == "bggen_pipeline"
    # and the README says the same of it
    minute, hour = daily_catalog_refresh.cron_schedule.split()[:2]
    readme = " ".join(README.read_text().split())
    assert f"`daily_catalog_refresh` ({int(hour):02d}:{int(minute):02d}, off by default)" in readme
