"""``GET``/``PUT /v1/sessions/{id}/lr_scheduler``: a session's LR schedule, as torch's scheduler.state_dict()."""

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.api.bodies import parse, read_body
from service.api.dependencies import CallerDep, ServiceDep, summary
from service.api.etags import expected_versions
from service.api.negotiation import negotiate
from service.api.openapi import answers, body_schema, problems
from service.api.schemas import LRSchedulerState, LRSchedulerView, SessionSummary
from service.api.sessions import WRITES, AcceptJson, IfMatch
from service.wire.media_types import JSON

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get(
    "/{session_id}/lr_scheduler",
    summary="The session's LR schedule: its config, torch's state_dict of it, and its last lrs",
    operation_id="getLRScheduler",
    responses={**answers(LRSchedulerView, headers=("ETag",)), **problems(404, 406)},
)
async def get_lr_scheduler(
    session_id: str, service: ServiceDep, caller: CallerDep, accept: AcceptJson = None
) -> Response:
    negotiate(accept, (JSON,))

    def run() -> Response:
        meta, view = service.sessions.lr_scheduler(caller=caller, session_id=session_id)
        return service.answer(view or {"config": None, "state_dict": None, "last_lr": None}, version=meta.version)

    return await run_in_threadpool(run)


@router.put(
    "/{session_id}/lr_scheduler",
    summary="Load torch's state_dict of the session's LR schedule; the lrs are unchanged",
    operation_id="putLRScheduler",
    openapi_extra=body_schema("LRSchedulerState", binary=False),
    responses={**answers(SessionSummary, headers=("ETag",)), **WRITES},
)
async def put_lr_scheduler(
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
        loaded = parse(LRSchedulerState, service.documents.decode(body.media_type, body.content()))
        meta = service.sessions.load_lr_scheduler(
            caller=caller,
            session_id=session_id,
            state_dict=loaded.state_dict,
            expected_versions=expected_versions(if_match),
        )
        return service.answer(summary(meta), version=meta.version)

    return await run_in_threadpool(run)
