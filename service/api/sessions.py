"""/v1/sessions: create, read, change, step and snapshot optimizer sessions.

Array endpoints speak JSON and safetensors both ways (Content-Type, Accept). A route
reads the body on the event loop, then in a worker thread decodes it, calls one
session function, and renders what that returns, so a large step never stalls other
requests.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route

from service.api.bodies import hash_request, parse, read_body
from service.api.dependencies import CallerDep, Service, ServiceDep, caller_of, summary
from service.api.etags import expected_versions
from service.api.negotiation import negotiate
from service.api.openapi import array_responses, body_schema, problems
from service.api.schemas import (
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
from service.errors import MalformedHeader, ValidationFailed
from service.sessions.optimizers import DTYPES
from service.wire.json_arrays import arrays_from_json, state_dict_from_json
from service.wire.media_types import JSON

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

IfMatch = Annotated[str | None, Header(description="Apply only if the session's ETag is one of these.")]
MAX_IDEMPOTENCY_KEY = 255
IdempotencyKey = Annotated[
    str | None,
    Header(
        description="Retries with the same key and body get the first response; one in flight gets 409.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    ),
]
Accept = Annotated[str | None, Header(description="application/json (default) or application/vnd.safetensors")]
ERRORS = problems(
    {
        400: "malformed body",
        404: "no such session",
        406: "no acceptable media type",
        413: "body too large",
        415: "unsupported body media type",
        422: "invalid request",
    }
)
STEP_ARRAYS = [("grads", "*")]
CREATE_ARRAYS = [("params", "*"), ("state_dict", "state", "*", "*")]
STATE_DICT_ARRAYS = [("state", "*", "*")]
STALE = problems({412: "If-Match failed"})


@router.post(
    "",
    status_code=201,
    summary="Create a session (also from a checkpoint)",
    openapi_extra=body_schema(CreateSessionRequest),
    responses={**array_responses(SessionWithParams, 201), **ERRORS},
)
async def create_session(
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    accept: Accept = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    answer_as = negotiate(accept)
    checked_idempotency_key(idempotency_key)
    body = await read_body(request, service.settings)

    def run() -> Response:
        content = body.content()
        document = service.documents.decode(body.media_type, content, array_paths=CREATE_ARRAYS)
        create = parse(CreateSessionRequest, document)
        meta, params = service.sessions.create(
            caller=caller,
            idempotency_key=idempotency_key,
            request_hash=hash_request(body.media_type, content) if idempotency_key is not None else "",
            optimizer=create.optimizer,
            params=arrays_from_json(create.params, loc=("body", "params"), dtype=DTYPES[create.dtype]),
            hyperparameters=create.hyperparameters,
            param_groups=None
            if create.param_groups is None
            else [{**(group.model_extra or {}), "params": group.params} for group in create.param_groups],
            dtype=create.dtype,
            state_dict=None
            if create.state_dict is None
            else state_dict_from_json(create.state_dict, loc=("body", "state_dict")),  # type: ignore[arg-type]
            step=create.step,
        )
        return service.answer(
            {**summary(meta), "params": params},
            media_type=answer_as,
            root="params",
            status=201,
            version=meta.version,
            Location=f"/v1/sessions/{meta.id}",
        )

    return await run_in_threadpool(run)


@router.get("", summary="List sessions, oldest first", responses={200: {"model": SessionPage}, **ERRORS})
async def list_sessions(
    service: ServiceDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    accept: Accept = None,
) -> Response:
    negotiate(accept, (JSON,))
    metas, next_cursor = await run_in_threadpool(
        lambda: service.sessions.page(caller=caller, limit=limit, cursor=cursor)
    )
    return service.answer({"items": [summary(meta) for meta in metas], "next_cursor": next_cursor})


@router.get("/{session_id}", summary="A session's summary", responses={200: {"model": SessionSummary}, **ERRORS})
async def get_session(session_id: str, service: ServiceDep, caller: CallerDep, accept: Accept = None) -> Response:
    negotiate(accept, (JSON,))
    meta = await run_in_threadpool(lambda: service.sessions.summary(caller=caller, session_id=session_id))
    return service.answer(summary(meta), version=meta.version)


@router.patch(
    "/{session_id}",
    summary="Change hyperparameters between steps",
    openapi_extra=body_schema(PatchSessionRequest, binary=False),
    responses={200: {"model": SessionSummary}, **STALE, **ERRORS},
)
async def patch_session(
    session_id: str,
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    if_match: IfMatch = None,
    accept: Accept = None,
) -> Response:
    negotiate(accept, (JSON,))
    body = await read_body(request, service.settings, (JSON,))

    def run() -> Response:
        patch = parse(PatchSessionRequest, service.documents.decode(body.media_type, body.content()))
        meta = service.sessions.patch(
            caller=caller,
            session_id=session_id,
            hyperparameters=patch.hyperparameters,
            param_groups=patch.param_groups,
            expected_versions=expected_versions(if_match),
        )
        return service.answer(summary(meta), version=meta.version)

    return await run_in_threadpool(run)


@router.delete("/{session_id}", status_code=204, summary="Delete a session", responses={**STALE, **ERRORS})
async def delete_session(session_id: str, service: ServiceDep, caller: CallerDep, if_match: IfMatch = None) -> Response:
    await run_in_threadpool(
        lambda: service.sessions.delete(
            caller=caller, session_id=session_id, expected_versions=expected_versions(if_match)
        )
    )
    return Response(status_code=204)


def checked_idempotency_key(key: str | None) -> None:
    """An Idempotency-Key header must hold 1 to ``MAX_IDEMPOTENCY_KEY`` characters."""
    if key is None:
        return
    if not key:
        raise MalformedHeader.at(("header", "idempotency-key"), "Idempotency-Key must not be empty")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed.at(
            ("header", "idempotency-key"), f"String should have at most {MAX_IDEMPOTENCY_KEY} characters"
        )


def _header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


STEP_HEADERS = [
    _header("If-Match", "Apply only if the session's ETag is one of these.", type="string"),
    _header(
        "Idempotency-Key",
        "Retries with the same key and body return the first response.",
        type="string",
        maxLength=MAX_IDEMPOTENCY_KEY,
    ),
    _header("Accept", "application/json (default) or application/vnd.safetensors", type="string"),
]


@router.post(
    "/{session_id}/step",
    summary="Apply one step of gradients",
    openapi_extra={**body_schema(StepRequest), "parameters": STEP_HEADERS},
    responses={**array_responses(StepResponse), **STALE, **ERRORS},
)
async def step_session(session_id: str, request: Request) -> Response:
    # The hot path reads its headers itself: as FastAPI parameters they cost more than a small step.
    service: Service = request.app.state.service
    caller = caller_of(request)
    headers = request.headers
    answer_as = negotiate(headers.get("accept"))
    idempotency_key, if_match = headers.get("idempotency-key"), headers.get("if-match")
    checked_idempotency_key(idempotency_key)
    body = await read_body(request, service.settings)

    def run() -> Response:
        content = body.content()
        document = service.documents.decode(body.media_type, content, root="grads", array_paths=STEP_ARRAYS)
        step = parse(StepRequest, document)
        with service.sessions.step(
            caller=caller,
            session_id=session_id,
            # The core refuses non-finite gradients after casting them to the params' dtype: one pass, not two.
            grads=arrays_from_json(step.grads, loc=("body", "grads"), check_finite=False),
            request_hash=hash_request(body.media_type, content) if idempotency_key is not None else "",
            idempotency_key=idempotency_key,
            expected_versions=expected_versions(if_match),
        ) as outcome:
            return service.answer(
                {"step": outcome.step, "params": outcome.params},
                media_type=answer_as,
                root="params",
                version=outcome.version,
            )

    return await run_in_threadpool(run)


async def _step_endpoint(request: Request) -> Response:
    return await step_session(request.path_params["session_id"], request)


STEP_ROUTE = Route("/v1/sessions/{session_id}/step", _step_endpoint, methods=["POST"], name="step_session_first")
"""The step, as a plain Starlette route for the app to place first: FastAPI's routing and dependency
handling cost a 1k step about 0.1 ms (docs/benchmarks.md has the A/B), more than the optimizer's
arithmetic. The FastAPI route above stays for the OpenAPI document; both run ``step_session``."""


@router.get("/{session_id}/params", summary="Current params", responses={**array_responses(StepResponse), **ERRORS})
async def get_params(session_id: str, service: ServiceDep, caller: CallerDep, accept: Accept = None) -> Response:
    answer_as = negotiate(accept)

    def run() -> Response:
        meta, params = service.sessions.params(caller=caller, session_id=session_id)
        return service.answer(
            {"step": meta.step, "params": params}, media_type=answer_as, root="params", version=meta.version
        )

    return await run_in_threadpool(run)


@router.get(
    "/{session_id}/state_dict",
    summary="The optimizer state in torch's layout",
    responses={**array_responses(StateDict), **ERRORS},
)
async def get_state_dict(session_id: str, service: ServiceDep, caller: CallerDep, accept: Accept = None) -> Response:
    answer_as = negotiate(accept)

    def run() -> Response:
        meta, state_dict = service.sessions.state_dict(caller=caller, session_id=session_id)
        return service.answer(state_dict, media_type=answer_as, version=meta.version)

    return await run_in_threadpool(run)


@router.put(
    "/{session_id}/state_dict",
    summary="Load optimizer state (torch layout); params are unchanged",
    openapi_extra=body_schema(StateDict),
    responses={200: {"model": SessionSummary}, **STALE, **ERRORS},
)
async def put_state_dict(
    session_id: str,
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    if_match: IfMatch = None,
    accept: Accept = None,
) -> Response:
    negotiate(accept, (JSON,))
    body = await read_body(request, service.settings)

    def run() -> Response:
        document = service.documents.decode(body.media_type, body.content(), array_paths=STATE_DICT_ARRAYS)
        meta = service.sessions.load_state_dict(
            caller=caller,
            session_id=session_id,
            state_dict=state_dict_from_json(document, loc=("body",)),
            expected_versions=expected_versions(if_match),
        )
        return service.answer(summary(meta), version=meta.version)

    return await run_in_threadpool(run)


@router.get(
    "/{session_id}/checkpoint",
    summary="Everything needed to continue elsewhere; POST it to /v1/sessions",
    responses={**array_responses(Checkpoint), **ERRORS},
)
async def get_checkpoint(session_id: str, service: ServiceDep, caller: CallerDep, accept: Accept = None) -> Response:
    answer_as = negotiate(accept)

    def run() -> Response:
        meta, checkpoint = service.sessions.checkpoint(caller=caller, session_id=session_id)
        return service.answer(checkpoint, media_type=answer_as, version=meta.version)

    return await run_in_threadpool(run)
