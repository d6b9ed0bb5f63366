"""The demo: the whole BGGEN pipeline on a sample catalog, on embedded defaults, end to end.

1. draws the sample catalog (merchants, feeds, photos, placements, prompts) if it is not there;
2. evaluates `new_product_sensor`, which adds the merchant/category partitions and asks for runs;
3. executes each requested run of the `bggen_pipeline` job on a persistent Dagster instance
   (DAGSTER_HOME=bggen_data/dagster_home, so `dagster dev` shows these runs afterwards);
   the sensors' cursors are stored in that instance, where the daemon of `make ui` reads them;
4. serves creatives (hits), asks for a size nobody planned (a miss: fallback at once), lets
   `bucket_miss_sensor` turn the miss into a run, and serves it again (now a hit);
5. writes a contact sheet (products x placements x themes) and prints its path.

    bggen-demo [--data-dir bggen_data] [--fresh]
    bggen-demo --instance-only     only write the demo instance's dagster.yaml (what `make ui` runs)
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .core.geometry import Placement

# The code location as `dagster dev -w workspace.yaml` loads it: the instance keeps each sensor's
# state (its cursor) under that location's name, the repository and the sensor's name.
WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"

# Written into DAGSTER_HOME when it has no dagster.yaml. SQLite storage in DAGSTER_HOME (Dagster's
# default); one run at a time, so that when `make ui` starts the daemon on a small machine, what
# the sensors request waits in the queue instead of starting at once; one generation step at a
# time (the pool "gpu" of generated_backgrounds, and any other pool).
DEMO_INSTANCE_YAML = """\
# The bggen demo's Dagster instance (bggen_assets/demo.py writes it; edit freely, it is kept).
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 1
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def _say(msg: str) -> None:
    print(f"[bggen-demo] {msg}", flush=True)


def prepare_instance(dagster_home: Path) -> Path:
    """DAGSTER_HOME with the demo's dagster.yaml; one already there is kept."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    if not path.exists():
        path.write_text(DEMO_INSTANCE_YAML)
    return path


def sensor_origin(sensor_name: str, workspace: Path = WORKSPACE):
    """The sensor's origin in the workspace's code location: its state in the instance is keyed by it."""
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    [location] = WorkspaceFileTarget(paths=[str(workspace)]).create_origins()
    return RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), sensor_name)


def stored_cursor(instance, origin) -> Optional[str]:
    state = instance.get_instigator_state(origin.get_id(), origin.get_selector().get_id())
    return state.instigator_data.cursor if state is not None and state.instigator_data else None


def store_cursor(instance, origin, sensor_def, cursor: str) -> None:
    """Save the cursor where the daemon reads it, as a sensor running by its code default."""
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        SensorInstigatorData,
    )

    state = instance.get_instigator_state(origin.get_id(), origin.get_selector().get_id())
    if state is None:
        data = SensorInstigatorData(min_interval=sensor_def.minimum_interval_seconds, cursor=cursor,
                                    sensor_type=sensor_def.sensor_type)
        instance.add_instigator_state(InstigatorState(origin, InstigatorType.SENSOR, InstigatorStatus.DECLARED_IN_CODE, data))
    else:  # the daemon's state (ticks, status): only the cursor changes
        instance.update_instigator_state(state.with_data(state.instigator_data._replace(cursor=cursor)))


def sensor_tick(instance, sensor_def, resources: dict, workspace: Path = WORKSPACE, say=_say):
    """Evaluate the sensor once as the daemon would: from the instance's cursor, saving the new one
    there, and adding the dynamic partitions it asks for. Returns the evaluation's result."""
    from dagster import build_sensor_context

    origin = sensor_origin(sensor_def.name, workspace)
    with build_sensor_context(instance=instance, cursor=stored_cursor(instance, origin), resources=resources) as ctx:
        result = sensor_def(ctx)
    for req in getattr(result, "dynamic_partitions_requests", None) or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        say(f"added {req.partitions_def_name} partitions: {', '.join(req.partition_keys)}")
    if getattr(result, "cursor", None):
        store_cursor(instance, origin, sensor_def, result.cursor)
    return result


def execute_request(job, instance, run_request, log_level: str = "WARNING"):
    """Run one RunRequest of the job in this process, on the instance, as the daemon would launch it."""
    return job.execute_in_process(
        instance=instance, partition_key=run_request.partition_key, tags={**(run_request.tags or {})},
        asset_selection=run_request.asset_selection, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


def run_requests_of(result) -> list:
    """The RunRequests of a sensor evaluation: a SensorResult, a list, or a SkipReason (nothing to
    do, e.g. on a second demo run the miss was generated by the first one)."""
    from dagster import RunRequest, SkipReason

    if result is None or isinstance(result, SkipReason):
        return []
    if isinstance(result, list):
        return [r for r in result if isinstance(r, RunRequest)]
    return list(result.run_requests or [])  # SensorResult (a NamedTuple: not a list)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BGGEN_DATA_DIR", "bggen_data"))
    p.add_argument("--fresh", action="store_true", help="delete the data dir first")
    p.add_argument("--products-per-merchant", type=int, default=18)
    p.add_argument("--instance-only", action="store_true", help="write DAGSTER_HOME/dagster.yaml and stop")
    a = p.parse_args(argv)

    data_dir = Path(a.data_dir).resolve()
    if a.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    os.environ["BGGEN_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DAGSTER_HOME", str(data_dir / "dagster_home"))
    instance_yaml = prepare_instance(Path(os.environ["DAGSTER_HOME"]))
    if a.instance_only:
        _say(f"Dagster instance config: {instance_yaml}")
        return 0

    from dagster import DagsterInstance

    from .core.contact_sheet import contact_sheet
    from .definitions import build_definitions
    from .deployment import build_resources
    from .sample_catalog import generate_sample_catalog
    from .serving.creative import CreativeService

    sample = data_dir / "sample"
    if (sample / "images").is_dir():  # drawn by an older bggen: images beside feeds/, now refused
        shutil.rmtree(sample)          # (local image paths must stay under the feeds directory)
    if not (sample / "feeds").is_dir():
        summary = generate_sample_catalog(sample, products_per_merchant=a.products_per_merchant)
        _say(f"drew a sample catalog: {summary['products']} feed rows, merchants {', '.join(summary['merchants'])}")
    defs = build_definitions()
    resources = build_resources(read_secrets_now=True)  # used here directly, not through a Dagster run
    job = defs.resolve_job_def("bggen_pipeline")
    instance = DagsterInstance.get()
    started = time.perf_counter()

    def execute(run_request) -> bool:
        result = execute_request(job, instance, run_request)
        status = "ok" if result.success else "FAILED"
        _say(f"run {result.run_id[:8]} partition {run_request.partition_key}: {status}")
        return result.success

    requests = run_requests_of(sensor_tick(instance, defs.resolve_sensor_def("new_product_sensor"), resources))
    _say(f"new_product_sensor requested {len(requests)} partition runs")
    failures = sum(not execute(r) for r in requests)

    service = CreativeService(resources["store"], resources["miss_queue"], resources["creative_config"])
    # A miss: a size no merchant configured. Answered with the fallback at once, generated after.
    merchant, product_id = "northwind", None
    for category in service.categories(merchant):
        doc = service.index(merchant, category)
        if doc is not None and doc.products:
            product_id = sorted(doc.products)[0]
            break
    if product_id:
        t = time.perf_counter()
        miss = service.serve(merchant, product_id, UNPLANNED)
        _say(f"served {product_id} at 400x300 (not planned): hit={miss.hit}, fallback in {1000 * (time.perf_counter() - t):.1f} ms")
        miss_result = sensor_tick(instance, defs.resolve_sensor_def("bucket_miss_sensor"), resources)
        for r in run_requests_of(miss_result):
            failures += not execute(r)
        service = CreativeService(resources["store"], resources["miss_queue"], resources["creative_config"])
        again = service.serve(merchant, product_id, UNPLANNED)
        _say(f"after bucket_miss_sensor's run: hit={again.hit}")

    sheet_path = write_contact_sheet(service, data_dir / "contact_sheet.png", contact_sheet)
    _say(f"pipeline + serving done in {time.perf_counter() - started:.1f} s; {failures} failed runs")
    _say(f"objects: {resources['store'].describe()}  metadata DB: {resources['metadata_db'].url}")
    _say(f"open the Dagster UI: DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev -w workspace.yaml")
    print(f"contact sheet: {sheet_path}")
    return 1 if failures else 0


# A size and layout no merchant plans: the demo's miss.
UNPLANNED = Placement(400, 300, 0.6, 0.25, 0.5)
SHEET_SIZES = [(300, 250), (728, 90), (160, 600), (1080, 1080), (320, 50), (970, 250), (1200, 628), (1080, 1920)]


def write_contact_sheet(service, path: Path, contact_sheet, per_category: int = 1) -> Path:
    """Products x placements x themes: one row per (product, theme), one column per placement."""
    from PIL import Image

    rows = []
    for merchant in ("northwind", "acme-outfitters"):
        for category in service.categories(merchant):
            doc = service.index(merchant, category)
            if doc is None:
                continue
            for pid in sorted(doc.products)[:per_category]:
                info = doc.products[pid]
                for prompt in doc.prompts:
                    cells = []
                    for w, h in SHEET_SIZES:
                        c = service.serve(merchant, pid, service.default_placement(merchant, w, h), prompt_id=prompt, fmt="png")
                        cells.append(np.asarray(Image.open(io.BytesIO(c.body)).convert("RGB")))
                    rows.append((f"{merchant}\n{category}: {info.title}\ntheme: {prompt}", cells))
    sheet = contact_sheet([f"{w}x{h}" for w, h in SHEET_SIZES], rows,
                          title="bggen demo: products x placements x themes (template generator)")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, optimize=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
