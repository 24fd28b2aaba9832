"""Data-parallel sessions: each session's aggregation settings, the contributions to open rounds, and closed rounds."""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("aggregation", sa.JSON, nullable=True))
    op.create_table(
        "round_contributions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.BigInteger, primary_key=True),
        sa.Column("worker", sa.String(64), primary_key=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("loss", sa.Float, nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("grads", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "rounds",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.BigInteger, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("opened_at", sa.DateTime, nullable=False),
        sa.Column("closed_at", sa.DateTime, nullable=False),
        sa.Column("contributors", sa.JSON, nullable=False),
        sa.Column("params", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rounds")
    op.drop_table("round_contributions")
    op.drop_column("sessions", "aggregation")
