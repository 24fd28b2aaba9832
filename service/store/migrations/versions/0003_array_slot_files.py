"""Let a session's arrays live in a slot file beside a SQLite database.

``arrays_slot`` names the slot file (0 or 1) holding the session's arrays, or is
NULL when they are in the ``arrays`` column, as they always are on PostgreSQL.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("arrays_slot", sa.SmallInteger, nullable=True))


def downgrade() -> None:
    in_files = op.get_bind().execute(sa.text("SELECT count(*) FROM sessions WHERE arrays_slot IS NOT NULL"))
    if in_files.scalar_one():
        raise RuntimeError("some sessions keep their arrays in slot files, which this revision cannot read")
    op.drop_column("sessions", "arrays_slot")
