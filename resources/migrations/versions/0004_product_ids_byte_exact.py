"""product ids compare byte-exact on MySQL/MariaDB; the products table stores any Unicode title

Revision ID: 0004
Revises: 0003

A case-insensitive collation (MySQL's default) made `ABC` and `abc` one primary key: the second
row overwrote the first. A latin1 server default made a product with a title outside latin1 fail
its partition's upsert. Now: products is utf8mb4, and every product_id column is
`utf8mb4_bin` (byte-exact; the feed only admits ASCII ids, the API serves the same rule).
SQLite compares with BINARY already: nothing to do there.
Mirrors resources/metadata_db.py (PRODUCT_ID); tests/test_mysql_db.py compares the two.
Written out here, not imported: a released revision never changes with the code.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("products", "generated_images", "misses")


def upgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    op.execute("ALTER TABLE products CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} MODIFY product_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin "
                   "NOT NULL")


def downgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} MODIFY product_id VARCHAR(128) NOT NULL")
