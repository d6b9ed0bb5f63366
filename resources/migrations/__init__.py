"""Versioned schema migrations for the metadata DB, with Alembic.

Why Alembic rather than a home-made runner: it is already installed (Dagster itself migrates its
storage with it), it speaks both dialects we run on (SQLite's batch mode for ALTERs it lacks,
MySQL/MariaDB natively), it keeps a version table, and operators know `alembic upgrade head`.
We use it as a library, not through `alembic.ini`: `upgrade(engine)` runs every pending
revision in `versions/` on the connection it is given, so the resource migrates itself on first
use and `python -m resources.migrations <url>` does the same by hand.

Rules:
- Revisions are numbered (0001, 0002, ...) and never edited once released; a schema change is a
  new revision AND the matching change to the `sa.Table`s in `resources/metadata_db.py`
  (tests/resources/test_mysql_db.py compares the migrated schema with those tables on both dialects).
- The version table is `bggen_schema_version`, not Alembic's default `alembic_version`, so the
  metadata DB may share a MySQL database with the Dagster instance (dagster-mysql uses
  `alembic_version` for its own revisions).
- Concurrent first starts (several run workers at once) are serialised: MySQL `GET_LOCK`, SQLite
  an exclusive lock file next to the DB file.
- A DB made by the pre-migration code (tables from `create_all`, no version table) is stamped at
  0001 and then upgraded.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import sqlalchemy as sa

VERSION_TABLE = "bggen_schema_version"
HERE = Path(__file__).resolve().parent
LOCK_NAME = "bggen_schema_migration"


def _config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _config(None)
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine):
    if engine.dialect.name in ("mysql", "mariadb"):
        with engine.connect() as conn:
            got = conn.exec_driver_sql(f"SELECT GET_LOCK('{LOCK_NAME}', 120)").scalar()
            if got != 1:
                raise RuntimeError("could not take the schema migration lock within 120 s")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{LOCK_NAME}')")
        return
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        import fcntl

        lock_path = f"{engine.url.database}.migrate.lock"
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    yield


def upgrade(engine: sa.Engine, revision: str = "head") -> str:
    """Bring the schema to `revision` (default: the newest). Returns the revision it ends at."""
    from alembic import command

    with _migration_lock(engine):
        with engine.begin() as conn:
            current = current_revision(conn)
            if current is None and sa.inspect(conn).has_table("misses"):
                # made by the pre-migration create_all: that schema is revision 0001
                command.stamp(_config(conn), "0001")
            command.upgrade(_config(conn), revision)
            return current_revision(conn)


def main(argv=None) -> None:  # pragma: no cover - operator entry point
    import sys

    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else os.environ.get("BGGEN_DB_URL")
    if not url:
        raise SystemExit("usage: python -m resources.migrations <sqlalchemy-url>  (or set BGGEN_DB_URL)")
    engine = sa.create_engine(url)
    print(f"schema at {upgrade(engine)} (head {head_revision()})")


if __name__ == "__main__":  # pragma: no cover
    main()
