"""bucket_miss_sensor: recorded serving misses -> generation runs, once per change of a partition's
waiting misses, and again when the run asked for them failed.

The queue summarises, per partition, the misses that wait for a run (pending, or claimed by a run
whose claim lease ran out): how many, the oldest request, and `changed_at`, when that set last
changed (a new request, or the claim time of a claim that lapsed: the claim came after the request
that led to its run, so a lapsed claim is always newer than what the sensor last asked for). The
cursor keeps, per partition, the `changed_at` its last request covered, that request's attempt
and its run key. A partition is requested

- when its waiting misses changed since (new demand, or a dead or failed run's claim that lapsed):
  attempt 1, under a run key naming that change;
- when the run it asked for failed or was canceled and the misses still wait, unclaimed (the run
  died before it claimed them): the next attempt, under a new run key, since Dagster runs a run
  key once. At most MAX_ATTEMPTS per change, so a partition whose runs keep failing does not
  start a run every tick; a new miss or a lapsed claim starts over.

A run that claimed the misses and then failed holds them until the lease runs out; they then come
back as a change. Runs go out oldest partition first (the one that has waited longest), so a storm
of new misses in one partition never starves another; within a partition the run claims the
newest misses first (LIFO).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Optional

from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from bggen_assets.jobs import MISS_ASSETS, pipeline_job
from bggen_assets.partitions import partition_key
from resources.miss_queue import MissQueue

MAX_ATTEMPTS = 3
REQUEST_TAG = "bggen/miss_request"  # the run key again, as a tag of our own: how a tick finds the run
FAILED = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class Requested:
    """What the sensor last asked for in one partition (a cursor entry)."""

    changed_at: float
    attempt: int
    run_key: str


def read_cursor(raw: Optional[str]) -> dict[str, Requested]:
    """partition key (Dagster's string form, "category|merchant") -> its last request. The cursor
    of the previous version of this sensor ("merchant|category" -> newest request time) reads as
    attempt 1 of that time, under the partition's key."""
    found = json.loads(raw) if raw else {}
    out = {}
    for k, v in found.items():
        if isinstance(v, (int, float)):
            key = str(partition_key(*k.split("|", 1)))
            out[key] = Requested(float(v), 1, f"miss:{k}:{float(v):.6f}")
        else:
            out[k] = Requested(**v)
    return out


def _run_failed(instance: DagsterInstance, run_key: str) -> bool:
    runs = instance.get_runs(filters=RunsFilter(tags={REQUEST_TAG: run_key}), limit=1)
    return bool(runs) and runs[0].status in FAILED


@sensor(job=pipeline_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Requests plan+generate+index runs for partitions with waiting misses (oldest partition "
                    "first), again when such a run failed or its claims lapsed.")
def bucket_miss_sensor(context: SensorEvaluationContext, miss_queue: MissQueue):
    requested = read_cursor(context.cursor)
    waiting = miss_queue.waiting_partitions()  # the longest-waiting partition first
    requests, gave_up = [], []
    for part in waiting:
        pkey = partition_key(part.merchant, part.category)
        key = str(pkey)
        last = requested.get(key)
        if last is None or part.changed_at > last.changed_at:
            attempt = 1
        elif _run_failed(context.instance, last.run_key):
            if last.attempt >= MAX_ATTEMPTS:
                gave_up.append(key)
                continue
            attempt = last.attempt + 1
        else:  # its run is queued, running, or finished (what is left, it could not use)
            continue
        run_key = f"miss:{key}:{part.changed_at:.6f}:{attempt}"
        requested[key] = Requested(part.changed_at, attempt, run_key)
        requests.append(RunRequest(
            run_key=run_key,
            partition_key=pkey,
            asset_selection=[AssetKey(a) for a in MISS_ASSETS],
            tags={"bggen/trigger": "bucket_miss_sensor", "bggen/pending_misses": str(part.misses),
                  "bggen/attempt": str(attempt), REQUEST_TAG: run_key},
        ))
    note = f"; gave up after {MAX_ATTEMPTS} failed runs: {', '.join(gave_up)}" if gave_up else ""
    if gave_up:
        context.log.warning(f"bucket_miss_sensor{note} (a new miss or a lapsed claim requests them again)")
    if not requests:
        return SkipReason(f"{sum(p.misses for p in waiting)} pending misses, all already requested{note}")
    cursor = json.dumps({k: asdict(v) for k, v in requested.items()}, sort_keys=True)
    return SensorResult(run_requests=requests, cursor=cursor)
