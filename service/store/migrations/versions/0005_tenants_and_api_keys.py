"""Tenants, API keys, creation records, and each session's tenant and stored bytes.

Sessions made before tenants existed belong to the tenant ``default``, the one
requests without a key are served as; its usage row counts them. A session's
``stored_bytes`` is the bytes of its arrays (params and optimizer state), read here
from each blob's safetensors header, in its row or in its slot file. PostgreSQL
also gets the rate limits' table, UNLOGGED: a token bucket need not survive a crash.

Revision ID: 0005
Revises: 0004
"""

import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT_TENANT = "default"
HEADER_LENGTH_BYTES = 8


def _tensor_bytes(head: bytes) -> int:
    """The bytes of the tensors a safetensors file holds, from its first bytes (its header)."""
    if len(head) < HEADER_LENGTH_BYTES:
        return 0
    length = int.from_bytes(head[:HEADER_LENGTH_BYTES], "little")
    header = json.loads(head[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    return sum(
        int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
        for name, entry in header.items()
        if name != "__metadata__"
    )


def _row_head(connection: sa.Connection, session_id: str) -> bytes:
    """The header of the blob in a session's row, without reading its arrays."""

    def first(count: int) -> bytes:
        query = sa.text("SELECT substr(arrays, 1, :count) FROM sessions WHERE id = :id")
        return bytes(connection.execute(query, {"count": count, "id": session_id}).scalar_one() or b"")

    start = first(HEADER_LENGTH_BYTES)
    if len(start) < HEADER_LENGTH_BYTES:
        return b""
    return first(HEADER_LENGTH_BYTES + int.from_bytes(start, "little"))


def _slot_file_head(connection: sa.Connection, session_id: str, slot: int) -> bytes:
    database = connection.engine.url.database
    if not database:
        return b""
    path = Path(database).with_name(Path(database).name + "-arrays") / f"{session_id}.{slot}"
    try:
        with path.open("rb") as file:
            length = int.from_bytes(file.read(HEADER_LENGTH_BYTES), "little")
            file.seek(0)
            return file.read(HEADER_LENGTH_BYTES + length)
    except OSError:
        return b""


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default=DEFAULT_TENANT))
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"))
        batch.create_index("sessions_by_tenant", ["tenant", "created_at", "id"])
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, arrays_slot FROM sessions")).all()
    total = 0
    for row in rows:
        head = (
            _row_head(connection, row.id)
            if row.arrays_slot is None
            else _slot_file_head(connection, row.id, row.arrays_slot)
        )
        stored = _tensor_bytes(head)
        total += stored
        connection.execute(
            sa.text("UPDATE sessions SET stored_bytes = :stored WHERE id = :id"), {"stored": stored, "id": row.id}
        )
    tenants = op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("max_sessions", sa.BigInteger, nullable=True),
        sa.Column("max_bytes", sa.BigInteger, nullable=True),
        sa.Column("max_params", sa.BigInteger, nullable=True),
        sa.Column("requests_per_second", sa.Float, nullable=True),
        sa.Column("burst", sa.BigInteger, nullable=True),
        sa.Column("sessions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute(
        tenants.insert().values(
            name=DEFAULT_TENANT,
            created_at=datetime.now(UTC).replace(tzinfo=None),
            sessions=len(rows),
            stored_bytes=total,
        )
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("last_used_at", sa.DateTime, nullable=True),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
    )
    op.create_index("keys_by_tenant", "api_keys", ["tenant"])
    op.create_table(
        "creation_records",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("creations_by_age", "creation_records", ["created_at"])
    if connection.dialect.name == "postgresql":
        op.execute("CREATE UNLOGGED TABLE rate_limits (key_id VARCHAR(64) PRIMARY KEY, tat FLOAT NOT NULL)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_table("rate_limits")
    op.drop_table("creation_records")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("sessions_by_tenant")
        batch.drop_column("stored_bytes")
        batch.drop_column("tenant")
