"""The tables as the queries see them; migrations/ creates them, and a test checks the two agree."""

import sqlalchemy as sa

DEFAULT_TENANT = "default"
"""The tenant of requests served without a key (on loopback, before any key exists), and of the
sessions made before tenants existed."""

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions",
    metadata,
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
    sa.Column("arrays_slot", sa.SmallInteger, nullable=True),
    sa.Column("tenant", sa.String(64), nullable=False, server_default=DEFAULT_TENANT),
    sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("aggregation", sa.JSON, nullable=True),
    sa.Column("clip_grad_norm", sa.JSON, nullable=True),
    sa.Column("nonfinite", sa.String(16), nullable=False, server_default="reject"),
    sa.Index("sessions_by_creation", "created_at", "id"),
    sa.Index("sessions_by_tenant", "tenant", "created_at", "id"),
)

idempotency_records = sa.Table(
    "idempotency_records",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("params", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("session_id", "key", name="one_record_per_key"),
    sa.Index("records_by_session", "session_id", "seq"),
    sa.Index("records_by_version", "session_id", "version"),
    sa.Index("records_by_age", "created_at"),
)

creation_records = sa.Table(
    "creation_records",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("creations_by_age", "created_at"),
)
"""The session each Idempotency-Key of a creation made, per tenant."""

step_metrics = sa.Table(
    "step_metrics",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("recorded_at", sa.DateTime, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    # On SQLite, one B-tree keyed by (session, step), not a rowid table beside an index of the key: one
    # page less for every step's commit to write.
    sqlite_with_rowid=False,
)
"""Each session's step telemetry, one row per step, thinned as it ages (``step_metrics.py``); ``metrics`` is
the step's JSON object (its norms, learning rates, the algorithm's own measures and the client's loss)."""

round_contributions = sa.Table(
    "round_contributions",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("worker", sa.String(64), primary_key=True),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("loss", sa.Float, nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("grads", sa.LargeBinary, nullable=False),
)
"""The contributions to each synchronous session's open round (its current ``step``), until the round closes;
``grads`` is a packed blob of the gradients, cast to the params' dtype."""

rounds = sa.Table(
    "rounds",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("opened_at", sa.DateTime, nullable=False),
    sa.Column("closed_at", sa.DateTime, nullable=False),
    sa.Column("contributors", sa.JSON, nullable=False),
    sa.Column("params", sa.LargeBinary, nullable=False),
)
"""Each synchronous session's closed rounds, newest kept: who contributed (worker, weight, request hash), the
version the round made, and a copy of its answer's params (empty when not copied, or no longer kept)."""

storage_probes = sa.Table(
    "storage_probes",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("written_at", sa.DateTime, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)

tenants = sa.Table(
    "tenants",
    metadata,
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
"""A tenant's overrides of the default quotas (NULL: the setting's), and its usage, kept with every write
that changes it."""

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("last_used_at", sa.DateTime, nullable=True),
    sa.Column("revoked_at", sa.DateTime, nullable=True),
    sa.Index("keys_by_tenant", "tenant"),
)
"""API keys: the public id, and only the SHA-256 of the secret."""

rate_limit_metadata = sa.MetaData()
rate_limits = sa.Table(
    "rate_limits",
    rate_limit_metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("tat", sa.Float, nullable=False),
)
"""Each key's token bucket as GCRA's theoretical arrival time (seconds since the epoch). Not durable on
purpose: PostgreSQL keeps it UNLOGGED, SQLite in an unsynced file of its own (``rate_limits.py``)."""
