"""The metadata DB on MySQL/MariaDB (and the parts of it that SQLite shares): versioned migrations,
pooled connections, retries on transient errors, and a server crash in the middle of a run.

The crash test never touches the shared MariaDB: it starts a private mariadbd (own datadir in tmp,
free port; tests/services.py MariaDBServer), SIGKILLs it mid-run and starts it again.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from services import MariaDBServer, create_database, services_only, start_or_fail

ROOT = Path(__file__).resolve().parents[2]


def schema_diff(engine) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import resources.bandit_store  # noqa: F401  (its tables live on the same MetaData)
    from resources.metadata_db import metadata

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    # alembic reports its own version table as "removed" (it is not in our MetaData)
    diff = [d for d in diff if not (isinstance(d, tuple) and d[0] == "remove_table"
                                    and d[1].name == "bggen_schema_version")]
    return [d for d in diff if not (isinstance(d, list) and all(_float_as_double(c) for c in d))]


def _float_as_double(change) -> bool:
    """sa.Float declared, DOUBLE in the DB: the same type once Dagster is imported (it compiles
    Float as DOUBLE on MySQL globally), and what the migrations create on purpose."""
    if change[0] != "modify_type":
        return False
    existing, declared = change[5], change[6]
    return type(declared) is sa.Float and "DOUBLE" in type(existing).__name__.upper()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=services_only)])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("mysql_database")


def test_migrations_build_exactly_the_declared_schema(fresh_url):
    from resources.metadata_db import MetadataDB
    from resources.migrations import current_revision, head_revision

    db = MetadataDB(url=fresh_url)
    try:
        assert schema_diff(db.engine) == []
        with db.engine.connect() as conn:
            assert current_revision(conn) == head_revision() == "0005"
    finally:
        db.dispose()


def test_upgrade_from_0001_keeps_rows(fresh_url):
    from resources import migrations
    from resources.metadata_db import MetadataDB, Miss

    engine = sa.create_engine(fresh_url)
    assert migrations.upgrade(engine, "0001") == "0001"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO misses (request_key, merchant, category, product_id, bucket_id, prompt_id, "
            "first_requested_at, last_requested_at, request_count, status) "
            "VALUES ('k1', 'm', 'c', 'p', 'b', 'w', 1700000000.123456, 1700000000.654321, 3, 'pending')")
    engine.dispose()
    db = MetadataDB(url=fresh_url)  # first use migrates to head
    try:
        [row] = db.miss_rows()
        assert row["request_count"] == 3 and row["claimed_by"] is None
        assert abs(row["last_requested_at"] - 1700000000.654321) < 1e-6  # DOUBLE, not FLOAT
        db.record_miss(Miss("m", "c", "p2", "b", "w"))
        assert len(db.claim_misses("w1", 10)) == 2
    finally:
        db.dispose()


def test_pre_migration_database_is_stamped_then_upgraded(fresh_url):
    from resources import migrations
    from resources.metadata_db import MetadataDB

    engine = sa.create_engine(fresh_url)
    migrations.upgrade(engine, "0001")
    with engine.begin() as conn:  # what the old create_all left: tables, no version table
        conn.exec_driver_sql(f"DROP TABLE {migrations.VERSION_TABLE}")
    engine.dispose()
    db = MetadataDB(url=fresh_url)
    try:
        assert schema_diff(db.engine) == []
    finally:
        db.dispose()


MIGRATE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from resources.metadata_db import MetadataDB
from resources.migrations import current_revision
db = MetadataDB(url=sys.argv[2])
with db.engine.connect() as conn:
    print(current_revision(conn))
"""
HEAD = "0005"


def test_concurrent_first_starts_migrate_once(fresh_url):
    """Several workers starting at once on an empty DB: one migrates, the others wait, all work."""
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE_SCRIPT, str(ROOT), fresh_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        assert out.strip() == HEAD


@services_only
def test_pool_and_reconnect_after_server_side_kill(mysql_db):
    """Pooled connections are reused; a connection the server killed is replaced transparently."""
    from resources.metadata_db import Miss

    mysql_db.record_miss(Miss("m", "c", "p", "b", "w"))
    engine = mysql_db.engine
    assert engine.pool.size() == mysql_db.pool_size
    with engine.connect() as conn:
        ids = {conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()}
    with engine.connect() as conn:
        ids.add(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar())
    assert len(ids) == 1  # the pool handed the same connection back
    admin = sa.create_engine(sa.make_url(mysql_db.url).set(database=None), poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"KILL CONNECTION {ids.pop()}")
    admin.dispose()
    assert len(mysql_db.pending_misses()) == 1  # pre-ping / retry: a fresh connection, no error

    errors = []

    def hammer(i):
        try:
            for j in range(5):
                mysql_db.record_miss(Miss("m", "c", f"p{i}", "b", "w"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(12)]  # > pool_size: overflow
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert {r["product_id"]: r["request_count"] for r in mysql_db.miss_rows()}["p3"] == 5


def test_transient_errors_are_retried_then_reported_clearly(tmp_path):
    """An unreachable server: retried for retry_seconds, then one error naming the DB and the cause."""
    from services import free_ports

    from resources.metadata_db import MetadataDB, TransientDBError

    port = free_ports(1)[0]  # nothing listens there
    db = MetadataDB(url=f"mysql+mysqlconnector://root@127.0.0.1:{port}/nope", retry_seconds=1.0, connect_timeout=1)
    t = time.monotonic()
    with pytest.raises(TransientDBError) as info:
        db.pending_misses()
    assert 0.8 < time.monotonic() - t < 10
    assert f"127.0.0.1:{port}" in str(info.value) and "attempts" in str(info.value)


# -- MariaDB killed in the middle of a run -----------------------------------------------------------
@pytest.fixture(scope="module")
def private_server(tmp_path_factory):
    server = start_or_fail(MariaDBServer(tmp_path_factory.mktemp("private-mariadb")), "a private mariadbd for the crash test")
    yield server
    server.kill()


def _resources(store, db, creative_config):
    from pipeline_util import HookedGenerator

    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource
    from resources.miss_queue import DbMissQueue

    return {"store": store, "metadata_db": db, "miss_queue": DbMissQueue(metadata_db=db),
            "creative_config": creative_config, "masker": MaskerResource(),
            "generator": HookedGenerator(batch_size=4), "manifest_io_manager": ManifestIOManager(store=store)}


def _check_rows(db, store, creative_config, merchant, category):
    from bggen_assets.core import serving_index

    index = serving_index.read_current(store, merchant, category)
    image_keys = {e.image_key for e in index.entries.values()}
    with db.engine.connect() as conn:
        gen = conn.execute(sa.text("SELECT image_key FROM generated_images WHERE merchant=:m AND category=:c"),
                           {"m": merchant, "c": category}).scalars().all()
        prods = conn.execute(sa.text("SELECT product_id FROM products WHERE merchant=:m AND category=:c"),
                             {"m": merchant, "c": category}).scalars().all()
    feed = [r.product_id for r in creative_config.read_feed(merchant) if r.category == category]
    assert len(gen) == len(set(gen)) and set(gen) == image_keys, "generated_images rows lost or duplicated"
    assert sorted(prods) == sorted(set(feed)), "products rows lost or duplicated"
    return len(gen)


@services_only
@pytest.mark.parametrize("outage", ["short", "long"])
def test_mariadb_killed_mid_run(private_server, store, creative_config, outage):
    """short: the server is SIGKILLed during generation and back 1.5 s later: the DB retries ride
    through, the run succeeds without a step retry. long: it stays down past the DB retry budget:
    the generation step fails with a clear TransientDBError, Dagster retries the step (its
    RetryPolicy), the server is back by then, the run completes. Either way: no row lost or doubled."""
    from pipeline_util import CALLS, materialize_partition, reset_hooks, step_events

    from resources.metadata_db import MetadataDB

    merchant, category = "northwind", "bags"
    url = create_database(private_server.url, f"crash_{outage}")
    db = MetadataDB(url=url, retry_seconds=30.0 if outage == "short" else 2.0, connect_timeout=2)
    restarter: list[threading.Thread] = []

    def on_generate(n):
        if n == 1:
            private_server.kill()  # SIGKILL: a crash, InnoDB recovers on restart
            if outage == "short":
                t = threading.Thread(target=lambda: (time.sleep(1.5), private_server.start()))
                t.start()
                restarter.append(t)

    def on_get(n):
        if outage == "long" and n == 2:  # the step's retry: bring the server back first
            private_server.start()

    reset_hooks(on_get=on_get, on_generate=on_generate)
    try:
        result = materialize_partition(_resources(store, db, creative_config), merchant, category)
    finally:
        calls = dict(CALLS)
        reset_hooks()
        for t in restarter:
            t.join()
        if private_server.proc is None:
            private_server.start()
    assert result.success
    retries = step_events(result, "generated_backgrounds", "STEP_UP_FOR_RETRY")
    if outage == "short":
        assert not retries and calls["get"] == 1
    else:
        assert len(retries) == 1 and calls["get"] == 2
        text = retries[0].event_specific_data.error.to_string()
        assert "TransientDBError" in text and "record_generated failed after" in text, text
    n = _check_rows(db, store, creative_config, merchant, category)
    assert n > 0
    db.dispose()
