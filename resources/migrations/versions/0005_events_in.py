"""impressions.propensity and impressions.source (events from an ad server, off-policy evaluation);
misses.distinct_users

Revision ID: 0005
Revises: 0004

``propensity``: the probability with which the logging policy chose the impression's theme (NULL
for rows logged before 0005 and for untracked variants). ``source``: ``served`` (this API),
``posted`` (POST /events) or ``imported`` (the ad_events asset). ``misses.distinct_users``: the users behind a miss's
requests (counted per serving replica). Mirrors resources/bandit_store.py and metadata_db.py.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    cols = {c["name"] for c in sa.inspect(bind).get_columns("impressions")}
    with op.batch_alter_table("impressions") as batch:
        if "propensity" not in cols:
            batch.add_column(sa.Column("propensity", sa.Double, nullable=True))
        if "source" not in cols:
            batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="served"))

    mcols = {c["name"] for c in sa.inspect(bind).get_columns("misses")}
    if "distinct_users" not in mcols:
        with op.batch_alter_table("misses") as batch:
            batch.add_column(sa.Column("distinct_users", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("misses") as batch:
        batch.drop_column("distinct_users")
    with op.batch_alter_table("impressions") as batch:
        batch.drop_column("source")
        batch.drop_column("propensity")
