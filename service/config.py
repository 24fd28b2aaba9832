"""Settings, read from the environment with the prefix ``OPTIM_``."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTIM_", extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        description="The address the server listens on (`optim-service serve --host` sets it). Requests without "
        "an API key are served only on a loopback address, and only while no key exists.",
    )
    insecure_no_auth: bool = Field(
        default=False,
        description="Serve requests without an API key on any address while no key exists. Anyone who can "
        "reach the port can then read, change and delete every session.",
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="Host names the server answers, comma-separated (`*.example.com` for subdomains, `*` for any "
        "host; ports do not matter); others get 421. Unset: localhost, 127.0.0.1 and [::1] on a loopback "
        "address, any host elsewhere (docs/deployment.md).",
    )
    bootstrap_key: SecretStr | None = Field(
        default=None,
        description="An API key (osk_..., from `optim-service keys generate`) stored on start if it is new: the "
        "first key of a deployment that has none, such as a container.",
    )
    bootstrap_key_file: Path | None = Field(
        default=None, description="A file holding the bootstrap key (a Docker or Kubernetes secret)."
    )
    bootstrap_tenant: str = Field(default="default", description="The tenant of the bootstrap key.")
    bootstrap_admin: bool = Field(default=False, description="Whether the bootstrap key is an admin key.")
    tenant_max_sessions: int = Field(
        default=1000, ge=0, description="Sessions a tenant may hold (0: no limit); `tenants set` overrides it."
    )
    tenant_max_bytes: int = Field(
        default=32 << 30,
        ge=0,
        description="Bytes of arrays (params and optimizer state) all of a tenant's sessions may hold (0: no limit).",
    )
    session_max_params: int = Field(
        default=1 << 28, ge=0, description="Params (array elements) one session may hold (0: no limit)."
    )
    tenant_requests_per_second: float = Field(
        default=1000.0, ge=0, description="Requests per second each API key may send on average (0: no limit)."
    )
    tenant_burst: int = Field(default=2000, ge=1, description="Requests an API key may send at once.")
    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATA_DIR / 'optim.sqlite3'}",
        description="SQLAlchemy URL: sqlite:///path (the default, under ./data) or postgresql+psycopg://...",
    )
    max_body_bytes: int = Field(
        default=1 << 30, gt=0, description="Larger request bodies are refused with 413 before they are read."
    )
    max_json_body_bytes: int = Field(
        default=64 << 20,
        gt=0,
        description="Larger JSON bodies are refused with 413 before they are read: decoded, JSON takes several "
        "times its size in memory. Send larger arrays as safetensors (up to max_body_bytes).",
    )
    idempotency_keys_kept: int = Field(
        default=1_000_000,
        gt=0,
        description="Idempotency-Key records a session keeps, of its newest versions (besides the time to live).",
    )
    idempotency_response_bytes_kept: int = Field(
        default=64 << 20,
        ge=0,
        description="Bytes of first responses kept per session for Idempotency-Key retries (the newest is always "
        "kept); a retry of an older key gets 409.",
    )
    idempotency_response_copy_max_bytes: int = Field(
        default=1 << 20,
        ge=0,
        description="A step's response of larger params is not copied for Idempotency-Key retries: a retry is "
        "answered from the session while no other step has changed it, else 409.",
    )
    metrics_recent_steps: int = Field(
        default=1000,
        gt=0,
        description="A session's step metrics history keeps every one of its last this many steps...",
    )
    metrics_every: int = Field(
        default=100,
        gt=0,
        description="...and every this-many-th step before them: a million-step run keeps about 11,000 rows.",
    )
    round_wait_seconds: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="How long a contribution to a synchronous round, or a poll of one, waits for it to close "
        "before it is answered 202.",
    )
    round_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a waiter reads its round itself: a safety net beside the closes it is told of "
        "(on PostgreSQL, 5 s at least).",
    )
    cache_bytes: int = Field(
        default=1 << 30, ge=0, description="Memory for optimizers kept between requests (validated against storage)."
    )
    auto_migrate: bool = Field(
        default=True, description="Upgrade an older database schema on start; if false, refuse to start."
    )
    pool_size: int = Field(default=10, gt=0, description="Database connections kept per process (and as many more).")
    json_workers: int = Field(
        default=2, ge=0, description="Processes that decode and encode large JSON bodies; 0 does it in-thread."
    )
    json_worker_threshold_bytes: int = Field(
        default=1 << 20, ge=0, description="JSON bodies (and responses' arrays) larger than this use the workers."
    )
    array_files_min_bytes: int = Field(
        default=256 << 10,
        ge=0,
        description="On SQLite, a session's arrays of at least this size live in files beside the database.",
    )
    malloc_mmap_threshold_bytes: int = Field(
        default=1 << 30,
        ge=0,
        le=(1 << 31) - 1,
        description="Buffers below this size reuse the process's memory (glibc malloc; see service/memory.py); 0 "
        "leaves malloc as it is.",
    )
    sqlite_synchronous: str = Field(
        default="FULL", pattern="^(FULL|EXTRA|NORMAL)$", description="SQLite's synchronous pragma (WAL mode)."
    )
    idempotency_key_ttl_seconds: float = Field(
        default=24 * 3600, gt=0, description="Idempotency-Key records older than this are forgotten (with the keys)."
    )
    idempotency_total_response_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="Bytes of first responses kept for Idempotency-Key retries over all sessions together; the "
        "oldest are dropped first (their keys stay).",
    )
    idempotency_sweep_seconds: float = Field(
        default=60.0, gt=0, description="How often records past their age or the total are forgotten."
    )
    lock_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Longest wait for a session another request holds; then 503."
    )
    write_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for SQLite's write lock or a place in a write transaction; then 503.",
    )
    statement_timeout_seconds: float = Field(
        default=30.0, gt=0, description="PostgreSQL's statement_timeout for every statement; then 503."
    )
    pool_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait for a free database connection; then 503."
    )
    ready_timeout_seconds: float = Field(
        default=2.0, gt=0, description="/readyz answers 503 if its storage probe takes longer."
    )
    retry_after_seconds: int = Field(
        default=1, ge=0, description="Retry-After of the 503 and 507 answers to storage failures."
    )
    keep_alive_timeout_seconds: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A connection that has not sent a whole request head this long after it opened (or after its "
        "last response) is closed.",
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A request whose body stops arriving for this long is closed."
    )
    max_connections: int = Field(
        default=1000,
        gt=0,
        description="Connections one server process holds; past it, the idlest are closed to make room, and "
        "only when none is idle is a new one refused. Kept below the process's open-file limit.",
    )
    graceful_shutdown_seconds: float = Field(
        default=10.0, gt=0, description="On SIGTERM, requests in flight get this long; then the process is killed."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="The log's format: `text` (gunicorn's, and the request's id) or `json` (one object a line).",
    )
    otel: bool = Field(
        default=False,
        description="Trace requests with OpenTelemetry (needs the `otel` extra); the standard OTEL_* variables "
        "configure the exporter, and turn tracing on too.",
    )
