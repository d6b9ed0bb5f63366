"""miss queue claims: claimed_by / claimed_at, so concurrent consumers never take the same miss

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("misses") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(96), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.Double, nullable=True))
        batch.create_index("ix_misses_status_last", ["status", "last_requested_at"])


def downgrade() -> None:
    with op.batch_alter_table("misses") as batch:
        batch.drop_index("ix_misses_status_last")
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
