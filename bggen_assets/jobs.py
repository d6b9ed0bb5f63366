from dagster import AssetSelection, define_asset_job

from .partitions import merchant_category

# The whole graph for one merchant x category partition. GPU concurrency is not a run tag: the
# generation step is in the Dagster pool "gpu", whose limit the instance sets (deploy/dagster.yaml).
pipeline_job = define_asset_job(
    "bggen_pipeline",
    selection=AssetSelection.groups("bggen"),
    partitions_def=merchant_category,
    description="catalog -> product_masks -> bucket_plans -> generated_backgrounds -> serving_index for a partition",
)

# What a recorded miss needs: re-plan (the plan picks pending misses up), generate, publish.
MISS_ASSETS = ["bucket_plans", "generated_backgrounds", "serving_index"]
