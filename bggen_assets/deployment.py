"""The resources and the executor of each deployment, built in one place from the environment.

`embedded` (every default: SQLite, a local object store, the DB miss queue, the template
generator on CPU; nothing to start) or `services` (MySQL/MariaDB, S3, Redis, Celery workers,
diffusion on a GPU), chosen backend by backend:

  BGGEN_DATA_DIR      where everything local lives (default ./bggen_data)
  BGGEN_DB_URL        SQLAlchemy URL (default sqlite:///$BGGEN_DATA_DIR/bggen.db; production:
                      mysql+mysqlconnector://user:password@host:3306/bggen); migrated on first use
  BGGEN_MISS_QUEUE    db (default: the metadata DB's misses table) | redis (with BGGEN_REDIS_URL,
                      default redis://127.0.0.1:6379/0, and BGGEN_REDIS_NAMESPACE)
  BGGEN_STORE         local (BGGEN_STORE_ROOT, default $BGGEN_DATA_DIR/objects) | s3 (with
                      BGGEN_S3_BUCKET, BGGEN_S3_PREFIX, BGGEN_S3_ENDPOINT_URL, BGGEN_S3_CREATE_BUCKET=1,
                      AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)
  BGGEN_FEEDS_DIR, BGGEN_PLACEMENTS, BGGEN_PROMPTS   the catalog config (default: the sample catalog)
  BGGEN_SKIP_OUT_OF_STOCK  1 (default): out-of-stock feed rows are skipped (and counted); 0: kept
  BGGEN_MAX_REJECTED_FRACTION  above this share of a partition's rows rejected (default 0.5), the
                      blocking check catalog_not_mass_rejected fails and the last index stays
  BGGEN_FEED_SPLITS   where feed versions are split per category (default $BGGEN_DATA_DIR/feed_splits)
  BGGEN_FETCH_ALLOW_NETWORKS  CIDRs image fetching may reach despite the SSRF guard (e.g.
                      127.0.0.0/8 for a CDN on this host); BGGEN_FETCH_CONCURRENCY (8),
                      BGGEN_FETCH_CONNECT_TIMEOUT_S (5), BGGEN_FETCH_READ_TIMEOUT_S (15),
                      BGGEN_FETCH_TOTAL_TIMEOUT_S (60), BGGEN_FETCH_MAX_BYTES (16 MiB),
                      BGGEN_FETCH_MAX_PIXELS (64M), BGGEN_FETCH_RETRIES (3)
  BGGEN_BUCKET_RATIO  r of the bucketing formula (default 1.2)
  BGGEN_BUCKETING     grid (default: the paper's grid buckets) | cover (fewer canvases, chosen to
                      cover the placements at no worse a worst-case area ratio than the grid's)
  BGGEN_CANVAS_PIXELS the pixel budget of a generated canvas (default 786432 = 1024x768)
  BGGEN_MASKER        classical | yolo (with BGGEN_YOLO_WEIGHTS) | onnx (a salient-object model:
                      BGGEN_ONNX_MODEL, a local .onnx file; BGGEN_ONNX_INPUT_SIZE (1024),
                      BGGEN_ONNX_MEAN and BGGEN_ONNX_STD (three comma-separated values, default
                      ImageNet's), BGGEN_ONNX_OUTPUT_INDEX (0), BGGEN_ONNX_ACTIVATION (none |
                      sigmoid | minmax), BGGEN_ONNX_THRESHOLD (0.5), BGGEN_ONNX_BATCH_SIZE (4)) |
                      auto (classical, and the onnx model where the classical score is below
                      BGGEN_AUTO_MIN_SCORE, default 0.6); see docs/masking.md.
                      BGGEN_MIN_MASK_CONFIDENCE (default 0.5): masks scored below it are held
                      back from generation and serving (product_masks' mask_confidence check)
  BGGEN_EXECUTOR      default (in-process/multiprocess) | celery: steps run on dagster-celery workers,
                      with BGGEN_CELERY_BROKER (default amqp://guest:guest@127.0.0.1:5672//) and
                      BGGEN_CELERY_BACKEND (default rpc://); see deploy/celery.yaml, docs/production.md
                      | k8s: one Kubernetes pod per step (dagster-k8s, in the images of deploy/)
  BGGEN_GENERATOR     template | diffusion (with BGGEN_BASE_MODEL, BGGEN_CONTROLNET_MODEL,
                      BGGEN_LOCAL_FILES_ONLY=1 (unset: hub ids may be downloaded), BGGEN_DEVICE,
                      BGGEN_PIXEL_BUDGET; few-step generation: BGGEN_LORA (a file, directory or hub
                      id, e.g. latent-consistency/lcm-lora-sdv1-5), BGGEN_LORA_WEIGHT_NAME,
                      BGGEN_LORA_SCALE, with its BGGEN_SCHEDULER (lcm, tcd, ...), BGGEN_STEPS and
                      BGGEN_GUIDANCE_SCALE; BGGEN_USE_INPAINT=1 with BGGEN_INPAINT_CONTROLNET_MODEL,
                      e.g. lllyasviel/control_v11p_sd15_inpaint)

URLs and secrets (the DB and Redis URLs, the S3 bucket, endpoint and keys, the Celery broker and
backend) reach Dagster as `dg.EnvVar`s: Dagster reads them when it initialises a resource for a
run or a sensor tick, and the UI shows the variable's name, never its value. An EnvVar whose
variable is unset fails that initialisation, so one is made only for a variable that is set;
otherwise the embedded default stays. The choice of each backend and the other settings are plain
values, read when the code location loads (they are what the UI should show).

Processes that use the resources without Dagster (the serving API, the demo's serving step) pass
`read_secrets_now=True`: nothing would resolve an EnvVar there. This module imports no assets,
sensors or Definitions.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from resources.bandit_store import BanditStore
from resources.creative_config import CreativeConfig
from resources.image_fetcher import FetchSettings
from resources.generator import DiffusionSettings, GeneratorResource
from resources.io_manager import ManifestIOManager
from resources.masker import MaskerResource
from resources.metadata_db import MetadataDB
from resources.miss_queue import DbMissQueue, MissQueue
from resources.object_store import LocalObjectStore, ObjectStore, S3ObjectStore


class DeploymentEnv:
    """The environment a deployment is built from: settings as values, secrets as EnvVars."""

    def __init__(self, env: Optional[Mapping[str, str]] = None, *, read_secrets_now: bool = False):
        self._env = os.environ if env is None else env
        self._read_secrets_now = read_secrets_now

    def setting(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self._env.get(name) or default

    def secret(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A URL or credential: `dg.EnvVar(name)` if the variable is set, else `default`."""
        if not self._env.get(name):
            return default
        return self._env[name] if self._read_secrets_now else dg.EnvVar(name)

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        """Which backend: the first option is the embedded one."""
        value = self.setting(name, options[0])
        if value not in options:
            raise ValueError(f"{name} must be {' or '.join(repr(o) for o in options)}, got {value!r}")
        return value

    def data_dir(self) -> Path:
        return Path(self.setting("BGGEN_DATA_DIR", "bggen_data")).resolve()


def _given(**fields: Any) -> dict[str, Any]:
    """The fields the environment sets: the others keep the resource's own default."""
    return {k: v for k, v in fields.items() if v is not None}


def _int(value: Optional[str]) -> Optional[int]:
    return None if value is None else int(value)


def _float(value: Optional[str]) -> Optional[float]:
    return None if value is None else float(value)


def build_store(e: DeploymentEnv) -> ObjectStore:
    if e.choice("BGGEN_STORE", ("local", "s3")) == "local":
        return LocalObjectStore(root=e.setting("BGGEN_STORE_ROOT", str(e.data_dir() / "objects")))
    if not e.setting("BGGEN_S3_BUCKET"):
        raise ValueError("BGGEN_STORE=s3 needs BGGEN_S3_BUCKET")
    from dagster_aws.s3 import S3Resource

    return S3ObjectStore(
        bucket=e.secret("BGGEN_S3_BUCKET"),
        prefix=e.setting("BGGEN_S3_PREFIX", ""),
        create_bucket=e.setting("BGGEN_S3_CREATE_BUCKET", "0") == "1",
        s3=S3Resource(
            endpoint_url=e.secret("BGGEN_S3_ENDPOINT_URL"),  # unset: AWS
            region_name=e.setting("AWS_REGION", "us-east-1"),
            aws_access_key_id=e.secret("AWS_ACCESS_KEY_ID"),  # unset: boto3's own chain (roles, files)
            aws_secret_access_key=e.secret("AWS_SECRET_ACCESS_KEY"),
        ),
    )


def build_miss_queue(e: DeploymentEnv, db: MetadataDB) -> MissQueue:
    if e.choice("BGGEN_MISS_QUEUE", ("db", "redis")) == "db":
        return DbMissQueue(metadata_db=db)
    from resources.redis_miss_queue import RedisMissQueue

    return RedisMissQueue(**_given(redis_url=e.secret("BGGEN_REDIS_URL"), namespace=e.setting("BGGEN_REDIS_NAMESPACE")))


def build_generator(e: DeploymentEnv) -> GeneratorResource:
    diffusion = DiffusionSettings(**_given(
        base_model=e.setting("BGGEN_BASE_MODEL"),
        controlnet_model=e.setting("BGGEN_CONTROLNET_MODEL"),
        device=e.setting("BGGEN_DEVICE"),
        pixel_budget=_int(e.setting("BGGEN_PIXEL_BUDGET")),
        lora=e.setting("BGGEN_LORA"),
        lora_weight_name=e.setting("BGGEN_LORA_WEIGHT_NAME"),
        lora_scale=_float(e.setting("BGGEN_LORA_SCALE")),
        scheduler=e.setting("BGGEN_SCHEDULER"),
        steps=_int(e.setting("BGGEN_STEPS")),
        guidance_scale=_float(e.setting("BGGEN_GUIDANCE_SCALE")),
        use_inpaint=None if e.setting("BGGEN_USE_INPAINT") is None else e.setting("BGGEN_USE_INPAINT") == "1",
        inpaint_controlnet_model=e.setting("BGGEN_INPAINT_CONTROLNET_MODEL"),
        # the README's contract: without BGGEN_LOCAL_FILES_ONLY=1 a hub id may be downloaded
        local_files_only=e.setting("BGGEN_LOCAL_FILES_ONLY", "0") == "1",
    ))
    return GeneratorResource(diffusion=diffusion, **_given(kind=e.setting("BGGEN_GENERATOR")))


def _float(value: Optional[str]) -> Optional[float]:
    return None if value is None else float(value)


def _floats(value: Optional[str]) -> Optional[list[float]]:
    return None if value is None else [float(v) for v in value.split(",")]


def build_masker(e: DeploymentEnv) -> MaskerResource:
    return MaskerResource(**_given(
        method=e.setting("BGGEN_MASKER"), yolo_weights=e.setting("BGGEN_YOLO_WEIGHTS"),
        onnx_model=e.setting("BGGEN_ONNX_MODEL"), onnx_input_size=_int(e.setting("BGGEN_ONNX_INPUT_SIZE")),
        onnx_mean=_floats(e.setting("BGGEN_ONNX_MEAN")), onnx_std=_floats(e.setting("BGGEN_ONNX_STD")),
        onnx_output_index=_int(e.setting("BGGEN_ONNX_OUTPUT_INDEX")),
        onnx_activation=e.setting("BGGEN_ONNX_ACTIVATION"),
        onnx_threshold=_float(e.setting("BGGEN_ONNX_THRESHOLD")),
        onnx_batch_size=_int(e.setting("BGGEN_ONNX_BATCH_SIZE")),
        auto_min_score=_float(e.setting("BGGEN_AUTO_MIN_SCORE")),
        min_confidence=_float(e.setting("BGGEN_MIN_MASK_CONFIDENCE"))))


def build_fetch_settings(e: DeploymentEnv) -> FetchSettings:
    return FetchSettings(**_given(
        allow_networks=e.setting("BGGEN_FETCH_ALLOW_NETWORKS"),
        concurrency=_int(e.setting("BGGEN_FETCH_CONCURRENCY")),
        connect_timeout_s=_float(e.setting("BGGEN_FETCH_CONNECT_TIMEOUT_S")),
        read_timeout_s=_float(e.setting("BGGEN_FETCH_READ_TIMEOUT_S")),
        total_timeout_s=_float(e.setting("BGGEN_FETCH_TOTAL_TIMEOUT_S")),
        max_bytes=_int(e.setting("BGGEN_FETCH_MAX_BYTES")),
        max_pixels=_int(e.setting("BGGEN_FETCH_MAX_PIXELS")),
        retries=_int(e.setting("BGGEN_FETCH_RETRIES")),
    ))


def build_resources(env: Optional[Mapping[str, str]] = None, *, read_secrets_now: bool = False) -> dict[str, Any]:
    """Every resource the definitions bind, by key. `env` (default: os.environ) picks backends and
    settings; an EnvVar is read from the process environment when Dagster initialises it."""
    e = DeploymentEnv(env, read_secrets_now=read_secrets_now)
    data_dir = e.data_dir()
    sample = data_dir / "sample"
    store = build_store(e)
    db = MetadataDB(url=e.secret("BGGEN_DB_URL", f"sqlite:///{data_dir / 'bggen.db'}"))
    ratio = _float(e.setting("BGGEN_BUCKET_RATIO"))
    return {
        "store": store,
        "metadata_db": db,
        "miss_queue": build_miss_queue(e, db),
        "bandit_store": BanditStore(metadata_db=db),
        "creative_config": CreativeConfig(
            feeds_dir=e.setting("BGGEN_FEEDS_DIR", str(sample / "feeds")),
            placements_path=e.setting("BGGEN_PLACEMENTS", str(sample / "placements.yaml")),
            prompts_path=e.setting("BGGEN_PROMPTS", str(sample / "prompts.yaml")),
            split_cache_dir=e.setting("BGGEN_FEED_SPLITS", str(data_dir / "feed_splits")),
            fetch=build_fetch_settings(e),
            bucketing=e.choice("BGGEN_BUCKETING", ("grid", "cover")),
            **_given(bucket_ratio=ratio, canvas_pixels=_int(e.setting("BGGEN_CANVAS_PIXELS")),
                     skip_out_of_stock=None if e.setting("BGGEN_SKIP_OUT_OF_STOCK") is None
                     else e.setting("BGGEN_SKIP_OUT_OF_STOCK") == "1",
                     max_rejected_fraction=_float(e.setting("BGGEN_MAX_REJECTED_FRACTION"))),
        ),
        "masker": build_masker(e),
        "generator": build_generator(e),
        "manifest_io_manager": ManifestIOManager(store=store),
    }


def build_executor(env: Optional[Mapping[str, str]] = None) -> Optional[dg.ExecutorDefinition]:
    """None (Dagster's default executor), the dagster-celery executor (BGGEN_EXECUTOR=celery), or
    dagster-k8s's k8s_job_executor (BGGEN_EXECUTOR=k8s: one pod per step, so only the generation
    step's pod asks for a GPU, through its `dagster-k8s/config` op tag; deploy/helm-values.yaml)."""
    e = DeploymentEnv(env)
    kind = e.choice("BGGEN_EXECUTOR", ("default", "celery", "k8s"))
    if kind == "default":
        return None
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:  # installed in the images (deploy/Dockerfile*), not by pyproject
            raise ValueError("BGGEN_EXECUTOR=k8s needs dagster-k8s (pip install dagster-k8s==0.29.27)") from exc
        return k8s_job_executor
    from dagster_celery import celery_executor

    def url(name: str, default: str):
        return {"env": name} if e.setting(name) else default  # executor config: {"env": ...} is its EnvVar

    return celery_executor.configured({
        "broker": url("BGGEN_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
        "backend": url("BGGEN_CELERY_BACKEND", "rpc://"),
    }, name="bggen_celery_executor")
