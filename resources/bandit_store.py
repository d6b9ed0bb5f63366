"""Bandit state, impressions and clicks in the metadata DB (SQLAlchemy Core; SQLite or MySQL/MariaDB).

Tables (defined on ``resources.metadata_db.metadata``, so ``create_all`` makes them):

* ``bandit_schemas``: per (merchant, category) the context schema (features and their values) the
  bandit state was built with. First writer wins, so every replica encodes contexts alike.
* ``bandit_state``: per (merchant, category, policy, arm) the running sums of the *deltas* every
  replica published: LinUCB ``(sum x x^T, sum r x)``, UCB1/random ``(n, sum r)``; the prior
  (``ridge*I``, 0) is not stored but added on load. Replicas flush deltas with
  :meth:`BanditStore.add_deltas`: a read-modify-write in a transaction, the row locked
  (``SELECT ... FOR UPDATE`` on MySQL) and guarded by a version column (optimistic check, which
  is what makes it exact on SQLite, where FOR UPDATE is a no-op). Sums add, so N replicas give
  exactly the state of one replica that saw every event.
* ``impressions``: one row per served creative (variant, theme, policy, bucket, hit, placement,
  hashed user id, context features as JSON); written in batches.
* ``clicks``: one row per clicked impression (the first click counts; repeats are ignored).

Events posted by an ad server (``POST /events``) or imported (the ``ad_events`` asset) go through
:meth:`BanditStore.insert_new_impressions` / :meth:`BanditStore.record_click`: both report which
rows were new, so a batch sent twice teaches the bandit once.
"""


import json
import time
from typing import Iterable, Mapping, Optional

import numpy as np
import sqlalchemy as sa
from dagster import ConfigurableResource, ResourceDependency
from pydantic import PrivateAttr
from sqlalchemy.dialects import mysql, sqlite

from bggen_assets.core.bandit import ContextSchema, coordinate_map, embed_components, extend_schema

from .metadata_db import MetadataDB, metadata

_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

bandit_schemas = sa.Table(
    "bandit_schemas",
    metadata,
    sa.Column("merchant", sa.String(64), primary_key=True),
    sa.Column("category", sa.String(64), primary_key=True),
    sa.Column("schema_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

bandit_state = sa.Table(
    "bandit_state",
    metadata,
    sa.Column("merchant", sa.String(64), primary_key=True),
    sa.Column("category", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(16), primary_key=True),  # linucb | ucb1 | random
    sa.Column("arm", sa.String(64), primary_key=True),
    sa.Column("shapes", sa.String(64), nullable=False),  # JSON list of component shapes
    sa.Column("data", _BLOB, nullable=False),  # float64 components, raveled and concatenated
    sa.Column("events", sa.BigInteger, nullable=False, default=0),  # flushes folded in (diagnostics)
    sa.Column("version", sa.BigInteger, nullable=False, default=0),
    sa.Column("updated_at", sa.Double, nullable=False),
)

impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("impression_id", sa.String(32), primary_key=True),
    sa.Column("ts", sa.Double, nullable=False, index=True),
    sa.Column("merchant", sa.String(64), nullable=False),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("product_id", sa.String(128), nullable=False),
    sa.Column("variant", sa.String(16), nullable=False),
    sa.Column("theme", sa.String(64), nullable=False),
    sa.Column("policy", sa.String(16), nullable=False),
    sa.Column("bucket_id", sa.String(64), nullable=False),
    sa.Column("hit", sa.Boolean, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("user_hash", sa.String(16), nullable=False, default=""),
    sa.Column("context", sa.Text, nullable=False, default="{}"),
    # migration 0005: the logging policy's probability of this theme (NULL: unknown), and where
    # the row came from: served (this API) | posted (POST /events) | imported (ad_events asset)
    sa.Column("propensity", sa.Double, nullable=True),
    sa.Column("source", sa.String(16), nullable=False, default="served", server_default="served"),
    sa.Index("ix_impressions_merchant_variant", "merchant", "variant"),
)

clicks = sa.Table(
    "clicks",
    metadata,
    sa.Column("impression_id", sa.String(32), primary_key=True),
    sa.Column("ts", sa.Double, nullable=False),
)

TABLES = [bandit_schemas, bandit_state, impressions, clicks]
IMPRESSION_COLUMNS = [c.name for c in impressions.columns]


class ConcurrentUpdate(RuntimeError):
    """Another replica changed a state row between our read and our write (retried)."""


def encode_components(comps: Iterable) -> tuple[str, bytes]:
    arrs = [np.asarray(c, dtype=np.float64) for c in comps]
    shapes = json.dumps([list(a.shape) for a in arrs], separators=(",", ":"))
    data = b"".join(np.ascontiguousarray(a).ravel().tobytes() for a in arrs)
    return shapes, data


def decode_components(shapes: str, data: bytes) -> tuple:
    flat = np.frombuffer(data, dtype=np.float64)
    out, pos = [], 0
    for shape in json.loads(shapes):
        n = int(np.prod(shape)) if shape else 1
        part = flat[pos:pos + n]
        pos += n
        out.append(part.reshape(shape).copy() if shape else float(part[0]))
    if pos != flat.size:
        raise ValueError(f"bandit_state row: {flat.size} values for shapes {shapes}")
    return tuple(out)


def _in_window(query, ts_column, since: Optional[float], until: Optional[float]):
    """The query restricted to since <= ts < until (either bound optional)."""
    if since is not None:
        query = query.where(ts_column >= since)
    if until is not None:
        query = query.where(ts_column < until)
    return query


class BanditStore(ConfigurableResource):
    """The serving layer's DB side: bandit deltas, context schemas, impressions, clicks."""

    metadata_db: ResourceDependency[MetadataDB]
    max_retries: int = 20

    _ready = PrivateAttr(default=False)

    @property
    def engine(self) -> sa.Engine:
        engine = self.metadata_db.engine
        if not self._ready:
            metadata.create_all(engine, tables=TABLES)  # checkfirst: a no-op once they exist
            self._ready = True
        return engine

    # -- schemas ---------------------------------------------------------------------------------
    def ensure_schema(self, merchant: str, category: str, schema: Mapping) -> dict:
        """The stored schema of (merchant, category), made from ``schema`` if there is none, and
        extended with the features and values of ``schema`` it lacks (a new country, device,
        subcategory): the stored LinUCB sums are then re-laid onto the extended encoding in the
        same transaction (:func:`~bggen_assets.core.bandit.embed_components`), so the state grows
        with the features instead of being fixed at first write. Concurrent extensions retry."""
        key = (bandit_schemas.c.merchant == merchant) & (bandit_schemas.c.category == category)
        for attempt in range(self.max_retries):
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(bandit_schemas.c.schema_json).where(key)).first()
                if row is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(bandit_schemas.insert().values(
                                merchant=merchant, category=category,
                                schema_json=json.dumps(dict(schema)), created_at=time.time()))
                        return json.loads(json.dumps(dict(schema)))
                    except sa.exc.IntegrityError:
                        continue  # another replica won: extend theirs
                stored = ContextSchema(json.loads(row[0]))
                grown = extend_schema(stored, schema)
                if grown is stored:
                    return json.loads(row[0])
                done = conn.execute(bandit_schemas.update().where(key & (bandit_schemas.c.schema_json == row[0]))
                                    .values(schema_json=json.dumps(grown.to_dict())),
                                    execution_options={"preserve_rowcount": True})
                if done.rowcount != 1:
                    continue  # extended meanwhile by another replica: start over from theirs
                self._embed_rows(conn, merchant, category, coordinate_map(stored, grown), grown.dim)
                return grown.to_dict()
            time.sleep(0.005 * (attempt + 1))
        raise RuntimeError(f"bandit_schemas {merchant}/{category}: gave up after {self.max_retries} concurrent extensions")

    def _embed_rows(self, conn, merchant: str, category: str, mapping, dim: int) -> None:
        c = bandit_state.c
        where = (c.merchant == merchant) & (c.category == category) & (c.policy == "linucb")
        q = sa.select(c.policy, c.arm, c.shapes, c.data, c.version).where(where)
        if conn.dialect.name != "sqlite":
            q = q.with_for_update()
        for r in conn.execute(q).all():
            shapes, data = encode_components(embed_components(decode_components(r.shapes, r.data), mapping, dim))
            conn.execute(bandit_state.update().where(where & (c.arm == r.arm)).values(
                shapes=shapes, data=data, version=r.version + 1, updated_at=time.time()))

    def load_schema(self, merchant: str, category: str) -> Optional[dict]:
        """The stored context schema of (merchant, category), None before its first impression."""
        key = (bandit_schemas.c.merchant == merchant) & (bandit_schemas.c.category == category)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(bandit_schemas.c.schema_json).where(key)).first()
        return None if row is None else json.loads(row[0])

    # -- state -----------------------------------------------------------------------------------
    def add_deltas(self, merchant: str, category: str, policy: str, deltas: Mapping[str, tuple]) -> None:
        """Add a replica's deltas ``{arm: components}`` to the stored sums, exactly once."""
        if not deltas:
            return
        items = sorted(deltas.items())  # a fixed lock order: no deadlock between replicas
        for attempt in range(self.max_retries):
            try:
                with self.engine.begin() as conn:
                    for arm, comps in items:
                        self._add_one(conn, merchant, category, policy, arm, comps)
                return
            except (ConcurrentUpdate, sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
                if attempt == self.max_retries - 1:
                    raise RuntimeError(f"bandit_state {merchant}/{category}/{policy}: gave up after "
                                       f"{self.max_retries} concurrent-update retries: {exc}") from exc
                time.sleep(0.005 * (attempt + 1))

    def _add_one(self, conn, merchant: str, category: str, policy: str, arm: str, comps: tuple) -> None:
        c = bandit_state.c
        key = (c.merchant == merchant) & (c.category == category) & (c.policy == policy) & (c.arm == arm)
        q = sa.select(c.shapes, c.data, c.version, c.events).where(key)
        if conn.dialect.name != "sqlite":
            q = q.with_for_update()
        row = conn.execute(q).first()
        now = time.time()
        if row is None:
            shapes, data = encode_components(comps)
            conn.execute(bandit_state.insert().values(
                merchant=merchant, category=category, policy=policy, arm=arm, shapes=shapes, data=data,
                events=1, version=1, updated_at=now))
            return
        old = decode_components(row.shapes, row.data)
        if len(old) != len(comps) or any(np.shape(o) != np.shape(d) for o, d in zip(old, comps)):
            raise ValueError(f"bandit_state {merchant}/{category}/{policy}/{arm}: stored shapes {row.shapes} "
                             f"do not fit the delta's {[list(np.shape(d)) for d in comps]}")
        shapes, data = encode_components(np.asarray(o, dtype=np.float64) + np.asarray(d, dtype=np.float64)
                                         for o, d in zip(old, comps))
        res = conn.execute(bandit_state.update().where(key & (c.version == row.version)).values(
            data=data, shapes=shapes, version=row.version + 1, events=row.events + 1, updated_at=now))
        if res.rowcount != 1:
            raise ConcurrentUpdate(f"{merchant}/{category}/{policy}/{arm} changed under us")

    def load_sums(self, merchant: str, category: str, policy: str) -> dict[str, tuple]:
        """The stored sums of every replica's deltas, ``{arm: components}`` (no prior)."""
        c = bandit_state.c
        q = sa.select(c.arm, c.shapes, c.data).where(
            (c.merchant == merchant) & (c.category == category) & (c.policy == policy))
        with self.engine.connect() as conn:
            return {r.arm: decode_components(r.shapes, r.data) for r in conn.execute(q)}

    # -- impressions and clicks --------------------------------------------------------------
    def log_impressions(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(impressions.insert(), rows)

    def insert_new_impressions(self, rows: list[dict]) -> list[bool]:
        """Insert each row unless its ``impression_id`` is stored; per row, True if it was new.

        One transaction that first takes the write lock (SQLite: a no-op write; MySQL: ``SELECT
        ... FOR UPDATE``, whose next-key locks also hold back inserts of the absent ids), so the
        ids found absent are still absent when the batch is inserted in one statement: exact
        under concurrent replicas, and a batch sent twice is new once."""
        if not rows:
            return []
        ids = [r["impression_id"] for r in rows]
        with self.engine.begin() as conn:
            sqlite_db = conn.dialect.name == "sqlite"
            if sqlite_db:
                conn.execute(impressions.update().where(sa.false()).values(ts=impressions.c.ts))
            have = set()
            for i in range(0, len(ids), 500):
                q = sa.select(impressions.c.impression_id).where(impressions.c.impression_id.in_(ids[i:i + 500]))
                if not sqlite_db:
                    q = q.with_for_update()
                have |= set(conn.execute(q).scalars())
            out, new_rows = [], []
            for row in rows:
                new = row["impression_id"] not in have
                have.add(row["impression_id"])
                out.append(new)
                if new:
                    new_rows.append(row)
            for i in range(0, len(new_rows), 2000):
                conn.execute(impressions.insert(), new_rows[i:i + 2000])
        return out

    def get_impressions(self, impression_ids: list[str]) -> dict[str, dict]:
        """The stored impressions of these ids (those not stored are left out)."""
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(impression_ids), 500):
                q = sa.select(impressions).where(impressions.c.impression_id.in_(impression_ids[i:i + 500]))
                out.update({r.impression_id: dict(r._mapping) for r in conn.execute(q)})
        return out

    def logged_impressions(self, since: Optional[float] = None, until: Optional[float] = None) -> list[dict]:
        """Themed hits with their click flag, for off-policy evaluation and rebuilding state."""
        i = impressions.c
        q = (sa.select(impressions, clicks.c.impression_id.isnot(None).label("clicked"))
             .select_from(impressions.outerjoin(clicks, clicks.c.impression_id == i.impression_id))
             .order_by(i.ts, i.impression_id))
        q = _in_window(q, i.ts, since, until)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def get_impression(self, impression_id: str) -> Optional[dict]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(impressions).where(impressions.c.impression_id == impression_id)).first()
        return dict(row._mapping) if row else None

    def record_click(self, impression_id: str, ts: Optional[float] = None) -> bool:
        """True if this is the impression's first click (only that one counts)."""
        row = {"impression_id": impression_id, "ts": time.time() if ts is None else ts}
        with self.engine.begin() as conn:
            name = conn.dialect.name
            if name == "sqlite":
                stmt = sqlite.insert(clicks).values(**row).on_conflict_do_nothing()
            elif name in ("mysql", "mariadb"):
                stmt = mysql.insert(clicks).values(**row).prefix_with("IGNORE")
            else:  # pragma: no cover - other dialects: plain insert, duplicate -> IntegrityError
                try:
                    with conn.begin_nested():
                        conn.execute(clicks.insert().values(**row))
                    return True
                except sa.exc.IntegrityError:
                    return False
            # mysql-connector reports -1 unless asked to keep the row count (SQLAlchemy 2.x)
            return conn.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount == 1

    def variant_counts_by_placement(self, since: Optional[float] = None, until: Optional[float] = None) -> list[dict]:
        """Impressions and clicks per (merchant, category, width, height, variant): the breakdowns
        of the A/B report."""
        i = impressions.c
        cols = (i.merchant, i.category, i.width, i.height, i.variant)
        q = (sa.select(*cols, sa.func.count().label("impressions"), sa.func.count(clicks.c.impression_id).label("clicks"))
             .select_from(impressions.outerjoin(clicks, clicks.c.impression_id == i.impression_id))
             .group_by(*cols).order_by(*cols))
        q = _in_window(q, i.ts, since, until)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def variant_counts(self, merchant: Optional[str] = None, since: Optional[float] = None) -> list[dict]:
        """Impressions and clicks per (merchant, variant): the A/B report's input."""
        i = impressions.c
        q = (sa.select(i.merchant, i.variant, sa.func.count().label("impressions"),
                       sa.func.count(clicks.c.impression_id).label("clicks"))
             .select_from(impressions.outerjoin(clicks, clicks.c.impression_id == i.impression_id))
             .group_by(i.merchant, i.variant).order_by(i.merchant, i.variant))
        if merchant is not None:
            q = q.where(i.merchant == merchant)
        q = _in_window(q, i.ts, since, None)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]
