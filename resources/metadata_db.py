"""The metadata DB through SQLAlchemy: SQLite by default, MySQL/MariaDB in production.

Tables: products, masks (one row per image content hash and masker), generated images, and the
miss queue (one row per request key; LIFO by last request time).

Production concerns (MySQL/MariaDB through `mysql+mysqlconnector://user:pw@host:3306/db`):
- schema: versioned Alembic migrations in `resources/migrations/`, applied on first use
  (the `sa.Table`s below are the head revision and must match it);
- pooled connections (`pool_size`, pre-ping, recycle) and retries of whole units of work on
  transient errors (lost connection, server restart, deadlock, lock wait timeout, SQLite busy),
  with exponential backoff up to `retry_seconds`; every write is an idempotent upsert or update,
  so a retried unit never duplicates a row;
- the miss queue is claimed by concurrent consumers without double work: MySQL
  `SELECT ... FOR UPDATE SKIP LOCKED` then a claim stamp; SQLite one atomic `UPDATE ... WHERE
  request_key IN (SELECT ... LIMIT n)`. A claim expires after `claim_lease_s` (a dead consumer's
  misses come back); `waiting_partitions` then reports the partition as changed at the claim time,
  which is how bucket_miss_sensor knows to request it again.
"""

import functools
import logging
import random
import uuid

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import PrivateAttr
from sqlalchemy.dialects import mysql, sqlite

from bggen_assets.core.keys import digest

metadata = sa.MetaData()
# Byte-exact on MySQL/MariaDB (migration 0004): `ABC` and `abc` are two products. SQLite's default
# BINARY collation is byte-exact already.
PRODUCT_ID = sa.String(128).with_variant(mysql.VARCHAR(128, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")

products = sa.Table(
    "products",
    metadata,
    sa.Column("merchant", sa.String(64), primary_key=True),
    sa.Column("product_id", PRODUCT_ID, primary_key=True),
    sa.Column("category", sa.String(64), nullable=False, index=True),
    sa.Column("subcategory", sa.String(128), nullable=False, default=""),
    sa.Column("colour", sa.String(64), nullable=False, default=""),
    sa.Column("title", sa.String(512), nullable=False, default=""),
    sa.Column("image_uri", sa.String(1024), nullable=False),
    sa.Column("image_hash", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # ok | rejected
    sa.Column("reason", sa.String(512), nullable=False, default=""),
    sa.Column("updated_at", sa.Double, nullable=False),
)

masks = sa.Table(
    "masks",
    metadata,
    sa.Column("image_hash", sa.String(64), primary_key=True),
    sa.Column("masker_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # ok | rejected
    sa.Column("method", sa.String(32), nullable=False, default=""),
    sa.Column("score", sa.Double, nullable=False, default=0.0),
    sa.Column("reason", sa.String(512), nullable=False, default=""),
    sa.Column("mask_key", sa.String(255), nullable=True),
    sa.Column("cutout_key", sa.String(255), nullable=True),
    sa.Column("bbox", sa.String(64), nullable=True),  # "x,y,w,h"
    sa.Column("image_size", sa.String(32), nullable=True),  # "w,h"
    sa.Column("coverage", sa.Double, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
)

generated_images = sa.Table(
    "generated_images",
    metadata,
    sa.Column("image_key", sa.String(255), primary_key=True),
    sa.Column("merchant", sa.String(64), nullable=False),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("product_id", PRODUCT_ID, nullable=False),
    sa.Column("bucket_id", sa.String(64), nullable=False),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("generator_id", sa.String(255), nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_generated_partition", "merchant", "category"),
)

misses = sa.Table(
    "misses",
    metadata,
    sa.Column("request_key", sa.String(64), primary_key=True),
    sa.Column("merchant", sa.String(64), nullable=False),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("product_id", PRODUCT_ID, nullable=False),
    sa.Column("bucket_id", sa.String(64), nullable=False),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("first_requested_at", sa.Double, nullable=False),
    sa.Column("last_requested_at", sa.Double, nullable=False, index=True),
    sa.Column("request_count", sa.Integer, nullable=False, default=1),
    # migration 0005: users counted per serving replica (a user seen by two replicas counts twice)
    sa.Column("distinct_users", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),  # pending | claimed | done
    sa.Column("claimed_by", sa.String(96), nullable=True),  # migration 0002
    sa.Column("claimed_at", sa.Double, nullable=True),
    sa.Index("ix_misses_status_last", "status", "last_requested_at"),
)

log = logging.getLogger(__name__)

# MySQL/MariaDB error numbers worth retrying: lock wait timeout, deadlock, too many connections,
# server shutdown / gone away / lost connection / cannot connect, connection killed, a read or
# write that timed out (mysql-connector's 3024: the server hangs).
TRANSIENT_MYSQL_ERRNOS = {1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 2055, 1927, 4031, 3024}


class TransientDBError(RuntimeError):
    """The database stayed unreachable (or kept deadlocking) for longer than the retry budget."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        errno = getattr(orig, "errno", None)
        if errno is None and getattr(orig, "args", None) and isinstance(orig.args[0], int):
            errno = orig.args[0]
        if errno in TRANSIENT_MYSQL_ERRNOS:
            return True
        msg = str(orig).lower()
        if "database is locked" in msg or "lost connection" in msg or "can't connect" in msg \
                or "server has gone away" in msg or "connection refused" in msg:
            return True
        return isinstance(exc, (sa.exc.InterfaceError,)) and not isinstance(exc, sa.exc.IntegrityError)
    return isinstance(exc, (ConnectionError, TimeoutError))


def retried(method):
    """Run a unit of work again on transient DB errors (the unit must be idempotent)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline = time.monotonic() + self.retry_seconds
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_transient(exc):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransientDBError(
                        f"metadata DB {self.describe()}: {method.__name__} failed after {attempt} attempts "
                        f"over {self.retry_seconds:g}s: {type(exc).__name__}: {exc}") from exc
                wait = min(remaining, delay * (0.5 + random.random()))
                log.warning("metadata DB %s: %s: transient error (%s), retry %d in %.1fs",
                            self.describe(), method.__name__, exc.__class__.__name__, attempt, wait)
                time.sleep(wait)
                delay = min(delay * 2, 5.0)

    return wrapper


@dataclass(frozen=True)
class Miss:
    merchant: str
    category: str
    product_id: str
    bucket_id: str
    prompt_id: str
    last_requested_at: float = 0.0
    request_count: int = 1  # requests; when recorded: the requests this record stands for
    distinct_users: int = 0  # users; when recorded: the users not counted before

    @property
    def request_key(self) -> str:
        return miss_key(self.merchant, self.category, self.product_id, self.bucket_id, self.prompt_id)


@dataclass(frozen=True)
class StalePartition:
    """A partition whose products' masks were made by another masker than the current one."""

    merchant: str
    category: str
    products: int  # its usable products without a mask by the current masker


@dataclass(frozen=True)
class WaitingPartition:
    """One partition's misses that wait for a run: pending ones, and claims whose lease ran out."""

    merchant: str
    category: str
    misses: int
    oldest_request: float  # the last request of its longest-waiting miss: who goes first
    changed_at: float  # its newest request, or the claim time of a claim that then lapsed


def miss_key(merchant: str, category: str, product_id: str, bucket_id: str, prompt_id: str) -> str:
    """One key per generation that would serve the request: a storm over one bucket queues once."""
    return digest(merchant, category, product_id, bucket_id, prompt_id)[:40]


class MetadataDB(ConfigurableResource):
    """SQLAlchemy URL; `sqlite:///bggen_data/bggen.db` by default, `mysql+mysqlconnector://...` in production."""

    url: str = "sqlite:///bggen_data/bggen.db"
    pool_size: int = 5
    max_overflow: int = 10
    echo: bool = False
    retry_seconds: float = 60.0  # how long transient errors (restart, failover, deadlock) are retried
    claim_lease_s: float = 900.0  # a claimed miss not marked done within this returns to the queue
    connect_timeout: int = 10
    #: seconds a MySQL read or write may wait on an open connection (0: no limit). A server that
    #: hangs (stopped, partitioned) instead of refusing would otherwise block the caller for good;
    #: the serving API sets it so its flusher notices the outage (mysql-connector only)
    io_timeout: int = 0
    sqlite_busy_timeout_s: float = 30.0  # how long a SQLite write waits for another writer's lock

    _engine = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url = sa.make_url(self.url)
            kwargs: dict = {"echo": self.echo, "future": True}
            if url.get_backend_name() == "sqlite":
                if url.database and url.database != ":memory:":
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": self.sqlite_busy_timeout_s}
            else:
                # LIFO: the warm connection is reused and idle extras age out; pre-ping replaces
                # connections the server dropped (restart, wait_timeout) before they are handed out
                kwargs.update(pool_size=self.pool_size, max_overflow=self.max_overflow, pool_pre_ping=True,
                              pool_recycle=3600, pool_use_lifo=True)
                if url.get_driver_name() == "mysqlconnector":
                    kwargs["connect_args"] = {"connection_timeout": self.connect_timeout}
                    if self.io_timeout > 0:
                        kwargs["connect_args"].update(read_timeout=self.io_timeout, write_timeout=self.io_timeout)
            engine = sa.create_engine(url, **kwargs)
            if url.get_backend_name() == "sqlite":

                @sa.event.listens_for(engine, "connect")
                def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
                    # WAL lets the API read while a run writes; NORMAL sync is safe with WAL.
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                    cur.close()

            self._migrate(engine)
            self._engine = engine
        return self._engine

    @retried
    def _migrate(self, engine: sa.Engine) -> None:
        from .migrations import upgrade

        upgrade(engine)

    def describe(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Close pooled connections (tests; processes that fork)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- generic upsert (SQLite and MySQL dialects) ------------------------------------------
    def _upsert(self, conn, table: sa.Table, rows: list[dict], update_cols: Iterable[str]) -> None:
        if not rows:
            return
        update_cols = list(update_cols)
        name = conn.dialect.name
        if name == "sqlite":
            stmt = sqlite.insert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=[c.name for c in table.primary_key.columns],
                set_={c: getattr(stmt.excluded, c) for c in update_cols},
            )
        elif name in ("mysql", "mariadb"):
            stmt = mysql.insert(table)
            stmt = stmt.on_duplicate_key_update({c: getattr(stmt.inserted, c) for c in update_cols})
        else:
            raise NotImplementedError(f"upsert not implemented for dialect {name}")
        conn.execute(stmt, rows)

    # -- products ------------------------------------------------------------------------------
    @retried
    def upsert_products(self, rows: list[dict]) -> None:
        now = time.time()
        rows = [{**r, "updated_at": now} for r in rows]
        cols = [c.name for c in products.columns if not c.primary_key]
        with self.engine.begin() as conn:
            self._upsert(conn, products, rows, cols)

    @retried
    def product_rows(self, merchant: str, category: Optional[str] = None) -> list[dict]:
        q = sa.select(products).where(products.c.merchant == merchant)
        if category is not None:
            q = q.where(products.c.category == category)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(products.c.product_id))]

    # -- masks ---------------------------------------------------------------------------------
    @retried
    def get_mask(self, image_hash: str, masker_id: str) -> Optional[dict]:
        q = sa.select(masks).where(masks.c.image_hash == image_hash, masks.c.masker_id == masker_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row else None

    @retried
    def put_mask(self, row: dict) -> None:
        row = {**row, "created_at": time.time()}
        with self.engine.begin() as conn:
            self._upsert(conn, masks, [row], [c.name for c in masks.columns if not c.primary_key])

    @retried
    def stale_mask_partitions(self, masker_id: str) -> list["StalePartition"]:
        """The (merchant, category) partitions with usable products whose image has a mask made
        by another masker (an older version, other settings) and none made by ``masker_id``:
        what a new masker must re-mask. A product never masked at all is not counted (its
        partition's first run is on its way); one query, the products table scanned once, each
        product's masks looked up by the masks table's primary key."""
        other = masks.alias("other")
        current = masks.alias("current")
        with self.engine.connect() as conn:
            image_hash = self._as_masks_hash(conn, products.c.image_hash)
            q = (sa.select(products.c.merchant, products.c.category, sa.func.count().label("n"))
                 .where(products.c.status == "ok", products.c.image_hash.is_not(None),
                        sa.exists().where(other.c.image_hash == image_hash, other.c.masker_id != masker_id),
                        ~sa.exists().where(current.c.image_hash == image_hash, current.c.masker_id == masker_id))
                 .group_by(products.c.merchant, products.c.category)
                 .order_by(products.c.merchant, products.c.category))
            return [StalePartition(r.merchant, r.category, int(r.n)) for r in conn.execute(q)]

    def _as_masks_hash(self, conn, column: sa.Column) -> sa.ColumnElement:
        """``column`` (an image hash) in the character set and collation of masks.image_hash.

        On MySQL/MariaDB the products table is utf8mb4_unicode_ci (migration 0004) while masks
        has the server's default, and comparing the two is an "illegal mix of collations". The
        hashes are hex, so converting the products side is lossless, and converting that side
        (not the masks one) keeps the masks primary key usable for the lookup."""
        if conn.dialect.name not in ("mysql", "mariadb"):
            return column
        row = conn.execute(sa.text(
            "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'masks' AND COLUMN_NAME = 'image_hash'")).first()
        charset, collation = (row[0], row[1]) if row else ("utf8mb4", "utf8mb4_bin")
        if not all(re.fullmatch(r"[A-Za-z0-9_]+", v or "") for v in (charset, collation)):
            raise ValueError(f"unexpected charset/collation of masks.image_hash: {charset!r} / {collation!r}")
        return sa.literal_column(f"CONVERT({column.table.name}.{column.name} USING {charset}) COLLATE {collation}")

    # -- generated images ----------------------------------------------------------------------
    @retried
    def record_generated(self, rows: list[dict]) -> None:
        now = time.time()
        rows = [{**r, "metrics": json.dumps(r.get("metrics", {})), "created_at": now} for r in rows]
        with self.engine.begin() as conn:
            self._upsert(conn, generated_images, rows, ["attempts", "metrics"])

    @retried
    def generated_keys(self, image_keys: list[str]) -> set[str]:
        """Which of these canvas keys have a generated_images row (a rerun re-records the others)."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(image_keys), 500):
                chunk = image_keys[start:start + 500]
                found.update(conn.execute(sa.select(generated_images.c.image_key)
                                          .where(generated_images.c.image_key.in_(chunk))).scalars())
        return found

    @retried
    def generated_rows(self, merchant: str, category: str) -> list[dict]:
        q = sa.select(generated_images).where(
            generated_images.c.merchant == merchant, generated_images.c.category == category
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- miss queue (the embedded default; RedisMissQueue mirrors it) ---------------------------
    @retried
    def record_miss(self, miss: Miss, now: Optional[float] = None) -> None:
        """Queue a miss once per key; a repeat only refreshes its time (LIFO) and count."""
        now = time.time() if now is None else now
        row = dict(
            request_key=miss.request_key,
            merchant=miss.merchant,
            category=miss.category,
            product_id=miss.product_id,
            bucket_id=miss.bucket_id,
            prompt_id=miss.prompt_id,
            first_requested_at=now,
            last_requested_at=now,
            request_count=miss.request_count,
            distinct_users=miss.distinct_users,
            status="pending",
        )
        with self.engine.begin() as conn:
            name = conn.dialect.name
            if name == "sqlite":
                stmt = sqlite.insert(misses).values(**row)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["request_key"],
                    set_={
                        "last_requested_at": stmt.excluded.last_requested_at,
                        "request_count": misses.c.request_count + miss.request_count,
                        "distinct_users": misses.c.distinct_users + miss.distinct_users,
                        "status": _status_after_request,
                    },
                )
            else:
                stmt = mysql.insert(misses).values(**row)
                stmt = stmt.on_duplicate_key_update(
                    last_requested_at=stmt.inserted.last_requested_at,
                    request_count=misses.c.request_count + miss.request_count,
                    distinct_users=misses.c.distinct_users + miss.distinct_users,
                    status=_status_after_request,
                )
            conn.execute(stmt)

    @retried
    def pending_misses(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        """Pending misses (and claims past their lease), newest request first."""
        q = sa.select(misses).where(self._claimable(time.time()))
        if merchant is not None:
            q = q.where(misses.c.merchant == merchant)
        if category is not None:
            q = q.where(misses.c.category == category)
        q = q.order_by(misses.c.last_requested_at.desc(), misses.c.request_key).limit(limit)
        with self.engine.connect() as conn:
            return [
                Miss(r.merchant, r.category, r.product_id, r.bucket_id, r.prompt_id, r.last_requested_at, r.request_count,
                     r.distinct_users)
                for r in conn.execute(q)
            ]

    @retried
    def waiting_partitions(self, now: Optional[float] = None) -> list[WaitingPartition]:
        """Every partition with waiting misses, the one that has waited longest first; no limit
        (one row per partition), so a storm in one partition cannot hide another's misses."""
        now = time.time() if now is None else now
        # a claimed row here is one whose lease ran out; it changed when it was claimed, after
        # the request that led to the run that claimed it
        lapsed = sa.and_(misses.c.status == "claimed", misses.c.claimed_at > misses.c.last_requested_at)
        changed_at = sa.case((lapsed, misses.c.claimed_at), else_=misses.c.last_requested_at)
        q = (sa.select(misses.c.merchant, misses.c.category, sa.func.count().label("n"),
                       sa.func.min(misses.c.last_requested_at).label("oldest"), sa.func.max(changed_at).label("changed"))
             .where(self._claimable(now)).group_by(misses.c.merchant, misses.c.category))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return sorted((WaitingPartition(r.merchant, r.category, r.n, r.oldest, r.changed) for r in rows),
                      key=lambda p: (p.oldest_request, p.merchant, p.category))

    @retried
    def mark_misses_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        """Mark misses served. With served_before, a miss requested again after that time stays
        pending (a claim on it is released, so the next plan picks it up)."""
        if not request_keys:
            return 0
        q = misses.update().where(misses.c.request_key.in_(request_keys))
        if served_before is not None:
            q = q.where(misses.c.last_requested_at <= served_before)
        with self.engine.begin() as conn:
            done = conn.execute(q.values(status="done", claimed_by=None, claimed_at=None)).rowcount
            if served_before is not None:
                conn.execute(misses.update().where(misses.c.request_key.in_(request_keys),
                                                   misses.c.status == "claimed",
                                                   misses.c.last_requested_at > served_before)
                             .values(status="pending", claimed_by=None, claimed_at=None))
            return done

    def _claimable(self, now: float):
        return sa.or_(misses.c.status == "pending",
                      sa.and_(misses.c.status == "claimed", misses.c.claimed_at < now - self.claim_lease_s))

    @retried
    def claim_misses(self, consumer: str, limit: int = 100, merchant: Optional[str] = None,
                     category: Optional[str] = None, now: Optional[float] = None) -> list[Miss]:
        """Take up to `limit` pending misses for `consumer`, newest first. Concurrent consumers never
        get the same miss (until its claim lease runs out). Idempotent under retry: a retried call
        uses a new token and the rows a lost commit claimed come back after the lease."""
        now = time.time() if now is None else now
        token = f"{consumer[:60]}:{uuid.uuid4().hex}"
        where = [self._claimable(now)]
        if merchant is not None:
            where.append(misses.c.merchant == merchant)
        if category is not None:
            where.append(misses.c.category == category)
        order = (misses.c.last_requested_at.desc(), misses.c.request_key)
        with self.engine.begin() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                # row locks on the chosen rows; rows another consumer holds are skipped, not waited on
                keys = conn.execute(sa.select(misses.c.request_key).where(*where).order_by(*order).limit(limit)
                                    .with_for_update(skip_locked=True)).scalars().all()
                if not keys:
                    return []
                conn.execute(misses.update().where(misses.c.request_key.in_(keys))
                             .values(status="claimed", claimed_by=token, claimed_at=now))
            else:
                # SQLite: one UPDATE is atomic (writers are serialised by the database lock)
                sub = sa.select(misses.c.request_key).where(*where).order_by(*order).limit(limit).scalar_subquery()
                conn.execute(misses.update().where(misses.c.request_key.in_(sub))
                             .values(status="claimed", claimed_by=token, claimed_at=now))
            rows = conn.execute(sa.select(misses).where(misses.c.claimed_by == token).order_by(*order)).all()
        return [Miss(r.merchant, r.category, r.product_id, r.bucket_id, r.prompt_id, r.last_requested_at,
                     r.request_count) for r in rows]

    @retried
    def release_misses(self, request_keys: list[str]) -> int:
        """Give claimed misses back to the queue (a consumer that could not do them)."""
        if not request_keys:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(misses.update().where(misses.c.request_key.in_(request_keys),
                                                      misses.c.status == "claimed")
                                .values(status="pending", claimed_by=None, claimed_at=None)).rowcount

    @retried
    def miss_rows(self) -> list[dict]:
        """Every row of the miss queue (tests, operators)."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(misses).order_by(misses.c.request_key))]


# A repeat request keeps a claim (the consumer that holds it will serve it); otherwise -> pending.
_status_after_request = sa.case((misses.c.status == "claimed", "claimed"), else_="pending")
