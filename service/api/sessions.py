"""/v1/sessions: create, read, change, step and snapshot optimizer sessions.

Array endpoints speak JSON and safetensors both ways (Content-Type, Accept). A route
reads the body on the event loop, then in a worker thread decodes it, calls one
session function, and renders what that returns, so a large step never stalls other
requests.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route

from service.api.bodies import hash_request, parse, read_body
from service.api.dependencies import CallerDep, Service, ServiceDep, caller_of, summary
from service.api.etags import expected_versions
from service.api.negotiation import negotiate
from service.api.openapi import answers, body_schema, problems
from service.api.request_schemas import CREATE_EXAMPLE, PATCH_EXAMPLE, STEP_EXAMPLE
from service.api.round_waits import Joined, round_answer
from service.api.schemas import (
    Checkpoint,
    CreateSessionRequest,
    Params,
    PatchSessionRequest,
    RoundPending,
    SessionPage,
    SessionSummary,
    SessionWithParams,
    StateDict,
    StepRequest,
    StepResponse,
)
from service.errors import MalformedHeader, ValidationFailed
from service.sessions.aggregation import Contribution
from service.sessions.optimizers import DTYPES
from service.wire.json_arrays import arrays_from_json, state_dict_from_json
from service.wire.media_types import JSON, SAFETENSORS

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

IF_MATCH_DESCRIPTION = "Apply only if the session's ETag is one of these (or `*`)."
IfMatch = Annotated[str | None, Header(description=IF_MATCH_DESCRIPTION)]
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_KEY_SCHEMA = {"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}
IDEMPOTENCY_KEY_DESCRIPTION = (
    "Retries with the same key and body get the first response, and apply nothing; one in flight gets 409."
)
IdempotencyKey = Annotated[
    str | None, Header(description=IDEMPOTENCY_KEY_DESCRIPTION, json_schema_extra=IDEMPOTENCY_KEY_SCHEMA)
]
ACCEPT_DESCRIPTION = f"{JSON} (the default) or {SAFETENSORS}; q-values are honoured."
ACCEPTED_BY_ARRAY_ROUTES = [JSON, SAFETENSORS, f"{SAFETENSORS}, {JSON};q=0.5", "application/*", "*/*"]
"""Accept headers the array routes answer; others are answered with 406 unless a range they name matches."""
ACCEPTED_BY_JSON_ROUTES = [JSON, "application/*", "*/*"]
Accept = Annotated[
    str | None, Header(description=ACCEPT_DESCRIPTION, json_schema_extra={"enum": ACCEPTED_BY_ARRAY_ROUTES})
]
AcceptJson = Annotated[
    str | None, Header(description=f"{JSON}, the default.", json_schema_extra={"enum": ACCEPTED_BY_JSON_ROUTES})
]
READS = problems(403, 404, 406)
"""What a read of a session's arrays may answer besides its success (a summary's answers no 403)."""


def read_of_arrays(model: type[BaseModel], links: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The answers of a read of a session's arrays, in JSON or safetensors, with the session's ETag."""
    return {**answers(model, binary=True, headers=("ETag",), links=links), **READS}


WRITES = problems(400, 403, 404, 406, 412, 413, 415, 422, 507)
"""What a change to a session may answer besides its success."""
SESSION_ID = {"session_id": "$response.body#/id"}
SAME_SESSION = {"session_id": "$request.path.session_id"}
CURRENT_ETAG = {"header.If-Match": "$response.header.ETag"}
STEP_WITH_THE_PARAMS = {"grads": "$response.body#/params"}
"""A step whose gradients are the params it answered: the names and shapes the session expects."""


def _link(operation_id: str, description: str, parameters: dict[str, str], body: Any = None) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, "description": description, "parameters": parameters}
    if body is not None:
        link["requestBody"] = body
    return link


def _session_links(ids: dict[str, str]) -> dict[str, Any]:
    """Where a session's answer leads, for the session it names."""
    return {
        "GetSession": _link("getSession", "the session's summary", ids),
        "GetParams": _link("getParams", "its params", ids),
        "GetStateDict": _link("getStateDict", "its optimizer state", ids),
        "GetCheckpoint": _link("getCheckpoint", "its checkpoint", ids),
        "DeleteSession": _link("deleteSession", "delete it", {**ids, **CURRENT_ETAG}),
    }


STEP_ARRAYS = [("grads", "*")]
CREATE_ARRAYS = [("params", "*"), ("state_dict", "state", "*", "*")]
STATE_DICT_ARRAYS = [("state", "*", "*")]


@router.post(
    "",
    status_code=201,
    summary="Create a session (also from a checkpoint)",
    operation_id="createSession",
    openapi_extra=body_schema("CreateSessionRequest", example=CREATE_EXAMPLE),
    responses={
        **answers(
            SessionWithParams,
            201,
            binary=True,
            headers=("Location", "ETag"),
            description="Created",
            links={
                **_session_links(SESSION_ID),
                "StepSession": _link(
                    "stepSession",
                    "a step with gradients of the params' shapes",
                    {**SESSION_ID, **CURRENT_ETAG},
                    STEP_WITH_THE_PARAMS,
                ),
                "PatchSession": _link(
                    "patchSession",
                    "set each group's hyperparameters as they are",
                    {**SESSION_ID, **CURRENT_ETAG},
                    {"param_groups": "$response.body#/param_groups"},
                ),
            },
        ),
        **problems(400, 403, 406, 409, 413, 415, 422, 507),
    },
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
            aggregation=create.aggregation,
            clip_grad_norm=create.clip_grad_norm,
            nonfinite=create.nonfinite,
            lr_scheduler=create.lr_scheduler,
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


@router.get(
    "",
    summary="List sessions, oldest first",
    operation_id="listSessions",
    responses={
        **answers(
            SessionPage,
            links={"NextPage": _link("listSessions", "the next page", {"query.cursor": "$response.body#/next_cursor"})},
        ),
        **problems(406, 422),
    },
)
async def list_sessions(
    service: ServiceDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page (422 for any other)")] = None,
    accept: AcceptJson = None,
) -> Response:
    negotiate(accept, (JSON,))
    metas, next_cursor = await run_in_threadpool(
        lambda: service.sessions.page(caller=caller, limit=limit, cursor=cursor)
    )
    return service.answer({"items": [summary(meta) for meta in metas], "next_cursor": next_cursor})


@router.get(
    "/{session_id}",
    summary="A session's summary",
    operation_id="getSession",
    responses={
        **answers(
            SessionSummary,
            headers=("ETag",),
            links={
                **_session_links(SAME_SESSION),
                "PatchSession": _link(
                    "patchSession",
                    "set each group's hyperparameters as they are",
                    {**SAME_SESSION, **CURRENT_ETAG},
                    {"param_groups": "$response.body#/param_groups"},
                ),
            },
        ),
        **problems(404, 406),
    },
)
async def get_session(session_id: str, service: ServiceDep, caller: CallerDep, accept: AcceptJson = None) -> Response:
    negotiate(accept, (JSON,))
    meta = await run_in_threadpool(lambda: service.sessions.summary(caller=caller, session_id=session_id))
    return service.answer(summary(meta), version=meta.version)


@router.patch(
    "/{session_id}",
    summary="Change hyperparameters between steps",
    operation_id="patchSession",
    openapi_extra=body_schema("PatchSessionRequest", binary=False, example=PATCH_EXAMPLE),
    responses={**answers(SessionSummary, headers=("ETag",), links=_session_links(SAME_SESSION)), **WRITES},
)
async def patch_session(
    session_id: str,
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    if_match: IfMatch = None,
    accept: AcceptJson = None,
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
            gradient_settings={
                key: getattr(patch, key)
                for key in ("clip_grad_norm", "nonfinite", "lr_scheduler")
                if key in patch.model_fields_set
            },
            expected_versions=expected_versions(if_match),
        )
        return service.answer(summary(meta), version=meta.version)

    return await run_in_threadpool(run)


@router.delete(
    "/{session_id}",
    status_code=204,
    summary="Delete a session",
    operation_id="deleteSession",
    responses={**answers(None, 204, description="Deleted"), **problems(403, 404, 412, 507)},
)
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
    _header("If-Match", IF_MATCH_DESCRIPTION, type="string"),
    _header("Idempotency-Key", IDEMPOTENCY_KEY_DESCRIPTION, type="string", **IDEMPOTENCY_KEY_SCHEMA),
    _header("Accept", ACCEPT_DESCRIPTION, type="string", enum=ACCEPTED_BY_ARRAY_ROUTES),
]


@router.post(
    "/{session_id}/step",
    summary="Apply one step of gradients",
    operation_id="stepSession",
    openapi_extra={**body_schema("StepRequest", example=STEP_EXAMPLE), "parameters": STEP_HEADERS},
    responses={
        **answers(
            StepResponse,
            binary=True,
            headers=("ETag",),
            links={
                **_session_links(SAME_SESSION),
                "StepSession": _link(
                    "stepSession", "another step", {**SAME_SESSION, **CURRENT_ETAG}, STEP_WITH_THE_PARAMS
                ),
            },
        ),
        **answers(
            RoundPending,
            202,
            headers=("Location",),
            description="A contribution to a synchronous round still open after the server's wait: stored; poll "
            "the round's Location for the answer.",
        ),
        **problems(409),
        **WRITES,
    },
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

    def run() -> Response | Joined:
        content = body.content()
        document = service.documents.decode(body.media_type, content, root="grads", array_paths=STEP_ARRAYS)
        worker = document.get("worker")
        if body.media_type == SAFETENSORS and isinstance(worker, int) and not isinstance(worker, bool):
            document["worker"] = str(worker)  # metadata is JSON text, where an id of digits reads as a number
        step = parse(StepRequest, document)
        contribution = None
        if step.worker is not None:
            assert step.based_on_step is not None
            contribution = Contribution(
                worker=step.worker,
                based_on_step=step.based_on_step,
                weight=1.0 if step.weight is None else step.weight,
            )
        hashed = idempotency_key is not None or contribution is not None
        request_hash = hash_request(body.media_type, content) if hashed else ""
        with service.sessions.step(
            caller=caller,
            session_id=session_id,
            # The core refuses non-finite gradients after casting them to the params' dtype: one pass, not two.
            grads=arrays_from_json(step.grads, loc=("body", "grads"), check_finite=False),
            loss=step.loss,
            request_hash=request_hash,
            idempotency_key=idempotency_key,
            expected_versions=expected_versions(if_match),
            contribution=contribution,
        ) as outcome:
            if outcome.pending:
                assert outcome.round is not None
                assert contribution is not None
                return Joined(outcome.round, contribution.worker, request_hash)
            answer: dict[str, Any] = {"step": outcome.step, "params": outcome.params, "metrics": outcome.metrics}
            if outcome.staleness is not None:
                answer["staleness"] = outcome.staleness
            if outcome.skipped:
                answer["skipped"] = True
            return service.answer(answer, media_type=answer_as, root="params", version=outcome.version)

    answered = await run_in_threadpool(run)
    if isinstance(answered, Joined):
        return await round_answer(
            request,
            session_id=session_id,
            step=answered.round,
            answer_as=answer_as,
            worker=answered.worker,
            request_hash=answered.request_hash,
        )
    return answered


async def _step_endpoint(request: Request) -> Response:
    return await step_session(request.path_params["session_id"], request)


STEP_ROUTE = Route("/v1/sessions/{session_id}/step", _step_endpoint, methods=["POST"], name="step_session_first")
"""The step, as a plain Starlette route for the app to place first: FastAPI's routing and dependency
handling cost a 1k step about 0.1 ms (docs/benchmarks.md has the A/B), more than the optimizer's
arithmetic. The FastAPI route above stays for the OpenAPI document; both run ``step_session``."""


@router.get(
    "/{session_id}/params",
    summary="Current params",
    operation_id="getParams",
    responses=read_of_arrays(
        Params, {"StepSession": _link("stepSession", "a step", SAME_SESSION, STEP_WITH_THE_PARAMS)}
    ),
)
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
    operation_id="getStateDict",
    responses=read_of_arrays(
        StateDict,
        {
            "PutStateDict": _link(
                "putStateDict", "load the same state again", {**SAME_SESSION, **CURRENT_ETAG}, "$response.body"
            )
        },
    ),
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
    operation_id="putStateDict",
    openapi_extra=body_schema("StateDictRequest"),
    responses={**answers(SessionSummary, headers=("ETag",), links=_session_links(SAME_SESSION)), **WRITES},
)
async def put_state_dict(
    session_id: str,
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    if_match: IfMatch = None,
    accept: AcceptJson = None,
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
    operation_id="getCheckpoint",
    responses=read_of_arrays(
        Checkpoint, {"CreateSession": _link("createSession", "a new session from the checkpoint", {}, "$response.body")}
    ),
)
async def get_checkpoint(session_id: str, service: ServiceDep, caller: CallerDep, accept: Accept = None) -> Response:
    answer_as = negotiate(accept)

    def run() -> Response:
        meta, checkpoint = service.sessions.checkpoint(caller=caller, session_id=session_id)
        return service.answer(checkpoint, media_type=answer_as, version=meta.version)

    return await run_in_threadpool(run)
