"""The production topology on one machine (bggen_assets/stack.py, `make stack`), and the container
and Kubernetes files that describe the same processes.

`test_stack_end_to_end` (services pass: MariaDB, Redis, RabbitMQ must answer, SeaweedFS is started
by the stack) starts the whole stack on free ports with its own state dir, databases, RabbitMQ vhost
and Redis namespace; pushes ONE partition of a small sample catalog through it (queued through the
webserver's GraphQL, launched by the daemon, every step on a Celery worker); checks from the run's
events and from the workers' logs that the generation step ran on the `gpu` worker and every other
step on the `cpu` worker; fetches a creative from each serving replica; stops the stack and checks
that no process it started is left.

The other tests (embedded pass, cheap) parse the Dockerfiles, the Helm values and the Kubernetes
manifests, and check that they agree with each other and with the code (image name and tag,
entrypoints, health routes, the GPU routing tags).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from services import drop_database, services_only

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _stack(state: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bggen_assets.stack", *args, "--state-dir", str(state)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _records(state: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (state / "pids").glob("*.json")}


def _out(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


@services_only
def test_stack_end_to_end(tmp_path, mariadb_url, redis_url):
    import redis
    from PIL import Image

    from bggen_assets.stack import Processes, StackConfig, group_members, s3_client

    state, tag = tmp_path / "stack", uuid.uuid4().hex[:10]
    dagster_db, bggen_db, vhost, namespace = f"bggen_dagster_{tag}", f"bggen_stack_{tag}", f"bggen-test-{tag}", f"{{t{tag}}}:misses"
    records = {}
    try:
        up = _stack(state, "up", "--free-ports", "--mysql-server", mariadb_url, "--dagster-db", dagster_db,
                    "--bggen-db", bggen_db, "--redis-url", redis_url, "--redis-namespace", namespace,
                    "--amqp-vhost", vhost, "--env", "BGGEN_CANVAS_PIXELS=60000", timeout=300)
        records = _records(state)
        assert up.returncode == 0, _out(up)
        assert set(records) == {"seaweedfs", "code-server", "webserver", "daemon", "celery-cpu", "celery-gpu",
                                "serve-1", "serve-2"}, records
        assert "Dagster webserver   http://127.0.0.1:" in up.stdout, up.stdout

        demo = _stack(state, "demo", "--merchants", "1", "--products-per-merchant", "4", "--limit", "1",
                      "--timeout", "300", timeout=420)
        assert demo.returncode == 0, _out(demo)
        report = json.loads((state / "demo.json").read_text())
        [(run_id, run)] = report["runs"].items()
        assert run["status"] == "SUCCESS", report

        # every step ran in a Celery worker process, the generation step in the gpu queue's worker
        pids = {records["celery-cpu"]["pid"]: "cpu", records["celery-gpu"]["pid"]: "gpu"}
        steps = {step: (host, pid) for rid, step, host, pid in report["steps"]}
        assert set(steps) == {"catalog", "product_masks", "bucket_plans", "generated_backgrounds", "serving_index"}, report
        for step, (host, pid) in steps.items():
            want = "gpu" if step == "generated_backgrounds" else "cpu"
            assert pids.get(pid) == want and host.startswith(f"{want}@"), f"{step} ran on {host} pid {pid}: {report}"
        # ... and the workers' own logs agree: one task received by the gpu worker, four by the cpu one
        received = {q: len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] received",
                                      (state / "logs" / f"celery-{q}.log").read_text())) for q in ("cpu", "gpu")}
        assert received == {"cpu": 4, "gpu": 1}, received

        # the steps' stdout/stderr went to the stack's SeaweedFS through deploy/dagster.yaml's S3ComputeLogManager
        cfg = StackConfig.load(state)
        logs = s3_client(cfg.s3_endpoint).list_objects_v2(Bucket=cfg.log_bucket, Prefix="dagster-compute-logs/")
        keys = [o["Key"] for o in logs.get("Contents", []) if run_id in o["Key"]]
        assert len(keys) >= 5, keys  # one captured file per step (each step is one Celery task)

        # a creative from each replica (both read the same index from the same S3 store)
        assert len(report["creatives"]) == 2 and len({c["port"] for c in report["creatives"]}) == 2
        for c in report["creatives"]:
            with urllib.request.urlopen(c["url"], timeout=10) as r:
                assert r.status == 200 and r.headers["content-type"] == "image/jpeg", c
                assert r.headers["x-cache"] == "hit", dict(r.headers)
                img = Image.open(io.BytesIO(r.read()))
            w, h = (int(v) for v in re.search(r"width=(\d+)&height=(\d+)", c["url"]).groups())
            assert img.size == (w, h), (img.size, c)
    finally:
        down = _stack(state, "down", timeout=120)
        left = {name: group_members(rec["pid"]) for name, rec in records.items()}
        for db in (dagster_db, bggen_db):
            drop_database(mariadb_url, db)
        if shutil.which("rabbitmqctl"):
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{namespace}*"):
            r.delete(key)
    assert down.returncode == 0, _out(down)
    # no process of the stack is left, nor any of its children (each was its own process group)
    assert not any(left.values()), {name: pids for name, pids in left.items() if pids}
    assert Processes(state).all() == []
    again = _stack(state, "down", timeout=60)  # idempotent
    assert again.returncode == 0 and "nothing of the stack is running" in again.stdout, _out(again)


@services_only
def test_stack_up_fails_naming_the_process_and_stops_what_it_started(tmp_path, mariadb_url, redis_url):
    """A process that does not come up (the code server, on a configuration it refuses) fails `up`
    with its name, address and log; what `up` had started already is stopped."""
    from bggen_assets.stack import group_members

    state, tag = tmp_path / "stack", uuid.uuid4().hex[:10]
    dbs = (f"bggen_dagster_{tag}", f"bggen_stack_{tag}")
    try:
        out = _stack(state, "up", "--free-ports", "--mysql-server", mariadb_url, "--dagster-db", dbs[0],
                     "--bggen-db", dbs[1], "--env", "BGGEN_STORE=gcs", timeout=300)
    finally:
        for db in dbs:
            drop_database(mariadb_url, db)
    assert out.returncode == 1, _out(out)
    assert re.search(r"code-server exited before it was ready \(grpc://127\.0\.0\.1:\d+\); log \S+code-server\.log",
                     out.stderr), _out(out)
    assert "BGGEN_STORE must be 'local' or 's3', got 'gcs'" in out.stderr, _out(out)
    assert not list((state / "pids").glob("*.json")), list((state / "pids").iterdir())
    for line in re.findall(r"(\S+) up \(pid (\d+)\)", out.stdout):
        assert not group_members(int(line[1])), f"{line[0]} (pid {line[1]}) left running"


def test_stack_fails_naming_the_absent_service(tmp_path):
    """A service that does not answer (here Redis, on a port nothing listens on) fails `up` with
    its name and address, before anything is started."""
    from services import free_ports

    port = free_ports(1)[0]
    out = _stack(tmp_path / "stack", "up", "--free-ports", "--redis-url", f"redis://127.0.0.1:{port}/0",
                 timeout=60)
    assert out.returncode == 1, _out(out)
    assert f"Redis at 127.0.0.1:{port}" in out.stderr, _out(out)
    assert not (tmp_path / "stack" / "pids").exists() or not list((tmp_path / "stack" / "pids").iterdir())


# ------------------------------------------------------------------------------ container / K8s files
def _dockerfile(name: str) -> tuple[str, dict[str, str]]:
    text = (DEPLOY / name).read_text()
    labels = dict(re.findall(r'LABEL\s+([\w.\-]+)="([^"]*)"', text))
    return text, labels


def test_dockerfiles_name_the_image_the_helm_values_use():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    cpu_text, cpu = _dockerfile("Dockerfile")
    gpu_text, gpu = _dockerfile("Dockerfile.cuda")
    # the image the Dockerfiles say they build is the one the chart pulls, at the project's version
    assert cpu["org.opencontainers.image.title"] == gpu["org.opencontainers.image.title"] == "bggen"
    assert cpu["org.opencontainers.image.version"] == version
    assert gpu["org.opencontainers.image.version"] == f"{version}-cuda"
    assert deployment["image"]["repository"] == "bggen" and deployment["image"]["tag"] == f"{version}-cuda"
    # the webserver and daemon keep the chart's images, whose tag is the chart version: the install
    # line pins the chart to the Dagster version the project pins
    dagster_pin = re.search(r'"dagster==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"--version {dagster_pin}" in (DEPLOY / "helm-values.yaml").read_text()
    assert "registry.example.com" not in (DEPLOY / "helm-values.yaml").read_text()
    # the pins: installed from the project's own pyproject (dagster==, torch==), the CUDA torch wheel
    for text in (cpu_text, gpu_text):
        assert re.search(r"^USER\s+bggen", text, re.M), "non-root user"
        assert "pip install" in text and "--no-deps" not in text
    torch_pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"torch=={torch_pin}" in gpu_text and "download.pytorch.org/whl/cu" in gpu_text
    base = re.search(r"^ARG\s+CUDA_IMAGE=(\S+)", gpu_text, re.M).group(1)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base) and "FROM ${CUDA_IMAGE}" in gpu_text
    assert "download.pytorch.org/whl/cpu" in cpu_text
    entry = (DEPLOY / "docker-entrypoint.sh").read_text()
    for role in ("code-server", "webserver", "daemon", "celery-worker", "serve"):
        assert re.search(rf"^\s+{role}\)", entry, re.M), role


def test_helm_values_route_generation_to_gpus():
    from bggen_assets.assets.pipeline import generated_backgrounds
    from bggen_assets.deployment import build_executor

    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["BGGEN_EXECUTOR"] == "k8s"  # one pod per step: only generation's asks for a GPU
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    try:
        import dagster_k8s  # noqa: F401 - in the images, not in the project's own dependencies
    except ImportError:
        with pytest.raises(ValueError, match=r"BGGEN_EXECUTOR=k8s needs dagster-k8s \(pip install dagster-k8s==0.29.27\)"):
            build_executor({"BGGEN_EXECUTOR": "k8s"})
    else:
        assert build_executor({"BGGEN_EXECUTOR": "k8s"}).name == "k8s"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "bggen_assets.definitions"]
    # the generation op's own tags: Celery queue and the pod's GPU limit
    tags = generated_backgrounds.op.tags
    assert tags["dagster-celery/queue"] == "gpu"
    k8s = json.loads(tags["dagster-k8s/config"]) if isinstance(tags["dagster-k8s/config"], str) else tags["dagster-k8s/config"]
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert values["concurrency"]["pools"]["defaultLimit"] >= 1


def test_serving_manifest_matches_the_api():
    from bggen_assets.serving.routers.health import router

    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "serving.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service"} <= set(kinds)
    dep, svc = kinds["Deployment"], kinds["Service"]
    [container] = dep["spec"]["template"]["spec"]["containers"]
    _, labels = _dockerfile("Dockerfile")
    assert container["image"] == f"bggen:{labels['org.opencontainers.image.version']}"
    assert container["args"][0] == "serve"
    routes = {r.path for r in router.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live" in routes
    port = container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["port"] == port
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == port
    assert dep["spec"]["replicas"] >= 2


def test_image_entrypoint_starts_the_serving_api(tmp_path):
    """The images' entrypoint, run here as the container would (its `serve` role, and a command
    passed through as the Helm chart passes `dagster api grpc ...`)."""
    import time

    from services import free_ports, stop_process

    port = free_ports(1)[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{DEPLOY}", "PORT": str(port), "BGGEN_DATA_DIR": str(tmp_path / "data"),
           "BGGEN_CLICK_JOURNAL": str(tmp_path / "clicks.journal")}
    entry = str(DEPLOY / "docker-entrypoint.sh")
    passthrough = subprocess.run(["sh", entry, "python", "-c", "import dagster_celery_config as c; print(c.broker_url)"],
                                 env={**env, "BGGEN_CELERY_BROKER": "amqp://u:p@rabbit:5672//"}, capture_output=True,
                                 text=True, timeout=60)
    assert passthrough.stdout.strip() == "amqp://u:p@rabbit:5672//", passthrough
    proc = subprocess.Popen(["sh", entry, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2) as r:
                    assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
                    break
            except OSError:
                assert time.monotonic() < deadline, "bggen-serve did not answer on /health/live within 60 s"
                time.sleep(0.2)
    finally:
        stop_process(proc, grace=10)
