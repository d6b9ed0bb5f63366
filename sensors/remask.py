"""remask_sensor: a new masker version re-runs the partitions whose masks an older one made.

Masks are stored once per (image hash, masker id), and the id names the algorithm's version and
settings (MaskerResource.identity(): e.g. ``classical-c5``; a new CLASSICAL_VERSION, model file or
setting makes a new id). A new id alone changes nothing stored: until a partition runs again it
keeps serving canvases cut with the old masks, and new_product_sensor only runs a partition
whose feed changed. Each tick this sensor asks the metadata DB (one query,
MetadataDB.stale_mask_partitions) which partitions have usable products masked by another
masker and not by the current one, and requests a run of product_masks and everything after it
for each, under a run key naming the partition and the masker id, so a partition is requested
once per masker version. At most MAX_RUNS_PER_TICK per tick (a new version does not flood the
run queue; the rest go out on the next ticks); a partition with a run of the pipeline in
progress waits for a later tick (that run may re-mask it already). The cursor, in the instance,
holds the current masker id and the partitions requested under it; a new id starts over.

A run that fails is not requested again for the same id (its run key is spent): it shows failed
in the UI, where it is re-executed.
"""
from __future__ import annotations

import json
from typing import Optional

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from bggen_assets.jobs import pipeline_job
from bggen_assets.partitions import partition_key
from resources.masker import MaskerResource
from resources.metadata_db import MetadataDB

MAX_RUNS_PER_TICK = 20
# product_masks re-makes the masks; the rest re-plans, re-cuts (canvas keys name the masker) and publishes
REMASK_ASSETS = ["product_masks", "bucket_plans", "generated_backgrounds", "serving_index"]
IN_PROGRESS = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
               DagsterRunStatus.STARTED]
PARTITION_TAG = "dagster/partition"


def read_cursor(raw: Optional[str]) -> tuple[str, set[str]]:
    """(the masker id of the last tick, the partition keys requested under it)."""
    if not raw:
        return "", set()
    found = json.loads(raw)
    return found["masker_id"], set(found["requested"])


def write_cursor(masker_id: str, requested: set[str]) -> str:
    return json.dumps({"masker_id": masker_id, "requested": sorted(requested)})


def run_key(pkey: str, masker_id: str) -> str:
    return f"remask:{pkey}:{masker_id}"


def _busy_partitions(context: SensorEvaluationContext) -> set[str]:
    runs = context.instance.get_runs(filters=RunsFilter(job_name=pipeline_job.name, statuses=IN_PROGRESS))
    return {r.tags[PARTITION_TAG] for r in runs if PARTITION_TAG in r.tags}


@sensor(job=pipeline_job, minimum_interval_seconds=300, default_status=DefaultSensorStatus.RUNNING,
        description="When the masker's id changes (a new masking version or setting), re-runs product_masks and "
                    "what follows for the partitions whose masks an older masker made, once per partition and id.")
def remask_sensor(context: SensorEvaluationContext, masker: MaskerResource, metadata_db: MetadataDB):
    current = masker.identity()
    last_id, requested = read_cursor(context.cursor)
    if last_id != current:
        requested = set()
    known_m = set(context.instance.get_dynamic_partitions("merchant"))
    known_c = set(context.instance.get_dynamic_partitions("category"))
    stale = [p for p in metadata_db.stale_mask_partitions(current) if p.merchant in known_m and p.category in known_c]
    todo = [(p, str(partition_key(p.merchant, p.category))) for p in stale]
    todo = [(p, key) for p, key in todo if key not in requested]
    busy = _busy_partitions(context) if todo else set()
    waiting = [(p, key) for p, key in todo if key in busy]
    todo = [(p, key) for p, key in todo if key not in busy]
    requests = []
    for part, key in todo[:MAX_RUNS_PER_TICK]:
        requested.add(key)
        requests.append(RunRequest(
            run_key=run_key(key, current),
            partition_key=partition_key(part.merchant, part.category),
            asset_selection=[AssetKey(a) for a in REMASK_ASSETS],
            tags={"bggen/trigger": "remask_sensor", "bggen/masker_id": current[:255],
                  "bggen/stale_masks": str(part.products)},
        ))
    left = len(todo) - len(requests)
    note = (f"; {left} more on the next ticks" if left else "") + (
        f"; {len(waiting)} with a run in progress, later" if waiting else "")
    if not requests:
        if last_id != current:  # remember the new id even when nothing needs it
            return SensorResult(skip_reason=SkipReason(f"no partition masked by another masker than {current}{note}"),
                                cursor=write_cursor(current, requested))
        return SkipReason(f"every partition is masked by {current} or already requested{note}")
    context.log.info(f"re-masking {len(requests)} partitions with {current}{note}")
    return SensorResult(run_requests=requests, cursor=write_cursor(current, requested))
