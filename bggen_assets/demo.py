"""The demo: the whole BGGEN pipeline on a sample catalog, on embedded defaults, end to end.

1. draws the sample catalog (merchants, feeds, photos, placements, prompts) if it is not there;
2. evaluates `new_product_sensor`, which adds the merchant/category partitions and asks for runs;
3. executes each requested run of the `bggen_pipeline` job on a persistent Dagster instance
   (DAGSTER_HOME=bggen_data/dagster_home, so `dagster dev` shows these runs afterwards);
4. serves creatives (hits), asks for a size nobody planned (a miss: fallback at once), lets
   `bucket_miss_sensor` turn the miss into a run, and serves it again (now a hit);
5. writes a contact sheet (products x placements x themes) and prints its path.

    bggen-demo [--data-dir bggen_data] [--fresh]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def _say(msg: str) -> None:
    print(f"[bggen-demo] {msg}", flush=True)


def run_requests_of(result) -> list:
    return list(result.run_requests or [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BGGEN_DATA_DIR", "bggen_data"))
    p.add_argument("--fresh", action="store_true", help="delete the data dir first")
    p.add_argument("--products-per-merchant", type=int, default=18)
    a = p.parse_args(argv)

    data_dir = Path(a.data_dir).resolve()
    if a.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    os.environ["BGGEN_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DAGSTER_HOME", str(data_dir / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    from dagster import DagsterInstance, build_sensor_context

    from .core.contact_sheet import contact_sheet
    from .definitions import build_definitions
    from .sample_catalog import generate_sample_catalog
    from .serving.creative import CreativeService

    sample = data_dir / "sample"
    if not (sample / "feeds").is_dir():
        summary = generate_sample_catalog(sample, products_per_merchant=a.products_per_merchant)
        _say(f"drew a sample catalog: {summary['products']} feed rows, merchants {', '.join(summary['merchants'])}")
    defs = build_definitions()
    resources = defs.resources
    job = defs.resolve_job_def("bggen_pipeline")
    instance = DagsterInstance.get()
    started = time.perf_counter()

    def execute(run_request) -> bool:
        tags = {**(run_request.tags or {})}
        result = job.execute_in_process(
            instance=instance, partition_key=run_request.partition_key, tags=tags,
            asset_selection=run_request.asset_selection, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        status = "ok" if result.success else "FAILED"
        _say(f"run {result.run_id[:8]} partition {run_request.partition_key}: {status}")
        return result.success

    sensor = defs.resolve_sensor_def("new_product_sensor")
    cursor_file = data_dir / "new_product_sensor.cursor"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        result = sensor(ctx)
    if hasattr(result, "dynamic_partitions_requests"):
        for req in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            _say(f"added {req.partitions_def_name} partitions: {', '.join(req.partition_keys)}")
        requests = run_requests_of(result)
        if result.cursor:
            cursor_file.write_text(result.cursor)
    else:
        requests = []
    _say(f"new_product_sensor requested {len(requests)} partition runs")
    failures = sum(not execute(r) for r in requests)

    service = CreativeService(resources["store"], resources["miss_queue"], resources["creative_config"])
    # A miss: a size no merchant configured. Answered with the fallback at once, generated after.
    merchant, product_id = "northwind", None
    for category in service.categories(merchant):
        doc = service.index(merchant, category)
        if doc and doc["products"]:
            product_id = sorted(doc["products"])[0]
            break
    if product_id:
        t = time.perf_counter()
        miss = service.serve(merchant, product_id, 400, 300, fill=0.6, anchor=(0.25, 0.5))
        _say(f"served {product_id} at 400x300 (not planned): hit={miss.hit}, fallback in {1000 * (time.perf_counter() - t):.1f} ms")
        miss_sensor = defs.resolve_sensor_def("bucket_miss_sensor")
        with build_sensor_context(instance=instance, resources=resources) as ctx:
            miss_result = miss_sensor(ctx)
        for r in run_requests_of(miss_result):
            failures += not execute(r)
        service = CreativeService(resources["store"], resources["miss_queue"], resources["creative_config"])
        again = service.serve(merchant, product_id, 400, 300, fill=0.6, anchor=(0.25, 0.5))
        _say(f"after bucket_miss_sensor's run: hit={again.hit}")

    sheet_path = write_contact_sheet(service, data_dir / "contact_sheet.png", contact_sheet)
    _say(f"pipeline + serving done in {time.perf_counter() - started:.1f} s; {failures} failed runs")
    _say(f"objects: {resources['store'].describe()}  metadata DB: {resources['metadata_db'].url}")
    _say(f"open the Dagster UI: DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev -w workspace.yaml")
    print(f"contact sheet: {sheet_path}")
    return 1 if failures else 0


SHEET_SIZES = [(300, 250), (728, 90), (160, 600), (1080, 1080), (320, 50), (970, 250), (1200, 628), (1080, 1920)]


def write_contact_sheet(service, path: Path, contact_sheet, per_category: int = 1) -> Path:
    """Products x placements x themes: one row per (product, theme), one column per placement."""
    from PIL import Image

    rows = []
    for merchant in ("northwind", "acme-outfitters"):
        for category in service.categories(merchant):
            doc = service.index(merchant, category)
            if not doc:
                continue
            for pid in sorted(doc["products"])[:per_category]:
                info = doc["products"][pid]
                for prompt in doc["prompts"]:
                    cells = []
                    for w, h in SHEET_SIZES:
                        c = service.serve(merchant, pid, w, h, prompt_id=prompt, fmt="png")
                        cells.append(np.asarray(Image.open(io.BytesIO(c.body)).convert("RGB")))
                    rows.append((f"{merchant}\n{category}: {info['title']}\ntheme: {prompt}", cells))
    sheet = contact_sheet([f"{w}x{h}" for w, h in SHEET_SIZES], rows,
                          title="bggen demo: products x placements x themes (template generator)")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, optimize=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
