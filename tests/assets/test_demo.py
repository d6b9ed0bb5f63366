"""The demo's plumbing: sensor results, its Dagster instance (run and pool limits), and the sensor
cursors it keeps in that instance, where the daemon of `make ui` finds them."""
import logging
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, RunRequest, SensorResult, SkipReason

from bggen_assets.demo import (
    DEMO_INSTANCE_YAML,
    prepare_instance,
    run_requests_of,
    sensor_origin,
    sensor_tick,
    stored_cursor,
)

ROOT = Path(__file__).resolve().parents[2]


def test_run_requests_of_every_sensor_result_shape():
    a, b = RunRequest(run_key="a"), RunRequest(run_key="b")
    assert run_requests_of(SensorResult(run_requests=[a, b])) == [a, b]
    assert run_requests_of(SensorResult(skip_reason="nothing new")) == []
    assert run_requests_of(SkipReason("the miss is already a hit")) == []  # a second demo run
    assert run_requests_of([a, SkipReason("x")]) == [a]
    assert run_requests_of(None) == []


def test_the_demo_instance_runs_one_run_and_one_generation_step_at_a_time(tmp_path):
    from dagster._core.run_coordinator import QueuedRunCoordinator

    from bggen_assets.assets.pipeline import GPU_POOL, pipeline_assets

    home = tmp_path / "dagster_home"
    assert prepare_instance(home).read_text() == DEMO_INSTANCE_YAML
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 1  # what the queue daemon launches at once
        assert instance.event_log_storage.supports_global_concurrency_limits
        # what a generation step's first claim does: the pool, with no limit of its own, gets the default
        instance.event_log_storage.initialize_concurrency_limit_to_default(GPU_POOL)
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1
    [generation] = [a for a in pipeline_assets if AssetKey("generated_backgrounds") in a.keys]
    assert generation.op.pool == GPU_POOL


def test_a_dagster_yaml_already_in_the_home_is_kept(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    prepare_instance(tmp_path)
    assert (tmp_path / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


@pytest.fixture
def demo_env(tmp_path, sample_dir, monkeypatch):
    """A demo data dir with the sample catalog and its instance, as `bggen-demo` sets them up."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data / "sample")
    monkeypatch.setenv("BGGEN_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))
    prepare_instance(data / "dagster_home")
    return data


def test_the_demo_keeps_the_sensor_cursor_in_the_instance(demo_env):
    from bggen_assets.deployment import build_resources
    from sensors.catalog import new_product_sensor

    resources = build_resources(read_secrets_now=True)
    with DagsterInstance.get() as instance:
        first = sensor_tick(instance, new_product_sensor, resources)
        assert len(first.run_requests) == 7
        assert stored_cursor(instance, sensor_origin("new_product_sensor")) == first.cursor
        assert set(instance.get_dynamic_partitions("merchant")) == {"northwind", "acme-outfitters"}
    with DagsterInstance.get() as instance:  # a later demo: the cursor comes back from the instance
        assert sensor_tick(instance, new_product_sensor, resources).skip_message == "no feed changes"
    # no cursor file (feed_splits: each feed version split per category, once)
    assert sorted(p.name for p in demo_env.iterdir()) == ["dagster_home", "feed_splits", "sample"]


def test_after_the_demo_the_daemon_of_make_ui_requests_no_run(demo_env, monkeypatch):
    """One sensor iteration of the daemon that `make ui` starts (its code location loaded from
    workspace.yaml by a code server, as `dagster dev -w workspace.yaml` does): it finds the cursor
    the demo stored, so it asks for nothing."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    from bggen_assets.deployment import build_resources
    from sensors.catalog import new_product_sensor

    monkeypatch.chdir(ROOT)  # where `make ui` runs
    with DagsterInstance.get() as instance:
        assert len(sensor_tick(instance, new_product_sensor, build_resources(read_secrets_now=True)).run_requests) == 7
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=["workspace.yaml"])) as workspace:
            list(execute_sensor_iteration(workspace, logging.getLogger("daemon"), None, None))
        origin = sensor_origin("new_product_sensor")
        [tick] = instance.get_ticks(origin.get_id(), origin.get_selector().get_id())
        assert (tick.status.value, tick.skip_reason) == ("SKIPPED", "no feed changes"), tick.tick_data.error
        assert instance.get_runs() == []
