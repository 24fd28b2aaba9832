"""An index on each session's Idempotency-Key records by version.

A session keeps the records of its newest versions (up to a million by default, for at
least a day at ordinary step rates); trimming the one that falls out of that window is a
range on this index rather than a count over all of them.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("records_by_version", "idempotency_records", ["session_id", "version"])


def downgrade() -> None:
    op.drop_index("records_by_version", table_name="idempotency_records")
