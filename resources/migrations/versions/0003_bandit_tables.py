"""bandit state, context schemas, impressions, clicks (tables declared in resources/bandit_store.py)

Revision ID: 0003
Revises: 0002

Under migration control so that every replica starts on a complete schema, made once under the
migration lock (BanditStore's own create_all is then a no-op; racing create_alls from several
threads or processes failed with "Table 'clicks' already exists" on MySQL).
Mirrors resources/bandit_store.py; tests/resources/test_mysql_db.py compares the two. Times are DOUBLE here
although bandit_store.py declares sa.Float: on MySQL, Float renders as FLOAT (single precision:
epoch seconds rounded to ~2 minutes) unless dagster._core.storage.sql has been imported, which
globally compiles Float as DOUBLE. A migration must not depend on import order, so DOUBLE it is.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    # a DB where BanditStore already made them (create_all before this revision): adopt them
    if "bandit_schemas" not in existing:
        op.create_table(
            "bandit_schemas",
            sa.Column("merchant", sa.String(64), primary_key=True),
            sa.Column("category", sa.String(64), primary_key=True),
            sa.Column("schema_json", sa.Text, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
        )
    if "bandit_state" not in existing:
        op.create_table(
            "bandit_state",
            sa.Column("merchant", sa.String(64), primary_key=True),
            sa.Column("category", sa.String(64), primary_key=True),
            sa.Column("policy", sa.String(16), primary_key=True),
            sa.Column("arm", sa.String(64), primary_key=True),
            sa.Column("shapes", sa.String(64), nullable=False),
            sa.Column("data", _BLOB, nullable=False),
            sa.Column("events", sa.BigInteger, nullable=False),
            sa.Column("version", sa.BigInteger, nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
        )
    if "impressions" not in existing:
        op.create_table(
            "impressions",
            sa.Column("impression_id", sa.String(32), primary_key=True),
            sa.Column("ts", sa.Double, nullable=False),
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
            sa.Column("user_hash", sa.String(16), nullable=False),
            sa.Column("context", sa.Text, nullable=False),
        )
        op.create_index("ix_impressions_ts", "impressions", ["ts"])
        op.create_index("ix_impressions_merchant_variant", "impressions", ["merchant", "variant"])
    if "clicks" not in existing:
        op.create_table(
            "clicks",
            sa.Column("impression_id", sa.String(32), primary_key=True),
            sa.Column("ts", sa.Double, nullable=False),
        )


def downgrade() -> None:
    for table in ("clicks", "impressions", "bandit_state", "bandit_schemas"):
        op.drop_table(table)
