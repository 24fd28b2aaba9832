"""Liveness and readiness."""

import anyio
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.openapi import answers, problems
from service.api.schemas import Status
from service.errors import StorageNotAnswering
from service.sessions.readiness import check_readiness
from service.wire.media_types import JSON

router = APIRouter(tags=["health"])
PROBE_THREADS = 2
"""Threads readiness probes may occupy at once, apart from the requests' own: a probe stuck on storage
must not take a request's thread, nor may stuck probes pile up."""


@router.get("/healthz", summary="Liveness: the process answers", operation_id="healthz", responses=answers(Status))
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


@router.get(
    "/readyz",
    summary="Readiness: storage answers reads, and takes writes if the last one failed",
    operation_id="readyz",
    responses={**answers(Status), **problems(503)},
)
async def readyz(request: Request) -> Response:
    store, settings = request.app.state.store, request.app.state.service.settings
    limiter: anyio.CapacityLimiter = request.app.state.probe_limiter
    timeout = settings.ready_timeout_seconds
    with anyio.move_on_after(timeout) as scope:
        problem = await anyio.to_thread.run_sync(
            lambda: check_readiness(store, timeout=timeout), limiter=limiter, abandon_on_cancel=True
        )
    if scope.cancelled_caught:
        problem = f"the storage probe did not finish within {timeout:g} s"
    if problem is not None:
        raise StorageNotAnswering(f"not ready: {problem}", headers={"Retry-After": str(settings.retry_after_seconds)})
    return Response(b'{"status":"ready"}', media_type=JSON)
