"""/v1/sessions: create, read, change, step and snapshot optimizer sessions.

Handlers read the body on the event loop, then parse, compute, store and encode
in a worker thread, so a large step never stalls other requests.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.codecs import JSON, arrays_from_json, parse_json_object
from service.routes.deps import (
    SessionsDep,
    SettingsDep,
    hash_request,
    json_body_schema,
    json_response,
    parse,
    read_body,
    summary,
)
from service.schemas import (
    Checkpoint,
    CreateSessionRequest,
    PatchSessionRequest,
    SessionPage,
    SessionSummary,
    SessionWithParams,
    StateDict,
    StepRequest,
    StepResponse,
)

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

IfMatch = Annotated[str | None, Header(description="Apply only if the session's ETag is one of these.")]
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=255, description="Retries with the same key and body return the first response."),
]
PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, **PROBLEM}
    for status, text in {
        400: "malformed JSON",
        404: "no such session",
        413: "body too large",
        415: "body is not JSON",
        422: "invalid request",
    }.items()
}


@router.post(
    "",
    status_code=201,
    summary="Create a session (also from a checkpoint)",
    openapi_extra=json_body_schema(CreateSessionRequest),
    responses={201: {"model": SessionWithParams}, **ERRORS},
)
async def create_session(request: Request, sessions: SessionsDep, settings: SettingsDep) -> Response:
    body = await read_body(request, settings.max_body_bytes)

    def run() -> Response:
        meta, params = sessions.create(request=parse(CreateSessionRequest, body))
        return json_response(
            {**summary(meta), "params": params},
            status=201,
            version=meta.version,
            Location=f"/v1/sessions/{meta.id}",
        )

    return await run_in_threadpool(run)


@router.get("", summary="List sessions, oldest first", responses={200: {"model": SessionPage}, **ERRORS})
async def list_sessions(
    sessions: SessionsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    metas, next_cursor = await run_in_threadpool(lambda: sessions.page(limit=limit, cursor=cursor))
    return json_response({"items": [summary(meta) for meta in metas], "next_cursor": next_cursor})


@router.get("/{session_id}", summary="A session's summary", responses={200: {"model": SessionSummary}, **ERRORS})
async def get_session(session_id: str, sessions: SessionsDep) -> Response:
    meta = await run_in_threadpool(lambda: sessions.summary(session_id=session_id))
    return json_response(summary(meta), version=meta.version)


@router.patch(
    "/{session_id}",
    summary="Change hyperparameters between steps",
    openapi_extra=json_body_schema(PatchSessionRequest),
    responses={200: {"model": SessionSummary}, 412: {"description": "If-Match failed", **PROBLEM}, **ERRORS},
)
async def patch_session(
    session_id: str, request: Request, sessions: SessionsDep, settings: SettingsDep, if_match: IfMatch = None
) -> Response:
    body = await read_body(request, settings.max_body_bytes)

    def run() -> Response:
        meta = sessions.patch(session_id=session_id, request=parse(PatchSessionRequest, body), if_match=if_match)
        return json_response(summary(meta), version=meta.version)

    return await run_in_threadpool(run)


@router.delete(
    "/{session_id}",
    status_code=204,
    summary="Delete a session",
    responses={412: {"description": "If-Match failed", **PROBLEM}, **ERRORS},
)
async def delete_session(session_id: str, sessions: SessionsDep, if_match: IfMatch = None) -> Response:
    await run_in_threadpool(lambda: sessions.delete(session_id=session_id, if_match=if_match))
    return Response(status_code=204)


@router.post(
    "/{session_id}/step",
    summary="Apply one step of gradients",
    openapi_extra=json_body_schema(StepRequest),
    responses={200: {"model": StepResponse}, 412: {"description": "If-Match failed", **PROBLEM}, **ERRORS},
)
async def step_session(
    session_id: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    body = await read_body(request, settings.max_body_bytes)

    def run() -> Response:
        step_request = parse(StepRequest, body)
        outcome = sessions.step(
            session_id=session_id,
            grads=arrays_from_json(step_request.grads, loc=("body", "grads")),
            request_hash=hash_request(JSON, body),
            idempotency_key=idempotency_key,
            if_match=if_match,
        )
        return json_response({"step": outcome.step, "params": outcome.params}, version=outcome.version)

    return await run_in_threadpool(run)


@router.get("/{session_id}/params", summary="Current params", responses={200: {"model": StepResponse}, **ERRORS})
async def get_params(session_id: str, sessions: SessionsDep) -> Response:
    def run() -> Response:
        meta, params = sessions.params(session_id=session_id)
        return json_response({"step": meta.step, "params": params}, version=meta.version)

    return await run_in_threadpool(run)


@router.get(
    "/{session_id}/state_dict",
    summary="The optimizer state in torch's layout",
    responses={200: {"model": StateDict}, **ERRORS},
)
async def get_state_dict(session_id: str, sessions: SessionsDep) -> Response:
    def run() -> Response:
        meta, state_dict = sessions.state_dict(session_id=session_id)
        return json_response(state_dict, version=meta.version)

    return await run_in_threadpool(run)


@router.put(
    "/{session_id}/state_dict",
    summary="Load optimizer state (torch layout); params are unchanged",
    openapi_extra=json_body_schema(StateDict),
    responses={200: {"model": SessionSummary}, 412: {"description": "If-Match failed", **PROBLEM}, **ERRORS},
)
async def put_state_dict(
    session_id: str, request: Request, sessions: SessionsDep, settings: SettingsDep, if_match: IfMatch = None
) -> Response:
    body = await read_body(request, settings.max_body_bytes)

    def run() -> Response:
        meta = sessions.load_state_dict(session_id=session_id, state_dict=parse_json_object(body), if_match=if_match)
        return json_response(summary(meta), version=meta.version)

    return await run_in_threadpool(run)


@router.get(
    "/{session_id}/checkpoint",
    summary="Everything needed to continue elsewhere; POST it to /v1/sessions",
    responses={200: {"model": Checkpoint}, **ERRORS},
)
async def get_checkpoint(session_id: str, sessions: SessionsDep) -> Response:
    def run() -> Response:
        meta, checkpoint = sessions.checkpoint(session_id=session_id)
        return json_response(checkpoint, version=meta.version)

    return await run_in_threadpool(run)
