"""The app factory. Nothing happens at import time; the store and the rest are built in the lifespan."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
from fastapi import FastAPI

from service.api import health, sessions
from service.api.dependencies import Service
from service.api.health import PROBE_THREADS
from service.api.openapi import install_openapi
from service.api.schemas import CreateSessionRequest, PatchSessionRequest, StateDict, StepRequest
from service.config import Settings
from service.errors import UnhandledErrors, install_error_handlers
from service.server.memory import keep_large_allocations
from service.sessions.cache import OptimizerCache
from service.sessions.idempotency import Retention
from service.sessions.service import Sessions
from service.store import SqlSessionStore, StoreSettings
from service.wire.documents import Documents

REQUEST_MODELS = (CreateSessionRequest, PatchSessionRequest, StepRequest, StateDict)
log = logging.getLogger("service")


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


async def _forget_old_records(sessions: Sessions, every_seconds: float) -> None:
    """Forget Idempotency-Key records past their age and the total, every ``every_seconds``, for good."""
    while True:
        await anyio.sleep(every_seconds)
        try:
            await anyio.to_thread.run_sync(sessions.forget_old_records)
        except Exception:
            log.exception("forgetting old Idempotency-Key records failed; trying again later")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.malloc_mmap_threshold_bytes:
            keep_large_allocations(settings.malloc_mmap_threshold_bytes)
        store = SqlSessionStore(settings.database_url, store_settings(settings))
        app.state.store = store
        app.state.probe_limiter = anyio.CapacityLimiter(PROBE_THREADS)
        session_service = Sessions(
            store=store, cache=OptimizerCache(settings.cache_bytes), retention=retention(settings)
        )
        documents = Documents(processes=settings.json_workers, threshold_bytes=settings.json_worker_threshold_bytes)
        app.state.service = Service(sessions=session_service, documents=documents, settings=settings)
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(_forget_old_records, session_service, settings.idempotency_sweep_seconds)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            store.close()

    app = FastAPI(
        title="optim-service",
        version="1",
        summary="torch.optim's optimizers with torch's exact numbers, kept on the server.",
        lifespan=lifespan,
    )
    install_error_handlers(app, retry_after_seconds=settings.retry_after_seconds)
    app.add_middleware(UnhandledErrors)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.router.routes.insert(0, sessions.STEP_ROUTE)
    install_openapi(app, REQUEST_MODELS)
    return app
