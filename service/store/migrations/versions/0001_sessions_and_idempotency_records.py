"""Sessions, with their arrays as one blob, and the responses kept for Idempotency-Key retries.

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
        "sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("optimizer", sa.String(32), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("param_groups", sa.JSON, nullable=False),
        sa.Column("shapes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("arrays", sa.LargeBinary, nullable=False),
    )
    op.create_index("sessions_by_creation", "sessions", ["created_at", "id"])
    op.create_table(
        "idempotency_records",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("params", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("session_id", "key", name="one_record_per_key"),
    )
    op.create_index("records_by_session", "idempotency_records", ["session_id", "seq"])


def downgrade() -> None:
    op.drop_table("idempotency_records")
    op.drop_table("sessions")
