"""The production Dagster instance: DAGSTER_HOME holds deploy/dagster.yaml verbatim (dagster-mysql
storage on MariaDB, S3 compute logs on SeaweedFS, the run queue and the gpu pool), and the pipeline job
materializes one partition through the `dagster` CLI with the production resources (metadata DB on
MariaDB, in the same database as Dagster's storage; object store on S3).

Services pass only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services import S3_KEY, S3_SECRET, services_only

pytestmark = services_only
ROOT = Path(__file__).resolve().parents[2]
MERCHANT, CATEGORY = "acme-outfitters", "beauty"


@pytest.fixture
def production_env(tmp_path, mysql_database, seaweedfs, sample_dir):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    prefix = f"prod-{uuid.uuid4().hex[:8]}"
    env = {
        "DAGSTER_HOME": str(home),
        "BGGEN_DAGSTER_MYSQL_URL": mysql_database,
        "BGGEN_COMPUTE_LOG_BUCKET": seaweedfs.bucket,
        "BGGEN_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
        # the code location's resources: production backends
        "BGGEN_DATA_DIR": str(tmp_path / "data"),
        "BGGEN_DB_URL": mysql_database,  # the same database as Dagster's storage: both coexist
        "BGGEN_STORE": "s3", "BGGEN_S3_BUCKET": seaweedfs.bucket, "BGGEN_S3_PREFIX": prefix,
        "BGGEN_FEEDS_DIR": str(sample_dir / "feeds"), "BGGEN_PLACEMENTS": str(sample_dir / "placements.yaml"),
        "BGGEN_PROMPTS": str(sample_dir / "prompts.yaml"), "BGGEN_CANVAS_PIXELS": "120000",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_partition_materializes_on_the_production_instance(production_env, seaweedfs):
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus
    from dagster._core.run_coordinator import QueuedRunCoordinator

    from bggen_assets.assets.pipeline import GPU_POOL
    from bggen_assets.partitions import partition_key
    from resources.migrations import current_revision
    from resources.metadata_db import MetadataDB

    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "MySQLRunStorage"
        assert type(instance.event_log_storage).__name__ == "MySQLEventLogStorage"
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()  # what the queue daemon and the steps obey
        assert concurrency.run_queue_config.max_concurrent_runs == 16
        assert concurrency.run_queue_config.tag_concurrency_limits == [
            {"key": "bggen/trigger", "value": {"applyLimitPerUniqueValue": True}, "limit": 8}]
        assert (concurrency.pool_config.default_pool_limit, concurrency.pool_config.pool_granularity.value) == (2, "op")
        assert instance.event_log_storage.get_concurrency_keys() == set()  # no pool until a step claims one
        instance.add_dynamic_partitions("merchant", [MERCHANT])
        instance.add_dynamic_partitions("category", [CATEGORY])

    key = str(partition_key(MERCHANT, CATEGORY))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "bggen_assets.definitions",
         "-j", "bggen_pipeline", "--tags", json.dumps({"dagster/partition": key,
                                                       "dagster/partition/merchant": MERCHANT,
                                                       "dagster/partition/category": CATEGORY})],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-4000:])

    with DagsterInstance.get() as instance:
        [run] = instance.get_run_records()
        assert run.dagster_run.status == DagsterRunStatus.SUCCESS
        # the generation step claimed a slot of the gpu pool, which took the instance's default limit
        assert instance.event_log_storage.get_concurrency_keys() == {GPU_POOL}
        gpu = instance.event_log_storage.get_concurrency_info(GPU_POOL)
        assert (gpu.slot_count, gpu.active_slot_count) == (2, 0)
        for asset in ("catalog", "product_masks", "bucket_plans", "generated_backgrounds", "serving_index"):
            mat = instance.get_latest_materialization_event(AssetKey(asset))
            assert mat is not None and mat.run_id == run.dagster_run.run_id, asset
            assert mat.asset_materialization.partition == key
        # step stdout/stderr went to S3 through the compute log manager
        logs = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix="dagster-compute-logs/")
        names = [o["Key"] for o in logs.get("Contents", [])]
        assert any(run.dagster_run.run_id in n for n in names), names[:10]

    # bggen's tables and Dagster's share the database; each keeps its own schema version table
    db = MetadataDB(url=production_env["BGGEN_DB_URL"])
    try:
        with db.engine.connect() as conn:
            assert current_revision(conn) == "0005"
            tables = set(conn.exec_driver_sql("SHOW TABLES").scalars())
        assert {"runs", "event_logs", "alembic_version", "bggen_schema_version", "generated_images"} <= tables
        assert len(db.generated_rows(MERCHANT, CATEGORY)) > 0
    finally:
        db.dispose()
