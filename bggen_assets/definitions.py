"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs`.

Resources come from the environment, with embedded defaults (SQLite, a local object store, the
template generator on CPU) so the demo needs no service:

  BGGEN_DATA_DIR      where everything local lives (default ./bggen_data)
  BGGEN_DB_URL        SQLAlchemy URL (default sqlite:///$BGGEN_DATA_DIR/bggen.db; production:
                      mysql+mysqlconnector://user:password@host:3306/bggen); migrated on first use
  BGGEN_MISS_QUEUE    db (default: the metadata DB's misses table) | redis (with BGGEN_REDIS_URL,
                      default redis://127.0.0.1:6379/0, and BGGEN_REDIS_NAMESPACE)
  BGGEN_STORE         local | s3 (with BGGEN_S3_BUCKET, BGGEN_S3_ENDPOINT_URL, AWS_* credentials)
  BGGEN_FEEDS_DIR, BGGEN_PLACEMENTS, BGGEN_PROMPTS   the catalog config (default: the sample catalog)
  BGGEN_BUCKET_RATIO  r of the bucketing formula (default 1.2)
  BGGEN_CANVAS_PIXELS the pixel budget of a generated canvas (default 786432 = 1024x768)
  BGGEN_MASKER        classical | yolo (with BGGEN_YOLO_WEIGHTS)
  BGGEN_EXECUTOR      default (in-process/multiprocess) | celery: steps run on dagster-celery workers,
                      with BGGEN_CELERY_BROKER (default amqp://guest:guest@127.0.0.1:5672//) and
                      BGGEN_CELERY_BACKEND (default rpc://); see deploy/celery.yaml, docs/production.md
  BGGEN_GENERATOR     template | diffusion (with BGGEN_BASE_MODEL, BGGEN_CONTROLNET_MODEL,
                      BGGEN_LOCAL_FILES_ONLY=1, BGGEN_DEVICE, BGGEN_PIXEL_BUDGET)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from dagster import Definitions

from resources.bandit_store import BanditStore
from resources.creative_config import CreativeConfig
from resources.generator import GeneratorResource
from resources.io_manager import ManifestIOManager
from resources.masker import MaskerResource
from resources.metadata_db import MetadataDB, db_url_from_env
from resources.miss_queue import DbMissQueue, MissQueue
from resources.object_store import object_store_from_env
from sensors.catalog import daily_catalog_refresh, new_product_sensor
from sensors.misses import bucket_miss_sensor

from .assets.ab_report import ab_report
from .assets.pipeline import pipeline_assets
from .jobs import pipeline_job


def data_dir_from_env(env: Optional[dict] = None) -> str:
    env = os.environ if env is None else env
    return str(Path(env.get("BGGEN_DATA_DIR", "bggen_data")).resolve())


def miss_queue_from_env(db: MetadataDB, env: Optional[dict] = None) -> MissQueue:
    env = dict(os.environ if env is None else env)
    kind = env.get("BGGEN_MISS_QUEUE", "db")
    if kind == "db":
        return DbMissQueue(metadata_db=db)
    if kind == "redis":
        from resources.redis_miss_queue import RedisMissQueue

        kwargs = {"redis_url": env.get("BGGEN_REDIS_URL", "redis://127.0.0.1:6379/0")}
        if env.get("BGGEN_REDIS_NAMESPACE"):
            kwargs["namespace"] = env["BGGEN_REDIS_NAMESPACE"]
        return RedisMissQueue(**kwargs)
    raise ValueError(f"BGGEN_MISS_QUEUE must be 'db' or 'redis', got {kind!r}")


def build_resources(env: Optional[dict] = None) -> dict:
    env = dict(os.environ if env is None else env)
    data_dir = data_dir_from_env(env)
    sample = os.path.join(data_dir, "sample")
    store = object_store_from_env(data_dir, env)
    db = MetadataDB(url=db_url_from_env(data_dir, env))
    generator_kwargs = {"kind": env.get("BGGEN_GENERATOR", "template")}
    for field, var in (("base_model", "BGGEN_BASE_MODEL"), ("controlnet_model", "BGGEN_CONTROLNET_MODEL"),
                       ("device", "BGGEN_DEVICE")):
        if env.get(var):
            generator_kwargs[field] = env[var]
    if env.get("BGGEN_PIXEL_BUDGET"):
        generator_kwargs["pixel_budget"] = int(env["BGGEN_PIXEL_BUDGET"])
    if env.get("BGGEN_LOCAL_FILES_ONLY"):
        generator_kwargs["local_files_only"] = env["BGGEN_LOCAL_FILES_ONLY"] == "1"
    masker_kwargs = {"method": env.get("BGGEN_MASKER", "classical")}
    if env.get("BGGEN_YOLO_WEIGHTS"):
        masker_kwargs["yolo_weights"] = env["BGGEN_YOLO_WEIGHTS"]
    return {
        "store": store,
        "metadata_db": db,
        "miss_queue": miss_queue_from_env(db, env),
        "bandit_store": BanditStore(metadata_db=db),
        "creative_config": CreativeConfig(
            feeds_dir=env.get("BGGEN_FEEDS_DIR", os.path.join(sample, "feeds")),
            placements_path=env.get("BGGEN_PLACEMENTS", os.path.join(sample, "placements.yaml")),
            prompts_path=env.get("BGGEN_PROMPTS", os.path.join(sample, "prompts.yaml")),
            bucket_ratio=float(env.get("BGGEN_BUCKET_RATIO", "1.2")),
            **({"canvas_pixels": int(env["BGGEN_CANVAS_PIXELS"])} if env.get("BGGEN_CANVAS_PIXELS") else {}),
        ),
        "masker": MaskerResource(**masker_kwargs),
        "generator": GeneratorResource(**generator_kwargs),
        "manifest_io_manager": ManifestIOManager(store=store),
    }


def executor_from_env(env: Optional[dict] = None):
    """None (Dagster's default executor) or the dagster-celery executor (BGGEN_EXECUTOR=celery)."""
    env = dict(os.environ if env is None else env)
    kind = env.get("BGGEN_EXECUTOR", "default")
    if kind == "default":
        return None
    if kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured({
            "broker": env.get("BGGEN_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
            "backend": env.get("BGGEN_CELERY_BACKEND", "rpc://"),
        }, name="bggen_celery_executor")
    raise ValueError(f"BGGEN_EXECUTOR must be 'default' or 'celery', got {kind!r}")


def build_definitions(env: Optional[dict] = None) -> Definitions:
    return Definitions(
        assets=[*pipeline_assets, ab_report],
        jobs=[pipeline_job],
        sensors=[new_product_sensor, bucket_miss_sensor],
        schedules=[daily_catalog_refresh],
        resources=build_resources(env),
        executor=executor_from_env(env),
    )


defs = build_definitions()
