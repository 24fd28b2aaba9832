"""Store array blobs uncompressed on PostgreSQL.

PostgreSQL tries to compress every large bytea value before storing it out of
line; float arrays do not compress, so each step paid for a futile
compression of megabytes. EXTERNAL storage keeps them out of line, uncompressed.
SQLite stores blobs as they are: nothing to do there.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (("sessions", "arrays"), ("idempotency_records", "params"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTENDED")
