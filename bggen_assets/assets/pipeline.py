"""The five partitioned assets. Each is a thin wrapper over a function in `bggen_assets.steps`:
it reads the partition, calls the step, and reports metadata and quality checks.

Asset values are the typed manifests of `core/manifests.py`. Every check is partitioned like its
asset, so its result belongs to the partition it checked: a warning in one partition stays visible
whatever later runs of other partitions report.
"""

import warnings
from collections import Counter
from typing import Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Failure,
    MetadataValue,
    Output,
    PreviewWarning,
    RetryPolicy,
    asset,
)
from pydantic import BaseModel

from resources.creative_config import CreativeConfig
from resources.generator import GeneratorResource
from resources.masker import MASKING_CODE_VERSION, MaskerResource
from resources.metadata_db import MetadataDB
from resources.miss_queue import MissQueue
from resources.object_store import ObjectStore

from .. import steps
from ..core import serving_index as index
from ..core.feeds import ConfigError, FeedError
from ..core.manifests import CatalogManifest, GenerationManifest, MaskManifest, PlanManifest
from ..partitions import merchant_category, split_key

GROUP = "bggen"
# The generation step runs in the "gpu" pool: the instance's pool limit (deploy/dagster.yaml,
# `dagster instance concurrency set gpu N`) caps how many generation steps share the GPUs.
GPU_POOL = "gpu"
TRANSIENT_RETRY = RetryPolicy(max_retries=2, delay=2.0, backoff=Backoff.EXPONENTIAL)


def _partition(context: AssetExecutionContext) -> tuple[str, str]:
    return split_key(context.partition_key)


def _check(name: str, asset: str, blocking: bool = False) -> AssetCheckSpec:
    """A check partitioned like its asset: each result is recorded against the partition it checked.
    A blocking check that fails (severity ERROR) stops the run before the asset's dependents."""
    with warnings.catch_warnings():
        # partitions_def on a check spec is a preview API in Dagster 1.13 (pinned in pyproject);
        # tests/assets/test_pipeline.py asserts the per-partition results it gives
        warnings.simplefilter("ignore", PreviewWarning)
        return AssetCheckSpec(name, asset=asset, partitions_def=merchant_category, blocking=blocking)


@asset(partitions_def=merchant_category, group_name=GROUP, io_manager_key="manifest_io_manager",
       check_specs=[_check("feed_rows_usable", "catalog"), _check("catalog_not_mass_rejected", "catalog", blocking=True)],
       description="The merchant feed's rows of this category, normalised; images copied into the store by content hash.")
def catalog(context: AssetExecutionContext, creative_config: CreativeConfig, store: ObjectStore, metadata_db: MetadataDB):
    merchant, category = _partition(context)
    try:
        manifest = steps.catalog_step(creative_config, store, metadata_db, merchant, category, context.log.warning)
    except (FeedError, ConfigError) as exc:
        raise Failure(description=str(exc)) from exc
    rejected = manifest.rejected
    reasons = Counter(_reason_kind(r.reason) for r in rejected)
    yield Output(
        manifest,
        metadata={
            "products": len(manifest.products),
            "rejected": len(rejected),
            "out_of_stock_skipped": manifest.out_of_stock,
            "feed_format": manifest.feed_format,
            "images_fetched": manifest.images_fetched,
            "images_reused": manifest.images_reused,
            "images_failed": manifest.images_failed,
            "snapshot_key": manifest.snapshot_key,
            "rejection_reasons": MetadataValue.json(dict(reasons.most_common(20))),
            "rejections": MetadataValue.md(_table(rejected, ["product_id", "file", "line", "reason"])),
        },
    )
    yield AssetCheckResult(
        check_name="feed_rows_usable",
        passed=not rejected,
        severity=AssetCheckSeverity.WARN,
        metadata={"rejected": len(rejected), "reasons": _json(rejected[:50])},
    )
    # Blocking: a CDN down or an image directory briefly missing rejects most rows at once; the
    # failed check stops the run before serving_index, so the last good index stays published.
    limit = creative_config.max_rejected_fraction
    yield AssetCheckResult(
        check_name="catalog_not_mass_rejected",
        passed=manifest.rejected_fraction <= limit,
        severity=AssetCheckSeverity.ERROR,
        metadata={"rejected_fraction": round(manifest.rejected_fraction, 4), "max_rejected_fraction": limit,
                  "rejected": len(rejected), "usable": len(manifest.products),
                  "reasons": MetadataValue.json(dict(reasons.most_common(20)))},
    )


def _reason_kind(reason: str) -> str:
    """A rejection reason without the URL or value it names, so that reasons can be counted."""
    text = reason.split(": ", 1)[1] if reason.startswith(("http://", "https://")) and ": " in reason else reason
    return text.split(" (after ")[0][:80]


@asset(partitions_def=merchant_category, group_name=GROUP, io_manager_key="manifest_io_manager",
       check_specs=[_check("mask_coverage_sane", "product_masks"), _check("mask_confidence", "product_masks")],
       code_version=MASKING_CODE_VERSION,
       description="Per product: binary mask, tight bbox, method, confidence; stored once per image hash and masker. "
                   "Masks below the masker's min_confidence are held back (check mask_confidence).")
def product_masks(context: AssetExecutionContext, catalog: CatalogManifest, masker: MaskerResource, store: ObjectStore,
                  metadata_db: MetadataDB):
    manifest = steps.masks_step(catalog, masker, store, metadata_db, context.log.warning)
    products = manifest.products
    coverage = [p.coverage for p in products.values()]
    methods = Counter(p.method for p in products.values())
    yield Output(
        manifest,
        metadata={
            "masked": len(products),
            "computed": manifest.computed,
            "reused": manifest.reused,
            "skipped": len(manifest.rejected),
            "held_back": len(manifest.held_back),
            "masker_id": manifest.masker_id,
            "methods": MetadataValue.json(dict(methods)),
            "skipped_products": MetadataValue.md(_table(manifest.rejected, ["product_id", "reason"])),
        },
    )
    yield _confidence_check(manifest, store)
    bad = [pid for pid, p in products.items() if not 0.01 <= p.coverage <= 0.95]
    yield AssetCheckResult(
        check_name="mask_coverage_sane",
        passed=not bad and not manifest.rejected,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "min_coverage": min(coverage, default=0.0),
            "max_coverage": max(coverage, default=0.0),
            "out_of_range": MetadataValue.json(bad),
            "skipped": _json(manifest.rejected[:50]),
        },
    )


def _confidence_check(manifest: MaskManifest, store: ObjectStore) -> AssetCheckResult:
    """The held-back masks: a warning, not an error. The run goes on for every other product and
    a held-back one is simply not served (as a product masking refused), so nothing is wrong
    with the partition's output; what needs a person is the list, and the contact sheet shows
    why at a glance. Metadata stays small: ids, confidences and a link, never pictures inline."""
    held = sorted(manifest.held_back.items(), key=lambda kv: (kv[1].confidence, kv[0]))
    metadata = {
        "min_confidence": manifest.min_confidence,
        "held_back": len(held),
        "held_back_products": MetadataValue.json([{"product_id": pid, "confidence": round(m.confidence, 3),
                                                   "method": m.method} for pid, m in held[:50]]),
    }
    if manifest.held_back_sheet:
        where = steps.object_location(store, manifest.held_back_sheet)
        metadata["contact_sheet"] = MetadataValue.path(where) if not where.startswith("s3://") else MetadataValue.url(where)
    return AssetCheckResult(check_name="mask_confidence", passed=not held, severity=AssetCheckSeverity.WARN,
                            metadata=metadata)


@asset(partitions_def=merchant_category, group_name=GROUP, io_manager_key="manifest_io_manager",
       description="Per product: the (bucket, prompt) canvases to generate for the merchant's placements, plus pending misses.")
def bucket_plans(context: AssetExecutionContext, catalog: CatalogManifest, product_masks: MaskManifest,
                 creative_config: CreativeConfig, miss_queue: MissQueue, store: ObjectStore) -> Output[PlanManifest]:
    merchant, category = _partition(context)
    try:
        plan = steps.plans_step(catalog, product_masks, creative_config, miss_queue, merchant, category,
                                consumer=f"run:{context.run_id}",
                                previous=index.read_current(store, merchant, category), warn=context.log.warning)
    except ConfigError as exc:
        raise Failure(description=str(exc)) from exc
    n = len(plan.items)
    if plan.prompt_set != category:
        context.log.warning(f"category {category!r} uses the prompt set {plan.prompt_set!r}"
                            + (" (it has no prompts of its own)" if plan.prompt_set == "default" else " (mapping file)"))
    return Output(
        plan,
        metadata={
            "placement_requests": plan.requests,
            "generations": n,
            "reduction": round(plan.requests / n, 2) if n else 0.0,
            "from_misses": len(plan.miss_keys),
            "bucket_ratio": plan.bucket_ratio,
            "prompt_set": plan.prompt_set,
            "bucketing": plan.bucketing,
            "worst_area_ratio": plan.bounds.area if plan.bounds else None,
        },
    )


@asset(partitions_def=merchant_category, group_name=GROUP, io_manager_key="manifest_io_manager",
       pool=GPU_POOL, retry_policy=TRANSIENT_RETRY,
       # Where the GPU step runs, per executor: dagster-celery sends it to the queue the GPU workers
       # consume (`celery ... worker -Q gpu`; CPU workers take the default queue `dagster`), and
       # k8s_job_executor puts its pod on a GPU node with one GPU (deploy/helm-values.yaml). Other
       # executors ignore both tags; the pool above caps concurrent generation steps either way.
       op_tags={"dagster-celery/queue": "gpu",
                "dagster-k8s/config": {
                    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
                    "pod_spec_config": {"node_selector": {"pool": "gpu"},
                                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                         "effect": "NoSchedule"}]}}},
       check_specs=[_check("product_fidelity", "generated_backgrounds"),
                    _check("generation_quality_gates", "generated_backgrounds")],
       description="Per (product, bucket, prompt, model): the composited canvas, content-addressed: a rerun makes only what is missing.")
def generated_backgrounds(context: AssetExecutionContext, bucket_plans: PlanManifest, product_masks: MaskManifest,
                          masker: MaskerResource, generator: GeneratorResource, store: ObjectStore,
                          metadata_db: MetadataDB):
    gate = None
    if generator.gated:
        from ..gating import gate_for

        gate = gate_for(generator, context.log.info)
    manifest = steps.generate_step(bucket_plans, product_masks, masker, generator, store, metadata_db, context.log.info, gate)
    yield Output(
        manifest,
        metadata={"generated": manifest.generated, "reused": manifest.reused, "generator": manifest.generator_id[:200],
                  "generate_calls": manifest.batches, "mean_batch_fill": round(manifest.batch_fill, 4)},
    )
    gates = manifest.gates
    yield AssetCheckResult(
        check_name="generation_quality_gates",
        passed=not gates.failed,
        severity=AssetCheckSeverity.WARN,
        metadata={"applies": generator.gated, "gated": gates.gated, "retried": gates.retried,
                  "failed_after_retries": len(gates.failed), "failures": _json(gates.failed[:50]),
                  "max_object_expansion": generator.max_object_expansion, "max_edge_leakage": generator.max_edge_leakage},
    )
    fidelity = steps.fidelity_step(bucket_plans, manifest, product_masks, masker, store)
    yield AssetCheckResult(
        check_name="product_fidelity",
        passed=fidelity.max_abs_diff == 0,
        metadata={"checked": fidelity.checked, "max_abs_diff": fidelity.max_abs_diff,
                  "failures": _json(fidelity.failures)},
    )


@asset(partitions_def=merchant_category, group_name=GROUP, io_manager_key="manifest_io_manager",
       check_specs=[_check("index_complete", "serving_index")],
       description="(product, bucket, prompt) -> image key, canvas, product box; published atomically (new version, then pointer flip).")
def serving_index(context: AssetExecutionContext, bucket_plans: PlanManifest, generated_backgrounds: GenerationManifest,
                  product_masks: MaskManifest, catalog: CatalogManifest, store: ObjectStore, miss_queue: MissQueue):
    published = steps.index_step(bucket_plans, generated_backgrounds, product_masks, catalog, store, miss_queue,
                                 warn=context.log.warning)
    yield Output(published, metadata={"version": published.version, "entries": published.entries, "key": published.key,
                                      "misses_served": published.misses_served})
    report = index.completeness(bucket_plans, published, store)
    yield AssetCheckResult(
        check_name="index_complete",
        passed=report.complete,
        metadata={k: (MetadataValue.json(v) if isinstance(v, list) else v) for k, v in report.model_dump(mode="json").items()},
    )


def _json(values: Sequence[BaseModel]) -> MetadataValue:
    return MetadataValue.json([v.model_dump(mode="json", exclude_none=True) for v in values])


def _table(rows: Sequence[BaseModel], cols: list[str]) -> str:
    if not rows:
        return "none"
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(_cell(getattr(r, c, "")) for c in cols) + " |" for r in rows[:100])


def _cell(value: object) -> str:
    return ("" if value is None else str(value)).replace("|", "/")


pipeline_assets = [catalog, product_masks, bucket_plans, generated_backgrounds, serving_index]
