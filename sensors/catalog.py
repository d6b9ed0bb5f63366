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

from bggen_assets.core.feed_split import is_local_uri, stamp
from bggen_assets.core.feeds import ConfigError, FeedError
from bggen_assets.core.keys import digest
from bggen_assets.jobs import pipeline_job
from bggen_assets.partitions import partition_key, split_key
from bggen_assets.steps import resolve_image_uri
from resources.creative_config import CreativeConfig


def feed_fingerprints(cfg: CreativeConfig) -> tuple[dict[tuple[str, str], str], list[str]]:
    """{(merchant, category): fingerprint of its rows and local image files}, plus the feeds and
    files skipped, with why.

    Cheap on an unchanged feed: its size and mtime name the split of its version (made once, on
    the first tick that sees it; core/feed_split.py), whose per-category content hashes are read
    back, not recomputed. Local image files are stat'ed (a replaced image changes the fingerprint);
    an http(s) image is revalidated by the catalog step's conditional GET instead."""
    prints, directory = {}, cfg.feed_directory()
    errors = list(directory.skipped)
    for merchant in directory.feeds:
        try:
            split = cfg.feed_split(merchant)
        except (FeedError, ConfigError) as exc:
            errors.append(str(exc))
            continue
        feeds_dir = Path(cfg.feeds_dir)
        for category, summary in split.categories.items():
            if not summary.rows and not summary.rejected:
                continue  # only out-of-stock rows: nothing to make
            stamps = []
            if summary.local_images:
                for row in split.rows(category):
                    if is_local_uri(row.image_uri):
                        stamps.append(stamp(_local_path(row.image_uri, feeds_dir)))
            prints[(merchant, category)] = digest(summary.content_hash, summary.rejected, stamps)
    return prints, errors


def _local_path(uri: str, feeds_dir: Path) -> Optional[Path]:
    try:
        return resolve_image_uri(uri, feeds_dir)
    except ValueError:
        return None  # outside the feeds dir: the catalog step rejects the row


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
