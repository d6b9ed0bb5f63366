"""initial schema: products, masks, generated_images, misses

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("merchant", sa.String(64), primary_key=True),
        sa.Column("product_id", sa.String(128), primary_key=True),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("subcategory", sa.String(128), nullable=False),
        sa.Column("colour", sa.String(64), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("image_uri", sa.String(1024), nullable=False),
        sa.Column("image_hash", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_products_category", "products", ["category"])
    op.create_table(
        "masks",
        sa.Column("image_hash", sa.String(64), primary_key=True),
        sa.Column("masker_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("mask_key", sa.String(255), nullable=True),
        sa.Column("cutout_key", sa.String(255), nullable=True),
        sa.Column("bbox", sa.String(64), nullable=True),
        sa.Column("image_size", sa.String(32), nullable=True),
        sa.Column("coverage", sa.Double, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "generated_images",
        sa.Column("image_key", sa.String(255), primary_key=True),
        sa.Column("merchant", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("product_id", sa.String(128), nullable=False),
        sa.Column("bucket_id", sa.String(64), nullable=False),
        sa.Column("prompt_id", sa.String(64), nullable=False),
        sa.Column("generator_id", sa.String(255), nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_generated_partition", "generated_images", ["merchant", "category"])
    op.create_table(
        "misses",
        sa.Column("request_key", sa.String(64), primary_key=True),
        sa.Column("merchant", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("product_id", sa.String(128), nullable=False),
        sa.Column("bucket_id", sa.String(64), nullable=False),
        sa.Column("prompt_id", sa.String(64), nullable=False),
        sa.Column("first_requested_at", sa.Double, nullable=False),
        sa.Column("last_requested_at", sa.Double, nullable=False),
        sa.Column("request_count", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("ix_misses_last_requested_at", "misses", ["last_requested_at"])


def downgrade() -> None:
    for table in ("misses", "generated_images", "masks", "products"):
        op.drop_table(table)
