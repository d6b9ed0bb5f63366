"""new_product_sensor (feed diffs -> dynamic partitions + runs) and the daily catalog refresh."""

import json
from pathlib import Path
from typing import Optional

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from bggen_assets.core.feeds import ConfigError, FeedError
from bggen_assets.core.keys import digest
from bggen_assets.jobs import pipeline_job
from bggen_assets.partitions import partition_key, split_key
from resources.creative_config import CreativeConfig


def feed_fingerprints(cfg: CreativeConfig) -> tuple[dict[tuple[str, str], str], list[str]]:
    """{(merchant, category): fingerprint of its rows and image files}, plus per-merchant feed errors.

    An image replaced in place changes its size or mtime, so it changes the fingerprint too."""
    prints, errors = {}, []
    for merchant, path in cfg.feed_paths().items():
        try:
            rows = cfg.read_feed(merchant)
        except (FeedError, ConfigError) as exc:
            errors.append(str(exc))
            continue
        by_category: dict[str, list] = {}
        for row in rows:
            image = (path.parent / row.image_uri) if "://" not in row.image_uri else Path(row.image_uri)
            try:
                st = image.stat()
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = None
            by_category.setdefault(row.category, []).append((row.as_dict(), stamp))
        for category, items in by_category.items():
            prints[(merchant, category)] = digest(sorted(items, key=lambda i: i[0]["product_id"]))
    return prints, errors


def read_cursor(cursor: Optional[str]) -> dict[tuple[str, str], str]:
    """The fingerprints of the last tick; the cursor keys them by partition key (its string form)."""
    return {split_key(key): fp for key, fp in json.loads(cursor).items()} if cursor else {}


def write_cursor(prints: dict[tuple[str, str], str]) -> str:
    return json.dumps({str(partition_key(*p)): fp for p, fp in prints.items()}, sort_keys=True)


@sensor(job=pipeline_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING,
        description="Diffs every merchant feed; adds new merchants/categories as partitions; runs changed partitions only.")
def new_product_sensor(context: SensorEvaluationContext, creative_config: CreativeConfig):
    previous = read_cursor(context.cursor)
    current, errors = feed_fingerprints(creative_config)
    for err in errors:
        context.log.error(f"feed skipped: {err}")
    known_m = set(context.instance.get_dynamic_partitions("merchant"))
    known_c = set(context.instance.get_dynamic_partitions("category"))
    new_m = sorted({m for m, _ in current} - known_m)
    new_c = sorted({c for _, c in current} - known_c)
    changed = sorted(p for p, fp in current.items() if previous.get(p) != fp)
    if not changed and not new_m and not new_c:
        return SkipReason("no feed changes" + (f"; {len(errors)} feed(s) malformed: {'; '.join(errors)}" if errors else ""))
    requests = [
        RunRequest(run_key=f"feed:{partition_key(*p)}:{current[p][:16]}", partition_key=partition_key(*p),
                   tags={"bggen/trigger": "new_product_sensor"})
        for p in changed
    ]
    dyn = []
    if new_m:
        dyn.append(AddDynamicPartitionsRequest("merchant", new_m))
    if new_c:
        dyn.append(AddDynamicPartitionsRequest("category", new_c))
    # A feed that failed to parse keeps its last fingerprints: once fixed, only a real change runs.
    cursor = {**{p: fp for p, fp in previous.items() if p not in current}, **current}
    return SensorResult(run_requests=requests, dynamic_partitions_requests=dyn, cursor=write_cursor(cursor))


@schedule(job=pipeline_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED,
          description="Daily catalog refresh of every partition with products; unchanged images are not regenerated.")
def daily_catalog_refresh(context: ScheduleEvaluationContext, creative_config: CreativeConfig):
    current, errors = feed_fingerprints(creative_config)
    for err in errors:
        context.log.error(f"feed skipped: {err}")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    known_m = set(context.instance.get_dynamic_partitions("merchant"))
    known_c = set(context.instance.get_dynamic_partitions("category"))
    for merchant, category in sorted(current):
        if merchant in known_m and category in known_c:  # new ones arrive through new_product_sensor
            key = partition_key(merchant, category)
            yield RunRequest(run_key=f"daily:{day}:{key}", partition_key=key,
                             tags={"bggen/trigger": "daily_catalog_refresh"})
