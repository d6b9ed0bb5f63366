"""new_product_sensor (feed diffs -> dynamic partitions + runs) and the daily catalog refresh."""

import json
from pathlib import Path

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
from bggen_assets.partitions import partition_key
from resources.creative_config import CreativeConfig


def feed_fingerprints(cfg: CreativeConfig) -> tuple[dict[str, str], list[str]]:
    """{"merchant|category": fingerprint of its rows and image files}, plus per-merchant feed errors.

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
            prints[f"{merchant}|{category}"] = digest(sorted(items, key=lambda i: i[0]["product_id"]))
    return prints, errors


@sensor(job=pipeline_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING,
        description="Diffs every merchant feed; adds new merchants/categories as partitions; runs changed partitions only.")
def new_product_sensor(context: SensorEvaluationContext, creative_config: CreativeConfig):
    previous = json.loads(context.cursor) if context.cursor else {}
    current, errors = feed_fingerprints(creative_config)
    for err in errors:
        context.log.error(f"feed skipped: {err}")
    known_m = set(context.instance.get_dynamic_partitions("merchant"))
    known_c = set(context.instance.get_dynamic_partitions("category"))
    new_m = sorted({k.split("|")[0] for k in current} - known_m)
    new_c = sorted({k.split("|")[1] for k in current} - known_c)
    changed = sorted(k for k, fp in current.items() if previous.get(k) != fp)
    if not changed and not new_m and not new_c:
        return SkipReason("no feed changes" + (f"; {len(errors)} feed(s) malformed" if errors else ""))
    requests = [
        RunRequest(run_key=f"feed:{k}:{current[k][:16]}", partition_key=partition_key(*k.split("|")),
                   tags={"bggen/trigger": "new_product_sensor"})
        for k in changed
    ]
    dyn = []
    if new_m:
        dyn.append(AddDynamicPartitionsRequest("merchant", new_m))
    if new_c:
        dyn.append(AddDynamicPartitionsRequest("category", new_c))
    # Keep fingerprints of feeds that failed to parse, so a fix is seen as a change.
    cursor = {**{k: v for k, v in previous.items() if k not in current}, **current}
    return SensorResult(run_requests=requests, dynamic_partitions_requests=dyn, cursor=json.dumps(cursor, sort_keys=True))


@schedule(job=pipeline_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED,
          description="Daily catalog refresh of every partition with products; unchanged images are not regenerated.")
def daily_catalog_refresh(context: ScheduleEvaluationContext, creative_config: CreativeConfig):
    current, errors = feed_fingerprints(creative_config)
    for err in errors:
        context.log.error(f"feed skipped: {err}")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    known_m = set(context.instance.get_dynamic_partitions("merchant"))
    known_c = set(context.instance.get_dynamic_partitions("category"))
    for key in sorted(current):
        merchant, category = key.split("|")
        if merchant in known_m and category in known_c:  # new ones arrive through new_product_sensor
            yield RunRequest(run_key=f"daily:{day}:{key}", partition_key=partition_key(merchant, category),
                             tags={"bggen/trigger": "daily_catalog_refresh"})
