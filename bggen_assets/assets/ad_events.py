"""``ad_events``: the event logs an ad server drops in the object store, imported once a day.

Partitioned by day. The partition ``YYYY-MM-DD`` imports every file under
``events/incoming/YYYY-MM-DD/``: Parquet (``.parquet``), CSV (``.csv``) or JSON lines
(``.jsonl``, ``.ndjson``, ``.json``), one event per row with the fields of ``POST /events``
(tables may spell the context as ``context_country``, ``context_device``, ... columns). The
events go through the same validation, deduplication and bandit updates as posted ones
(:class:`bggen_assets.serving.ingest.EventIngest`), so re-running a partition imports nothing
twice; rejected events are written with their reasons to ``events/rejected/YYYY-MM-DD.jsonl``.
"""
import io
import json
import time

from dagster import AssetExecutionContext, DailyPartitionsDefinition, MaterializeResult, MetadataValue, asset

from resources.bandit_store import BanditStore
from resources.object_store import ObjectStore

from ..core.events import EventError, flat_record, split_body
from ..serving.creative import CreativeService
from ..serving.ingest import EventIngest
from ..serving.personalize import Personalizer, ServingConfig

ad_event_days = DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)
INCOMING = "events/incoming"


def read_events(name: str, data: bytes) -> list:
    """The raw events of one log file (by its extension); an unreadable file raises EventError."""
    low = name.lower()
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return list(split_body(data))
    import pandas as pd

    try:
        if low.endswith(".parquet"):
            frame = pd.read_parquet(io.BytesIO(data))
        elif low.endswith(".csv"):
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        else:
            raise EventError(f"{name}: not .parquet, .csv or .jsonl")
    except EventError:
        raise
    except Exception as exc:  # a truncated upload, a wrong format
        raise EventError(f"{name}: cannot be read: {type(exc).__name__}: {exc}") from None
    return [flat_record(r) for r in frame.to_dict(orient="records")]


def import_day(store, bandit_store, day: str, config: ServingConfig = None) -> dict:
    """Import one day's files (see the module doc); returns counts, per file and in all."""
    config = config or ServingConfig()
    service = CreativeService(store, None, prefetch=False)
    personalizer = Personalizer(config, bandit_store)
    ingest = EventIngest(service, personalizer, bandit_store)
    totals = {"files": 0, "received": 0, "impressions": 0, "clicks": 0, "duplicates": 0, "rejected": 0}
    per_file, rejected = {}, []
    t0 = time.perf_counter()
    for key in sorted(store.list_keys(f"{INCOMING}/{day}/")):
        name = key.rsplit("/", 1)[-1]
        try:
            raw = read_events(name, store.get_bytes(key))
        except EventError as exc:
            rejected.append({"file": key, "index": None, "id": None, "reason": str(exc)})
            per_file[key] = {"error": str(exc)}
            totals["rejected"] += 1
            continue
        res = ingest.ingest(raw, source="imported")  # impressions before clicks, file by file
        totals["files"] += 1
        for k in ("received", "impressions", "clicks", "duplicates"):
            totals[k] += getattr(res, k)
        totals["rejected"] += len(res.rejected)
        rejected += [{"file": key, **r} for r in res.rejected]
        per_file[key] = res.as_dict() | {"rejected": len(res.rejected)}
    failed = personalizer.flush()  # the deltas of every imported event go to the bandit state
    if failed:
        raise RuntimeError(f"{failed} bandit slots could not be published; the import is re-runnable")
    if rejected:
        store.put_bytes(f"events/rejected/{day}.jsonl",
                        "".join(json.dumps(r) + "\n" for r in rejected).encode(), "application/x-ndjson")
    totals["seconds"] = time.perf_counter() - t0
    return {"totals": totals, "files": per_file, "rejected_sample": rejected[:20]}


@asset(group_name="events", partitions_def=ad_event_days,
       description="Impressions and clicks an ad server logged (Parquet/CSV/JSONL under events/incoming/<day>/), "
                   "validated, deduplicated and taught to the bandit.")
def ad_events(context: AssetExecutionContext, bandit_store: BanditStore, store: ObjectStore) -> MaterializeResult:
    out = import_day(store, bandit_store, context.partition_key)
    t = out["totals"]
    context.log.info(f"ad_events {context.partition_key}: {t}")
    return MaterializeResult(metadata={
        **{k: v for k, v in t.items() if k != "seconds"},
        "events_per_s": round(t["received"] / t["seconds"], 1) if t["seconds"] > 0 else 0.0,
        "files_detail": MetadataValue.json(out["files"]),
        "rejected_sample": MetadataValue.json(out["rejected_sample"]),
    })
