"""Liveness and readiness."""

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.errors import StorageUnavailable
from service.media import JSON

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


@router.get("/readyz", summary="Readiness: storage answers", responses={503: {"description": "storage is down"}})
async def readyz(request: Request) -> Response:
    try:
        await run_in_threadpool(request.app.state.store.ping)
    except Exception as error:
        raise StorageUnavailable(f"storage did not answer: {type(error).__name__}") from None
    return Response(b'{"status":"ready"}', media_type=JSON)
