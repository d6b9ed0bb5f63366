from dagster import AssetSelection, define_asset_job

from .partitions import merchant_category

# The whole graph for one merchant x category partition.
pipeline_job = define_asset_job(
    "bggen_pipeline",
    selection=AssetSelection.groups("bggen"),
    partitions_def=merchant_category,
    description="catalog -> product_masks -> bucket_plans -> generated_backgrounds -> serving_index for a partition",
    # A RUN tag (op_tags on generated_backgrounds do not reach the run coordinator): the queued run
    # coordinator in deploy/dagster.yaml caps concurrent runs carrying it. RunRequests from the
    # sensors and the schedule inherit job tags.
    tags={"bggen/gpu": "generation"},
)

# What a recorded miss needs: re-plan (the plan picks pending misses up), generate, publish.
MISS_ASSETS = ["bucket_plans", "generated_backgrounds", "serving_index"]
