"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs`.

The resources and the executor come from the deployment's environment (the BGGEN_* variables,
with embedded defaults so the demo needs no service): bggen_assets/deployment.py lists them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from dagster import DefaultScheduleStatus, Definitions, ScheduleDefinition, define_asset_job

from sensors.catalog import daily_catalog_refresh, new_product_sensor
from sensors.misses import bucket_miss_sensor
from sensors.remask import remask_sensor

from .assets.ab_report import ab_report
from .assets.ad_events import ad_events
from .assets.ope_report import ope_report
from .assets.pipeline import pipeline_assets
from .deployment import build_executor, build_resources
from .jobs import pipeline_job


#: the A/B and off-policy reports, recomputed every morning over the logged traffic
reports_job = define_asset_job("reports_job", selection=["ab_report", "ope_report"])
reports_schedule = ScheduleDefinition(name="daily_reports", job=reports_job, cron_schedule="30 4 * * *",
                                      default_status=DefaultScheduleStatus.RUNNING)


def build_definitions(env: Optional[Mapping[str, str]] = None) -> Definitions:
    return Definitions(
        assets=[*pipeline_assets, ab_report, ope_report, ad_events],
        jobs=[pipeline_job, reports_job],
        sensors=[new_product_sensor, bucket_miss_sensor, remask_sensor],
        schedules=[daily_catalog_refresh, reports_schedule],
        resources=build_resources(env),
        executor=build_executor(env),
    )


defs = build_definitions()
