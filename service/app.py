"""The app factory. Nothing happens at import time; the store and the rest are built in the lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
from fastapi import FastAPI

from service.api import docs_pages, health, metrics, pages, problems, rounds, sessions, step_metrics, tenant
from service.api.authentication import Authentication
from service.api.dependencies import Service
from service.api.health import PROBE_THREADS
from service.api.hosts import AllowedHosts, allowed_hosts
from service.api.instrumentation import Instrumentation
from service.api.methods import Methods
from service.api.openapi import install_openapi
from service.api.request_ids import RequestIds
from service.api.round_events import RoundEvents
from service.api.tracing import trace_requests
from service.config import Settings
from service.errors import UnhandledErrors, install_error_handlers
from service.observability.metrics import StepMetrics
from service.observability.tracing import configured_tracing
from service.server.blas_threads import one_blas_thread
from service.server.memory import keep_large_allocations
from service.sessions.cache import OptimizerCache
from service.sessions.idempotency import Retention
from service.sessions.service import Sessions
from service.store import MetricsKept, SqlSessionStore, StoreSettings
from service.store.rate_limits import RateLimits
from service.store.round_notices import RoundNotices
from service.store.sqlite.round_wakeups import RoundWakeups
from service.store.tenants import Tenants
from service.tenancy.authentication import Authenticator
from service.tenancy.callers import Limits
from service.tenancy.startup import check_start, is_loopback, store_bootstrap_key
from service.wire.documents import Documents

log = logging.getLogger("service")
POSTGRES_ROUND_POLL_SECONDS = 5.0


def store_settings(settings: Settings) -> StoreSettings:
    return StoreSettings(
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_size=settings.pool_size,
        auto_migrate=settings.auto_migrate,
        array_files_min_bytes=settings.array_files_min_bytes,
        lock_timeout_seconds=settings.lock_timeout_seconds,
        write_timeout_seconds=settings.write_timeout_seconds,
        statement_timeout_seconds=settings.statement_timeout_seconds,
        pool_timeout_seconds=settings.pool_timeout_seconds,
    )


def retention(settings: Settings) -> Retention:
    return Retention(
        keys=settings.idempotency_keys_kept,
        response_bytes=settings.idempotency_response_bytes_kept,
        copy_max_bytes=settings.idempotency_response_copy_max_bytes,
        ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds),
        total_response_bytes=settings.idempotency_total_response_bytes,
    )


def default_limits(settings: Settings) -> Limits:
    return Limits(
        max_sessions=settings.tenant_max_sessions or None,
        max_bytes=settings.tenant_max_bytes or None,
        max_params=settings.session_max_params or None,
        requests_per_second=settings.tenant_requests_per_second or None,
        burst=settings.tenant_burst,
    )


def bootstrap_key(settings: Settings) -> str | None:
    """The bootstrap key from the setting, or else from its file."""
    if settings.bootstrap_key is not None:
        return settings.bootstrap_key.get_secret_value()
    if settings.bootstrap_key_file is not None:
        return settings.bootstrap_key_file.read_text().strip()
    return None


def prepare_tenancy(settings: Settings, tenants: Tenants) -> tuple[int, str]:
    """Store the bootstrap key, if any; then refuse to start if the server would serve anyone without a key
    (``InsecureStart``), or say how it will serve (a log level and line)."""
    token = bootstrap_key(settings)
    if token is not None:
        store_bootstrap_key(tenants, token, tenant=settings.bootstrap_tenant, admin=settings.bootstrap_admin)
    return check_start(host=settings.host, insecure_no_auth=settings.insecure_no_auth, tenants=tenants)


async def _forget_old_records(sessions: Sessions, every_seconds: float) -> None:
    """Forget Idempotency-Key records past their age and the total, every ``every_seconds``, for good."""
    while True:
        await anyio.sleep(every_seconds)
        try:
            await anyio.to_thread.run_sync(sessions.forget_old_records)
        except Exception:
            log.exception("forgetting old Idempotency-Key records failed; trying again later")


def _round_events(
    settings: Settings, store: SqlSessionStore, sessions: Sessions
) -> tuple[RoundEvents, RoundNotices | RoundWakeups | None]:
    """Where waiters for rounds hear of closes: this process's; on PostgreSQL every replica's, through
    LISTEN; on a SQLite file, the other server processes', through their wakeups. A waiter's own look is
    a safety net (on PostgreSQL, every 5 s at least)."""
    if store.engine.dialect.name != "sqlite":
        events = RoundEvents(poll_seconds=max(settings.round_poll_seconds, POSTGRES_ROUND_POLL_SECONDS))
        notices = RoundNotices(settings.database_url, events.closed)
        notices.start()
        sessions.on_round_closed = events.closed
        return events, notices
    events = RoundEvents(poll_seconds=settings.round_poll_seconds)
    sessions.on_round_closed = events.closed
    if store.sqlite_file is None or not RoundWakeups.available():
        return events, None
    wakeups = RoundWakeups(store.sqlite_file.with_name(store.sqlite_file.name + "-rounds"), events.closed)
    wakeups.attach(asyncio.get_running_loop())

    def closed(session_id: str, step: int) -> None:
        events.closed(session_id, step)
        wakeups.announce(session_id, step)

    sessions.on_round_closed = closed
    return events, wakeups


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.malloc_mmap_threshold_bytes:
            keep_large_allocations(settings.malloc_mmap_threshold_bytes)
        one_blas_thread()
        store = SqlSessionStore(settings.database_url, store_settings(settings))
        app.state.store = store
        tenants = Tenants(store)
        try:
            log.log(*prepare_tenancy(settings, tenants))
        except BaseException:
            store.close()
            raise
        rate_limits = RateLimits(store.engine)
        app.state.authenticator = Authenticator(
            tenants=tenants,
            rate_limits=rate_limits,
            defaults=default_limits(settings),
            keyless_allowed=is_loopback(settings.host) or settings.insecure_no_auth,
        )
        app.state.probe_limiter = anyio.CapacityLimiter(PROBE_THREADS)
        session_service = Sessions(
            store=store,
            cache=OptimizerCache(settings.cache_bytes),
            retention=retention(settings),
            metrics_kept=MetricsKept(recent=settings.metrics_recent_steps, every=settings.metrics_every),
            observer=StepMetrics(),
        )
        round_events, round_notices = _round_events(settings, store, session_service)
        round_events.bind(asyncio.get_running_loop())
        documents = Documents(processes=settings.json_workers, threshold_bytes=settings.json_worker_threshold_bytes)
        app.state.service = Service(
            sessions=session_service, documents=documents, settings=settings, round_events=round_events
        )
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(_forget_old_records, session_service, settings.idempotency_sweep_seconds)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            if round_notices is not None:
                round_notices.close()
            rate_limits.close()
            store.close()
            if tracing is not None:
                tracing.shutdown()

    app = FastAPI(
        title="optim-service",
        version="1",
        summary="torch.optim's optimizers with torch's exact numbers, kept on the server.",
        lifespan=lifespan,
        # Served by docs_pages.py from the package's own files, not from a CDN.
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry spans, metrics and logs, made whenever the process has a provider: off,
        # so that tracing follows OPTIM_OTEL and the OTEL_* variables alone (observability/tracing.py).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app, retry_after_seconds=settings.retry_after_seconds)
    # The last added is the outermost: every answer, problems included, gets the request's id.
    app.add_middleware(Methods)
    app.add_middleware(Authentication, retry_after_seconds=settings.retry_after_seconds)
    hosts = allowed_hosts(settings.allowed_hosts, bind_host=settings.host)
    if hosts is not None:
        app.add_middleware(AllowedHosts, hosts=hosts)
    app.add_middleware(UnhandledErrors)
    app.add_middleware(Instrumentation)
    tracing = configured_tracing(settings.otel)
    if tracing is not None:
        trace_requests(app, tracing)
    app.add_middleware(RequestIds)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(problems.router)
    app.include_router(sessions.router)
    app.include_router(rounds.router)
    app.include_router(step_metrics.router)
    app.include_router(tenant.router)
    app.include_router(pages.router)
    app.include_router(docs_pages.router)
    app.router.routes.insert(0, sessions.STEP_ROUTE)
    install_openapi(app)
    return app
