"""`bggen-run`: the pipeline once over your own catalog (the feeds in BGGEN_FEEDS_DIR), as
`bggen-demo` runs it over the sample one.

1. evaluates `new_product_sensor` on the persistent instance (DAGSTER_HOME, default
   $BGGEN_DATA_DIR/dagster_home): it adds the merchant/category partitions of the feeds and asks
   for a run of each partition whose rows or images changed since its last tick;
2. executes those runs one after the other, printing a progress line per run;
3. prints a summary: feed rows, rejected rows by reason, images fetched / reused / failed,
   canvases generated / reused, partitions ok / failed, and the feeds or files skipped.

Settings come from the environment (bggen_assets/deployment.py lists every BGGEN_* variable):

    BGGEN_FEEDS_DIR=/data/feeds BGGEN_PROMPTS=/data/prompts.yaml BGGEN_PLACEMENTS=/data/placements.yaml \\
        bggen-run [--data-dir bggen_data]

Exit status 1 when a run failed (a blocking check included), else 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from .demo import execute_request, prepare_instance, run_requests_of, sensor_tick


def _say(msg: str) -> None:
    print(f"[bggen-run] {msg}", flush=True)


def _metadata(result, asset: str) -> dict:
    for ev in result.get_asset_materialization_events():
        if ev.materialization.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in ev.materialization.metadata.items()}
    return {}


def _failed_checks(result) -> list[str]:
    return [f"{c.asset_key.to_user_string()}.{c.check_name}" for c in result.get_asset_check_evaluations()
            if not c.passed and c.severity.value == "ERROR"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BGGEN_DATA_DIR", "bggen_data"))
    a = p.parse_args(argv)
    data_dir = Path(a.data_dir).resolve()
    os.environ["BGGEN_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DAGSTER_HOME", str(data_dir / "dagster_home"))
    prepare_instance(Path(os.environ["DAGSTER_HOME"]))

    from dagster import DagsterInstance

    from sensors.catalog import feed_fingerprints

    from .definitions import build_definitions
    from .deployment import build_resources

    defs = build_definitions()
    resources = build_resources(read_secrets_now=True)
    cfg = resources["creative_config"]
    _say(f"feeds: {cfg.feeds_dir}")
    started = time.perf_counter()
    _, skipped = feed_fingerprints(cfg)  # splits each new feed version once; the sensor reuses it
    for err in skipped:
        _say(f"skipped: {err}")
    instance = DagsterInstance.get()
    requests = run_requests_of(sensor_tick(instance, defs.resolve_sensor_def("new_product_sensor"), resources,
                                           say=_say))
    _say(f"{len(requests)} partition run(s) to do" + ("" if requests else " (no feed changes since the last run)"))
    job = defs.resolve_job_def("bggen_pipeline")
    totals: Counter = Counter()
    reasons: Counter = Counter()
    failed = []
    for i, request in enumerate(requests, 1):
        t = time.perf_counter()
        result = execute_request(job, instance, request)
        cat, gen = _metadata(result, "catalog"), _metadata(result, "generated_backgrounds")
        for key in ("products", "rejected", "out_of_stock_skipped", "images_fetched", "images_reused", "images_failed"):
            totals[key] += int(cat.get(key, 0) or 0)
        totals["canvases_generated"] += int(gen.get("generated", 0) or 0)
        totals["canvases_reused"] += int(gen.get("reused", 0) or 0)
        reasons.update(cat.get("rejection_reasons") or {})
        status = "ok" if result.success else "FAILED"
        checks = _failed_checks(result)
        if not result.success:
            failed.append(f"{request.partition_key}" + (f" ({', '.join(checks)})" if checks else ""))
        _say(f"[{i}/{len(requests)}] {request.partition_key}: {status}: {cat.get('products', 0)} products, "
             f"{cat.get('rejected', 0)} rejected, images {cat.get('images_fetched', 0)} fetched / "
             f"{cat.get('images_reused', 0)} reused / {cat.get('images_failed', 0)} failed, "
             f"{gen.get('generated', 0)} canvases generated, {time.perf_counter() - t:.1f} s"
             + (f"; failed checks: {', '.join(checks)}" if checks else ""))
    _say(f"summary after {time.perf_counter() - started:.1f} s:")
    _say(f"  rows: {totals['products'] + totals['rejected']} in the partitions run, {totals['products']} usable, "
         f"{totals['rejected']} rejected, {totals['out_of_stock_skipped']} out of stock skipped")
    for reason, n in reasons.most_common(10):
        _say(f"    {n:6d} x {reason}")
    _say(f"  images: {totals['images_fetched']} fetched, {totals['images_reused']} reused (unchanged), "
         f"{totals['images_failed']} failed")
    _say(f"  canvases: {totals['canvases_generated']} generated, {totals['canvases_reused']} reused")
    _say(f"  partitions: {len(requests) - len(failed)} ok, {len(failed)} failed" +
         (f" ({'; '.join(failed)})" if failed else ""))
    if skipped:
        _say(f"  feeds / files skipped: {len(skipped)} (above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
