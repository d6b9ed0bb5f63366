"""1,000 generated products through the whole asset graph on CPU (template generator), beside the
same work done by the step functions alone, and the peak memory of each.

Each mode runs in its own subprocess on its own fresh store and DB (same catalog), so the peak RSS
is that mode's alone. Dagster mode materializes every merchant x category partition of the job on
a persistent temporary instance (SQLite run/event storage), as `dagster dev` would.

    .venv/bin/python benchmarks/pipeline.py [--products 1000] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A lean placement/prompt set so 1,000 products fit a CPU benchmark; the per-canvas work is real.
PLACEMENTS = {"default": [{"size": "300x250", "fill": 0.8, "anchor": [0.5, 0.5]},
                          {"size": "728x90", "fill": 0.8, "anchor": [0.5, 0.5]},
                          {"size": "160x600", "fill": 0.8, "anchor": [0.5, 0.5]}]}


MODES = {"core": "steps alone", "dagster-ephemeral": "dagster (in-memory instance)",
         "dagster-sqlite": "dagster (SQLite instance)"}


def prepare(root: Path, products: int) -> None:
    import yaml

    from bggen_assets.sample_catalog import generate_sample_catalog

    generate_sample_catalog(root, products_per_merchant=products // 2, merchants=2, bad_rows=False, image_size=512)
    prompts = yaml.safe_load((root / "prompts.yaml").read_text())
    for cat in prompts["categories"]:
        prompts["categories"][cat] = prompts["categories"][cat][:1]
    (root / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    (root / "placements.yaml").write_text(yaml.safe_dump(PLACEMENTS))


def resources_for(sample: Path, work: Path, canvas_pixels: int) -> dict:
    from resources.creative_config import CreativeConfig
    from resources.generator import GeneratorResource
    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource
    from resources.metadata_db import MetadataDB
    from resources.miss_queue import DbMissQueue
    from resources.object_store import LocalObjectStore

    store = LocalObjectStore(root=str(work / "objects"))
    db = MetadataDB(url=f"sqlite:///{work / 'bggen.db'}")
    return {
        "store": store,
        "metadata_db": db,
        "miss_queue": DbMissQueue(metadata_db=db),
        "creative_config": CreativeConfig(feeds_dir=str(sample / "feeds"), placements_path=str(sample / "placements.yaml"),
                                          prompts_path=str(sample / "prompts.yaml"), canvas_pixels=canvas_pixels),
        "masker": MaskerResource(),
        "generator": GeneratorResource(),
        "manifest_io_manager": ManifestIOManager(store=store),
    }


def partitions(sample: Path) -> list[tuple[str, str]]:
    from resources.creative_config import CreativeConfig
    from sensors.catalog import feed_fingerprints

    keys = feed_fingerprints(CreativeConfig(feeds_dir=str(sample / "feeds")))[0]
    return sorted(keys)


def run_core(sample: Path, work: Path, canvas_pixels: int) -> dict:
    from bggen_assets import steps
    from bggen_assets.core import serving_index

    r = resources_for(sample, work, canvas_pixels)
    n = 0
    for merchant, category in partitions(sample):
        cat = steps.catalog_step(r["creative_config"], r["store"], r["metadata_db"], merchant, category)
        masks = steps.masks_step(cat, r["masker"], r["store"], r["metadata_db"])
        plans = steps.plans_step(cat, masks, r["creative_config"], r["miss_queue"], merchant, category)
        gen = steps.generate_step(plans, masks, r["masker"], r["generator"], r["store"], r["metadata_db"])
        steps.fidelity_step(plans, gen, masks, r["masker"], r["store"])
        pointer = steps.index_step(plans, gen, masks, cat, r["store"], r["miss_queue"])
        serving_index.completeness(plans, pointer, r["store"])
        n += len(cat.products)
    return {"products": n}


def run_dagster(sample: Path, work: Path, canvas_pixels: int, storage: str = "sqlite") -> dict:
    from dagster import DagsterInstance, Definitions

    from bggen_assets.assets.pipeline import pipeline_assets
    from bggen_assets.jobs import pipeline_job
    from bggen_assets.core.manifests import CatalogManifest
    from bggen_assets.partitions import partition_key
    from resources.io_manager import manifest_key

    r = resources_for(sample, work, canvas_pixels)
    job = Definitions(assets=pipeline_assets, jobs=[pipeline_job], resources=r).get_job_def("bggen_pipeline")
    parts = partitions(sample)
    n = 0
    (work / "dagster_home").mkdir()
    instance_cm = DagsterInstance.ephemeral() if storage == "ephemeral" else DagsterInstance.local_temp(str(work / "dagster_home"))
    with instance_cm as instance:
        instance.add_dynamic_partitions("merchant", sorted({m for m, _ in parts}))
        instance.add_dynamic_partitions("category", sorted({c for _, c in parts}))
        for merchant, category in parts:
            result = job.execute_in_process(partition_key=partition_key(merchant, category), instance=instance)
            catalog = CatalogManifest.from_json(r["store"].get_bytes(manifest_key("catalog", merchant, category)))
            n += len(catalog.products)
            assert result.success
    return {"products": n}


def child(mode: str, sample: Path, canvas_pixels: int) -> None:
    import logging

    logging.getLogger("dagster").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix=f"bggen-bench-{mode}-"))
    try:
        t = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        if mode == "core":
            out = run_core(sample, work, canvas_pixels)
        else:
            out = run_dagster(sample, work, canvas_pixels, storage=mode.split("-")[1])
        out["seconds"] = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        # CPU seconds: what the work and Dagster cost, whatever else the shared machine is doing
        out["cpu_seconds"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=1000)
    ap.add_argument("--canvas-pixels", type=int, default=120_000)
    ap.add_argument("--quick", action="store_true", help="100 products")
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--sample", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.sample, a.canvas_pixels)
        return
    if a.quick:
        a.products = 100
    sample = Path(tempfile.mkdtemp(prefix="bggen-bench-sample-"))
    try:
        t = time.perf_counter()
        prepare(sample, a.products)
        print(f"drew {a.products} products in {time.perf_counter() - t:.0f} s; placements 300x250, 728x90, 160x600; "
              f"1 theme per category; canvas {a.canvas_pixels} px; {len(partitions(sample))} partitions; one process each")
        results = {}
        for mode in MODES:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--sample", str(sample),
                                   "--canvas-pixels", str(a.canvas_pixels)], env=env, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{mode} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(line[0][7:])
        core = results["core"]
        print(f"{'mode':<30} {'products':>9} {'wall s':>8} {'products/s':>11} {'CPU s':>8} {'CPU vs core':>12} "
              f"{'wall vs core':>13} {'peak RSS MiB':>13}")
        for mode, r in results.items():
            print(f"{MODES[mode]:<30} {r['products']:>9} {r['seconds']:>8.1f} {r['products'] / r['seconds']:>11.2f} "
                  f"{r['cpu_seconds']:>8.1f} {100 * (r['cpu_seconds'] / core['cpu_seconds'] - 1):>+11.1f}% "
                  f"{100 * (r['seconds'] / core['seconds'] - 1):>+12.1f}% {r['peak_rss_mib']:>13.0f}")
        print("targets: Dagster overhead <= 20%, peak memory < 2048 MiB. Wall-clock ratios are only meaningful on an "
              "otherwise idle machine; CPU-time ratios hold on a shared one (SQLite's fsync waits show only in wall time).")
    finally:
        shutil.rmtree(sample, ignore_errors=True)


if __name__ == "__main__":
    main()
