"""Scale-out on an existing engine: the pipeline's steps run on dagster-celery workers.

Services pass only (needs the local RabbitMQ). The test starts two `celery -A dagster_celery.app
worker` processes (solo pool: each step runs in the worker process itself), then launches two
partition runs at once with `dagster job execute` and BGGEN_EXECUTOR=celery against a persistent
(SQLite) DAGSTER_HOME, as the celery executor requires. From the run's events it shows which
worker (celery hostname and pid) ran each step: every step ran in one of the two workers, none in
the run process, and both workers took work.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services import RABBITMQ_URL, services_only, stop_process

pytestmark = services_only
ROOT = Path(__file__).resolve().parents[2]
CELERY_CONFIG = """
broker_url = {broker!r}
result_backend = "rpc://"
worker_prefetch_multiplier = 1
task_acks_late = True
broker_connection_retry_on_startup = True
"""


def purge_dagster_queue(broker: str) -> None:
    """Tasks left by an interrupted earlier run must not reach this test's workers."""
    from kombu import Connection

    with Connection(broker, connect_timeout=5) as conn:
        for queue in ("dagster", "gpu"):
            try:
                conn.default_channel.queue_purge(queue)
            except Exception:  # noqa: BLE001 - the queue does not exist yet
                pass


@pytest.fixture
def celery_env(tmp_path, sample_dir):
    broker = RABBITMQ_URL
    try:
        purge_dagster_queue(broker)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"RabbitMQ is not answering at {broker} ({exc}); start it with `bash scripts/ci_services.sh`",
                    pytrace=False)
    conf_dir = tmp_path / "celery_conf"
    conf_dir.mkdir()
    (conf_dir / "dagster_celery_config.py").write_text(CELERY_CONFIG.format(broker=broker))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # SQLite storage in DAGSTER_HOME
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(conf_dir), str(ROOT)]),
        "DAGSTER_HOME": str(home),
        "BGGEN_EXECUTOR": "celery", "BGGEN_CELERY_BROKER": broker, "BGGEN_CELERY_BACKEND": "rpc://",
        "BGGEN_DATA_DIR": str(tmp_path / "data"),
        "BGGEN_DB_URL": f"sqlite:///{tmp_path / 'data' / 'bggen.db'}",
        "BGGEN_STORE": "local", "BGGEN_STORE_ROOT": str(tmp_path / "data" / "objects"),
        "BGGEN_MISS_QUEUE": "db",
        "BGGEN_FEEDS_DIR": str(sample_dir / "feeds"), "BGGEN_PLACEMENTS": str(sample_dir / "placements.yaml"),
        "BGGEN_PROMPTS": str(sample_dir / "prompts.yaml"), "BGGEN_CANVAS_PIXELS": "60000",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    return env


def start_worker(name: str, env: dict, log: Path) -> subprocess.Popen:
    # both queues: generated_backgrounds is routed to "gpu" by its op tag (the stack test splits them)
    cmd = [str(Path(sys.executable).parent / "celery"), "-A", "dagster_celery.app", "worker", "-Q", "dagster,gpu",
           "-n", f"{name}@%h", "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    return proc


def wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"celery worker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if b" ready." in log.read_bytes():
            return
        time.sleep(0.2)
    raise AssertionError(f"celery worker not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def test_steps_run_on_two_celery_workers(celery_env, tmp_path):
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, EventRecordsFilter

    from bggen_assets.partitions import partition_key

    partitions = [("acme-outfitters", "beauty"), ("northwind", "home")]
    logs = {n: tmp_path / f"{n}.log" for n in ("w1", "w2")}
    workers = {n: start_worker(n, celery_env, logs[n]) for n in logs}
    runs = []
    try:
        for n, proc in workers.items():
            wait_ready(proc, logs[n])
        old = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = celery_env["DAGSTER_HOME"]
        try:
            with DagsterInstance.get() as instance:
                instance.add_dynamic_partitions("merchant", [m for m, _ in partitions])
                instance.add_dynamic_partitions("category", [c for _, c in partitions])
        finally:
            os.environ.pop("DAGSTER_HOME") if old is None else os.environ.__setitem__("DAGSTER_HOME", old)
        for merchant, category in partitions:  # two runs at once: both workers get steps
            tags = {"dagster/partition": str(partition_key(merchant, category)),
                    "dagster/partition/merchant": merchant, "dagster/partition/category": category}
            runs.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "bggen_assets.definitions",
                 "-j", "bggen_pipeline", "--tags", json.dumps(tags)],
                cwd=ROOT, env=celery_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [r.communicate(timeout=400)[0] for r in runs]
        for r, out in zip(runs, outputs):
            assert r.returncode == 0, out[-5000:]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
        for proc in workers.values():
            stop_process(proc, grace=10)

    worker_pids = {proc.pid: n for n, proc in workers.items()}
    os.environ["DAGSTER_HOME"] = celery_env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            records = instance.get_run_records()
            assert len(records) == 2 and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records)
            ran_on: dict[tuple[str, str], tuple[str, int]] = {}
            for rec in records:
                run = rec.dagster_run
                for entry in instance.all_logs(run.run_id):
                    ev = entry.dagster_event
                    if ev is None:
                        continue
                    if ev.event_type == DagsterEventType.ENGINE_EVENT and "in celery worker" in (ev.message or entry.user_message or ""):
                        host = ev.engine_event_data.metadata["Celery worker"].value
                        ran_on[(run.tags["dagster/partition"], ev.step_key)] = (host, None)
                    if ev.event_type == DagsterEventType.STEP_SUCCESS:
                        key = (run.tags["dagster/partition"], ev.step_key)
                        host = ran_on.get(key, ("?", None))[0]
                        ran_on[key] = (host, ev.pid)  # the process that ran the step
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    report = "\n".join(f"  {p:28s} {s:22s} worker={h} pid={pid}" for (p, s), (h, pid) in sorted(ran_on.items()))
    print(f"\nsteps by celery worker (w1 pid {workers['w1'].pid}, w2 pid {workers['w2'].pid}):\n{report}")
    assert len(ran_on) == 10, report  # 5 steps x 2 runs
    for (p, s), (host, pid) in ran_on.items():
        assert pid in worker_pids, f"{p} {s} ran in pid {pid}, not in a celery worker\n{report}"
        assert host.split("@")[0] == worker_pids[pid], report
    assert set(worker_pids.values()) == {h.split("@")[0] for h, _ in ran_on.values()}, f"one worker idle:\n{report}"
