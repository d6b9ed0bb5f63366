"""bucket_miss_sensor: recorded serving misses -> generation runs, newest first, once per partition."""

import json

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from bggen_assets.jobs import MISS_ASSETS, pipeline_job
from bggen_assets.partitions import partition_key
from resources.miss_queue import MissQueue


@sensor(job=pipeline_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Reads recorded misses (newest first, deduplicated) and requests plan+generate+index runs for their partitions.")
def bucket_miss_sensor(context: SensorEvaluationContext, miss_queue: MissQueue):
    seen = json.loads(context.cursor) if context.cursor else {}
    pending = miss_queue.pending(limit=5000)  # newest request first
    newest: dict[str, float] = {}
    count: dict[str, int] = {}
    for miss in pending:
        key = f"{miss.merchant}|{miss.category}"
        newest.setdefault(key, miss.last_requested_at)
        count[key] = count.get(key, 0) + 1
    # Partitions ordered by their newest miss: LIFO, the freshest demand is generated first.
    due = [k for k in sorted(newest, key=lambda k: -newest[k]) if newest[k] > seen.get(k, 0.0)]
    if not due:
        return SkipReason(f"{len(pending)} pending misses, all already requested")
    requests = [
        RunRequest(
            run_key=f"miss:{k}:{newest[k]:.6f}",
            partition_key=partition_key(*k.split("|")),
            asset_selection=[AssetKey(a) for a in MISS_ASSETS],
            tags={"bggen/trigger": "bucket_miss_sensor", "bggen/pending_misses": str(count[k])},
        )
        for k in due
    ]
    return SensorResult(run_requests=requests, cursor=json.dumps({**seen, **{k: newest[k] for k in due}}, sort_keys=True))
