"""Each session's step metrics: one row per step, keyed by session and step, thinned as it ages."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_metrics",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.BigInteger, primary_key=True),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("step_metrics")
