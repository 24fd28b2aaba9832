"""The app factory. Nothing happens at import time; the store is opened in the lifespan."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.cache import OptimizerCache
from service.config import Settings
from service.errors import UnhandledErrors, install_error_handlers
from service.json_workers import JsonWorkers
from service.memory import keep_large_allocations
from service.routes import health, sessions
from service.routes.deps import Service, Wire
from service.routes.health import PROBE_THREADS
from service.routes.step_shortcut import StepShortcut
from service.schemas import CreateSessionRequest, PatchSessionRequest, StateDict, StepRequest
from service.sessions import Sessions
from service.store import SqlSessionStore, StoreSettings

REQUEST_MODELS = (CreateSessionRequest, PatchSessionRequest, StepRequest, StateDict)
log = logging.getLogger("service")


def store_settings(settings: Settings) -> StoreSettings:
    return StoreSettings(
        idempotency_keys_kept=settings.idempotency_keys_kept,
        idempotency_response_bytes_kept=settings.idempotency_response_bytes_kept,
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_size=settings.pool_size,
        auto_migrate=settings.auto_migrate,
        array_files_min_bytes=settings.array_files_min_bytes,
        lock_timeout_seconds=settings.lock_timeout_seconds,
        write_timeout_seconds=settings.write_timeout_seconds,
        statement_timeout_seconds=settings.statement_timeout_seconds,
        pool_timeout_seconds=settings.pool_timeout_seconds,
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
        json_workers = JsonWorkers(
            processes=settings.json_workers,
            threshold_bytes=settings.json_worker_threshold_bytes,
            malloc_mmap_threshold_bytes=settings.malloc_mmap_threshold_bytes,
        )
        app.state.store = store
        app.state.probe_limiter = anyio.CapacityLimiter(PROBE_THREADS)
        session_service = Sessions(
            store=store,
            cache=OptimizerCache(settings.cache_bytes),
            idempotency_response_copy_max_bytes=settings.idempotency_response_copy_max_bytes,
            idempotency_key_ttl_seconds=settings.idempotency_key_ttl_seconds,
            idempotency_total_response_bytes=settings.idempotency_total_response_bytes,
        )
        app.state.service = Service(sessions=session_service, wire=Wire(json_workers), settings=settings)
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(_forget_old_records, session_service, settings.idempotency_sweep_seconds)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            json_workers.close()
            store.close()

    app = FastAPI(
        title="optim-service",
        version="1",
        summary="Rprop and RMSprop with torch.optim's exact numbers, kept on the server.",
        lifespan=lifespan,
    )
    install_error_handlers(app, retry_after_seconds=settings.retry_after_seconds)
    app.add_middleware(StepShortcut, exception_handlers=app.exception_handlers)
    app.add_middleware(UnhandledErrors)
    app.include_router(health.router)
    app.include_router(sessions.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
