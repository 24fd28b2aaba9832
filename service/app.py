"""The app factory. Nothing happens at import time; the store is opened in the lifespan."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.cache import OptimizerCache
from service.config import Settings
from service.errors import install_error_handlers
from service.json_workers import JsonWorkers
from service.memory import keep_large_allocations
from service.routes import health, sessions
from service.routes.deps import Service, Wire
from service.routes.step_shortcut import StepShortcut
from service.schemas import CreateSessionRequest, PatchSessionRequest, StateDict, StepRequest
from service.sessions import Sessions
from service.store import SqlSessionStore

REQUEST_MODELS = (CreateSessionRequest, PatchSessionRequest, StepRequest, StateDict)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.malloc_mmap_threshold_bytes:
            keep_large_allocations(settings.malloc_mmap_threshold_bytes)
        store = SqlSessionStore(
            settings.database_url,
            idempotency_keys_kept=settings.idempotency_keys_kept,
            idempotency_response_bytes_kept=settings.idempotency_response_bytes_kept,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_size=settings.pool_size,
            auto_migrate=settings.auto_migrate,
            array_files_min_bytes=settings.array_files_min_bytes,
        )
        json_workers = JsonWorkers(
            processes=settings.json_workers,
            threshold_bytes=settings.json_worker_threshold_bytes,
            malloc_mmap_threshold_bytes=settings.malloc_mmap_threshold_bytes,
        )
        app.state.store = store
        app.state.service = Service(
            sessions=Sessions(
                store=store,
                cache=OptimizerCache(settings.cache_bytes),
                idempotency_response_copy_max_bytes=settings.idempotency_response_copy_max_bytes,
            ),
            wire=Wire(json_workers),
            settings=settings,
        )
        try:
            yield
        finally:
            json_workers.close()
            store.close()

    app = FastAPI(
        title="optim-service",
        version="1",
        summary="Rprop and RMSprop with torch.optim's exact numbers, kept on the server.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(StepShortcut, exception_handlers=app.exception_handlers)
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
