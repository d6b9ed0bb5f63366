"""The metadata DB through SQLAlchemy: SQLite by default, MySQL/MariaDB in production.

Tables: products, masks (one row per image content hash and masker), generated images, and the
miss queue (one row per request key; LIFO by last request time).
"""

import json
import os
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

products = sa.Table(
    "products",
    metadata,
    sa.Column("merchant", sa.String(64), primary_key=True),
    sa.Column("product_id", sa.String(128), primary_key=True),
    sa.Column("category", sa.String(64), nullable=False, index=True),
    sa.Column("subcategory", sa.String(128), nullable=False, default=""),
    sa.Column("colour", sa.String(64), nullable=False, default=""),
    sa.Column("title", sa.String(512), nullable=False, default=""),
    sa.Column("image_uri", sa.String(1024), nullable=False),
    sa.Column("image_hash", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # ok | rejected
    sa.Column("reason", sa.String(512), nullable=False, default=""),
    sa.Column("updated_at", sa.Float, nullable=False),
)

masks = sa.Table(
    "masks",
    metadata,
    sa.Column("image_hash", sa.String(64), primary_key=True),
    sa.Column("masker_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # ok | rejected
    sa.Column("method", sa.String(32), nullable=False, default=""),
    sa.Column("score", sa.Float, nullable=False, default=0.0),
    sa.Column("reason", sa.String(512), nullable=False, default=""),
    sa.Column("mask_key", sa.String(255), nullable=True),
    sa.Column("cutout_key", sa.String(255), nullable=True),
    sa.Column("bbox", sa.String(64), nullable=True),  # "x,y,w,h"
    sa.Column("image_size", sa.String(32), nullable=True),  # "w,h"
    sa.Column("coverage", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

generated_images = sa.Table(
    "generated_images",
    metadata,
    sa.Column("image_key", sa.String(255), primary_key=True),
    sa.Column("merchant", sa.String(64), nullable=False),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("product_id", sa.String(128), nullable=False),
    sa.Column("bucket_id", sa.String(64), nullable=False),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("generator_id", sa.String(255), nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_generated_partition", "merchant", "category"),
)

misses = sa.Table(
    "misses",
    metadata,
    sa.Column("request_key", sa.String(64), primary_key=True),
    sa.Column("merchant", sa.String(64), nullable=False),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("product_id", sa.String(128), nullable=False),
    sa.Column("bucket_id", sa.String(64), nullable=False),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("first_requested_at", sa.Float, nullable=False),
    sa.Column("last_requested_at", sa.Float, nullable=False, index=True),
    sa.Column("request_count", sa.Integer, nullable=False, default=1),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),  # pending | done
)


@dataclass(frozen=True)
class Miss:
    merchant: str
    category: str
    product_id: str
    bucket_id: str
    prompt_id: str
    last_requested_at: float = 0.0
    request_count: int = 1

    @property
    def request_key(self) -> str:
        return miss_key(self.merchant, self.category, self.product_id, self.bucket_id, self.prompt_id)


def miss_key(merchant: str, category: str, product_id: str, bucket_id: str, prompt_id: str) -> str:
    """One key per generation that would serve the request: a storm over one bucket queues once."""
    return digest(merchant, category, product_id, bucket_id, prompt_id)[:40]


class MetadataDB(ConfigurableResource):
    """SQLAlchemy URL; `sqlite:///bggen_data/bggen.db` by default, `mysql+mysqlconnector://...` in production."""

    url: str = "sqlite:///bggen_data/bggen.db"
    pool_size: int = 5
    echo: bool = False

    _engine = PrivateAttr(default=None)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url = sa.make_url(self.url)
            kwargs: dict = {"echo": self.echo, "future": True}
            if url.get_backend_name() == "sqlite":
                if url.database and url.database != ":memory:":
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": 30}
            else:
                kwargs.update(pool_size=self.pool_size, pool_pre_ping=True, pool_recycle=3600)
            engine = sa.create_engine(url, **kwargs)
            if url.get_backend_name() == "sqlite":

                @sa.event.listens_for(engine, "connect")
                def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
                    # WAL lets the API read while a run writes; NORMAL sync is safe with WAL.
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                    cur.close()

            metadata.create_all(engine)
            self._engine = engine
        return self._engine

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
    def upsert_products(self, rows: list[dict]) -> None:
        now = time.time()
        rows = [{**r, "updated_at": now} for r in rows]
        cols = [c.name for c in products.columns if not c.primary_key]
        with self.engine.begin() as conn:
            self._upsert(conn, products, rows, cols)

    def product_rows(self, merchant: str, category: Optional[str] = None) -> list[dict]:
        q = sa.select(products).where(products.c.merchant == merchant)
        if category is not None:
            q = q.where(products.c.category == category)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(products.c.product_id))]

    # -- masks ---------------------------------------------------------------------------------
    def get_mask(self, image_hash: str, masker_id: str) -> Optional[dict]:
        q = sa.select(masks).where(masks.c.image_hash == image_hash, masks.c.masker_id == masker_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row else None

    def put_mask(self, row: dict) -> None:
        row = {**row, "created_at": time.time()}
        with self.engine.begin() as conn:
            self._upsert(conn, masks, [row], [c.name for c in masks.columns if not c.primary_key])

    # -- generated images ----------------------------------------------------------------------
    def record_generated(self, rows: list[dict]) -> None:
        now = time.time()
        rows = [{**r, "metrics": json.dumps(r.get("metrics", {})), "created_at": now} for r in rows]
        with self.engine.begin() as conn:
            self._upsert(conn, generated_images, rows, ["attempts", "metrics"])

    def generated_rows(self, merchant: str, category: str) -> list[dict]:
        q = sa.select(generated_images).where(
            generated_images.c.merchant == merchant, generated_images.c.category == category
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- miss queue (the embedded default; RedisMissQueue mirrors it) ---------------------------
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
            request_count=1,
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
                        "request_count": misses.c.request_count + 1,
                        "status": "pending",
                    },
                )
            else:
                stmt = mysql.insert(misses).values(**row)
                stmt = stmt.on_duplicate_key_update(
                    last_requested_at=stmt.inserted.last_requested_at,
                    request_count=misses.c.request_count + 1,
                    status="pending",
                )
            conn.execute(stmt)

    def pending_misses(self, limit: int = 1000, merchant: Optional[str] = None, category: Optional[str] = None) -> list[Miss]:
        """Pending misses, newest request first."""
        q = sa.select(misses).where(misses.c.status == "pending")
        if merchant is not None:
            q = q.where(misses.c.merchant == merchant)
        if category is not None:
            q = q.where(misses.c.category == category)
        q = q.order_by(misses.c.last_requested_at.desc(), misses.c.request_key).limit(limit)
        with self.engine.connect() as conn:
            return [
                Miss(r.merchant, r.category, r.product_id, r.bucket_id, r.prompt_id, r.last_requested_at, r.request_count)
                for r in conn.execute(q)
            ]

    def mark_misses_done(self, request_keys: list[str], served_before: Optional[float] = None) -> int:
        """Mark misses served. With served_before, a miss requested again after that time stays pending."""
        if not request_keys:
            return 0
        q = misses.update().where(misses.c.request_key.in_(request_keys))
        if served_before is not None:
            q = q.where(misses.c.last_requested_at <= served_before)
        with self.engine.begin() as conn:
            return conn.execute(q.values(status="done")).rowcount


def db_url_from_env(data_dir: str, env: Optional[dict] = None) -> str:
    env = dict(os.environ if env is None else env)
    return env.get("BGGEN_DB_URL") or f"sqlite:///{os.path.join(data_dir, 'bggen.db')}"
