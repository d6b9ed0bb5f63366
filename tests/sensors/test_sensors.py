"""Sensors and the schedule, evaluated with build_sensor_context on a real instance."""
import csv
import datetime
import json
import shutil

import pytest
from dagster import (
    DagsterInstance,
    Failure,
    SkipReason,
    asset,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from bggen_assets.partitions import merchant_category, split_key

from bggen_assets.definitions import build_definitions
from resources.creative_config import CreativeConfig
from resources.metadata_db import Miss
from resources.miss_queue import DbMissQueue
from sensors.catalog import daily_catalog_refresh, new_product_sensor
from sensors.misses import bucket_miss_sensor


@pytest.fixture
def feeds(tmp_path, sample_dir):
    shutil.copytree(sample_dir, tmp_path / "sample")
    return tmp_path / "sample"


def _cfg(root):
    return CreativeConfig(feeds_dir=str(root / "feeds"), placements_path=str(root / "placements.yaml"),
                          prompts_path=str(root / "prompts.yaml"))


def _evaluate(sensor, instance, cursor=None, **resources):
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor(ctx)


def test_first_tick_adds_partitions_and_requests_every_partition_with_products(feeds):
    instance = DagsterInstance.ephemeral()
    result = _evaluate(new_product_sensor, instance, creative_config=_cfg(feeds))
    dyn = {r.partitions_def_name: set(r.partition_keys) for r in result.dynamic_partitions_requests}
    assert dyn == {"merchant": {"northwind", "acme-outfitters"},
                   "category": {"footwear", "bags", "home", "beauty", "accessories"}}
    keys = sorted(str(r.partition_key) for r in result.run_requests)
    assert keys == sorted(["footwear|northwind", "bags|northwind", "home|northwind", "footwear|acme-outfitters",
                           "bags|acme-outfitters", "beauty|acme-outfitters", "accessories|acme-outfitters"])


def test_a_new_product_triggers_a_run_for_its_partition_only(feeds):
    instance = DagsterInstance.ephemeral()
    first = _evaluate(new_product_sensor, instance, creative_config=_cfg(feeds))
    for req in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    # nothing changed: nothing requested
    idle = _evaluate(new_product_sensor, instance, cursor=first.cursor, creative_config=_cfg(feeds))
    assert not getattr(idle, "run_requests", None)
    with open(feeds / "feeds" / "acme-outfitters.csv", "a", newline="") as f:
        csv.writer(f).writerow(["AC-NEW-1", "New bag", "bags", "handbags", "red", "images/acme-outfitters/AC-0002.jpg"])
    second = _evaluate(new_product_sensor, instance, cursor=first.cursor, creative_config=_cfg(feeds))
    assert [str(r.partition_key) for r in second.run_requests] == ["bags|acme-outfitters"]
    assert not second.dynamic_partitions_requests


def test_a_new_category_becomes_a_partition(feeds):
    instance = DagsterInstance.ephemeral()
    first = _evaluate(new_product_sensor, instance, creative_config=_cfg(feeds))
    for req in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    with open(feeds / "feeds" / "northwind.csv", "a", newline="") as f:
        csv.writer(f).writerow(["NO-W1", "Steel watch", "watches", "watches", "grey", "images/northwind/NO-0001.jpg"])
    second = _evaluate(new_product_sensor, instance, cursor=first.cursor, creative_config=_cfg(feeds))
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in second.dynamic_partitions_requests] == [("category", ["watches"])]
    assert [str(r.partition_key) for r in second.run_requests] == ["watches|northwind"]


def test_a_replaced_image_counts_as_a_change(feeds):
    instance = DagsterInstance.ephemeral()
    first = _evaluate(new_product_sensor, instance, creative_config=_cfg(feeds))
    img = feeds / "feeds" / "images" / "northwind" / "NO-0002.jpg"
    img.write_bytes(img.read_bytes() + b"\0")
    second = _evaluate(new_product_sensor, instance, cursor=first.cursor, creative_config=_cfg(feeds))
    assert [str(r.partition_key) for r in second.run_requests] == ["bags|northwind"]


def test_a_malformed_feed_is_skipped_with_an_error_and_the_others_still_run(feeds):
    (feeds / "feeds" / "northwind.csv").write_text("product_id,title\n1,2,3\n")
    result = _evaluate(new_product_sensor, DagsterInstance.ephemeral(), creative_config=_cfg(feeds))
    assert {split_key(r.partition_key)[0] for r in result.run_requests} == {"acme-outfitters"}


def test_a_recorded_miss_triggers_a_run_and_a_storm_queues_once(metadata_db):
    queue = DbMissQueue(metadata_db=metadata_db)
    instance = DagsterInstance.ephemeral()
    miss = Miss("northwind", "footwear", "NO-0001", "r1.2-t1-r7-b1-l7", "beach-sunset")
    for i in range(100):
        queue.record(miss, now=1000.0 + i)
    pending = queue.pending()
    assert len(pending) == 1 and pending[0].request_count == 100 and pending[0].last_requested_at == 1099.0
    result = _evaluate(bucket_miss_sensor, instance, miss_queue=queue)
    assert len(result.run_requests) == 1
    req = result.run_requests[0]
    assert str(req.partition_key) == "footwear|northwind"
    assert {k.to_user_string() for k in req.asset_selection} == {"bucket_plans", "generated_backgrounds", "serving_index"}
    # the same pending miss does not trigger again; a newer request for it does
    again = _evaluate(bucket_miss_sensor, instance, cursor=result.cursor, miss_queue=queue)
    assert not getattr(again, "run_requests", None)
    queue.record(miss, now=2000.0)
    third = _evaluate(bucket_miss_sensor, instance, cursor=result.cursor, miss_queue=queue)
    assert len(third.run_requests) == 1


def test_misses_are_newest_first_and_the_longest_waiting_partition_is_requested_first(metadata_db):
    queue = DbMissQueue(metadata_db=metadata_db)
    queue.record(Miss("northwind", "bags", "NO-0002", "r1.2-t1-r1-b1-l1", "marble-luxury"), now=10.0)
    queue.record(Miss("northwind", "footwear", "NO-0001", "r1.2-t1-r1-b1-l1", "beach-sunset"), now=30.0)
    queue.record(Miss("northwind", "bags", "NO-0004", "r1.2-t2-r1-b1-l1", "marble-luxury"), now=20.0)
    assert [m.last_requested_at for m in queue.pending()] == [30.0, 20.0, 10.0]
    result = _evaluate(bucket_miss_sensor, DagsterInstance.ephemeral(), miss_queue=queue)
    assert [(str(r.partition_key), r.tags["bggen/pending_misses"]) for r in result.run_requests] == [
        ("bags|northwind", "2"), ("footwear|northwind", "1")]


@asset(partitions_def=merchant_category)
def bucket_plans_that_fail():
    raise Failure("placements.yaml: not valid YAML", allow_retries=False)


def _launch_and_fail(instance, request):
    """A run carrying the request's tags that fails before it claims anything, in the instance."""
    instance.add_dynamic_partitions("merchant", ["northwind"])
    instance.add_dynamic_partitions("category", ["footwear"])
    result = materialize([bucket_plans_that_fail], instance=instance, partition_key=request.partition_key,
                         tags=request.tags, raise_on_error=False)
    assert not result.success


def test_a_partition_whose_runs_keep_failing_is_requested_at_most_max_attempts_times(metadata_db):
    from sensors.misses import MAX_ATTEMPTS

    queue = DbMissQueue(metadata_db=metadata_db)
    instance = DagsterInstance.ephemeral()
    queue.record(Miss("northwind", "footwear", "NO-0001", "r1.2-t1-r7-b1-l7", "beach-sunset"), now=1000.0)
    result, keys = _evaluate(bucket_miss_sensor, instance, miss_queue=queue), []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [request] = result.run_requests
        assert request.tags["bggen/attempt"] == str(attempt)
        keys.append(request.run_key)
        _launch_and_fail(instance, request)
        cursor = result.cursor
        result = _evaluate(bucket_miss_sensor, instance, cursor=cursor, miss_queue=queue)
    assert len(set(keys)) == MAX_ATTEMPTS  # a new run key for each attempt
    assert isinstance(result, SkipReason) and f"gave up after {MAX_ATTEMPTS} failed runs" in result.skip_message
    # a new request for the partition starts over
    queue.record(Miss("northwind", "footwear", "NO-0001", "r1.2-t1-r7-b1-l7", "beach-sunset"), now=2000.0)
    again = _evaluate(bucket_miss_sensor, instance, cursor=cursor, miss_queue=queue)
    assert [r.tags["bggen/attempt"] for r in again.run_requests] == ["1"] and again.run_requests[0].run_key not in keys


def test_the_cursor_of_the_previous_sensor_version_is_read(metadata_db):
    """It held partition -> newest request time: that time counts as requested, a newer one is new."""
    queue = DbMissQueue(metadata_db=metadata_db)
    instance = DagsterInstance.ephemeral()
    miss = Miss("northwind", "footwear", "NO-0001", "r1.2-t1-r7-b1-l7", "beach-sunset")
    queue.record(miss, now=1099.0)
    old_cursor = json.dumps({"northwind|footwear": 1099.0})
    assert isinstance(_evaluate(bucket_miss_sensor, instance, cursor=old_cursor, miss_queue=queue), SkipReason)
    queue.record(miss, now=2000.0)
    [request] = _evaluate(bucket_miss_sensor, instance, cursor=old_cursor, miss_queue=queue).run_requests
    assert str(request.partition_key) == "footwear|northwind" and request.tags["bggen/attempt"] == "1"


def test_daily_refresh_requests_each_known_partition_once_per_day(feeds):
    when = datetime.datetime(2026, 11, 25, 3, 0, tzinfo=datetime.timezone.utc)
    with instance_for_test() as instance:  # schedule contexts need a persistent instance
        instance.add_dynamic_partitions("merchant", ["northwind"])
        instance.add_dynamic_partitions("category", ["footwear", "bags"])
        with build_schedule_context(instance=instance, resources={"creative_config": _cfg(feeds)},
                                    scheduled_execution_time=when) as ctx:
            requests = list(daily_catalog_refresh(ctx))
    assert sorted(str(r.partition_key) for r in requests) == ["bags|northwind", "footwear|northwind"]
    assert all(r.run_key.startswith("daily:2026-11-25:") for r in requests)


def test_definitions_load_with_all_assets_sensors_and_schedule(tmp_path):
    defs = build_definitions({"BGGEN_DATA_DIR": str(tmp_path)})
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} >= {
        "catalog", "product_masks", "bucket_plans", "generated_backgrounds", "serving_index"}
    assert {s.name for s in repo.sensor_defs} >= {"new_product_sensor", "bucket_miss_sensor"}
    assert "daily_catalog_refresh" in {s.name for s in repo.schedule_defs}
