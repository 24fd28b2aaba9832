"""Date the Idempotency-Key records, so that they can be forgotten by age; add the storage probe's row.

``idempotency_records.created_at`` is when the step it answers was applied;
records of older releases are dated at this upgrade. ``storage_probes`` holds one
row that ``/readyz`` rewrites to learn whether writes succeed again after they failed.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_records") as batch:
        batch.add_column(sa.Column("created_at", sa.DateTime, nullable=True))
    op.execute(sa.text("UPDATE idempotency_records SET created_at = CURRENT_TIMESTAMP"))
    with op.batch_alter_table("idempotency_records") as batch:
        batch.alter_column("created_at", existing_type=sa.DateTime, nullable=False)
        batch.create_index("records_by_age", ["created_at"])
    probes = op.create_table(
        "storage_probes",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("written_at", sa.DateTime, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.execute(probes.insert().values(id=1, written_at=sa.func.current_timestamp(), payload=b""))


def downgrade() -> None:
    op.drop_table("storage_probes")
    with op.batch_alter_table("idempotency_records") as batch:
        batch.drop_index("records_by_age")
        batch.drop_column("created_at")
