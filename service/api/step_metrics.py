"""/v1/sessions/{id}/metrics: a session's step telemetry history, as JSON pages or CSV."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.api.dependencies import CallerDep, ServiceDep
from service.api.negotiation import negotiate
from service.api.openapi import answers, problems
from service.api.schemas import MetricsPage
from service.sessions.step_metrics import MAX_METRICS_PAGE
from service.wire.csv_tables import csv_table
from service.wire.media_types import CSV, JSON

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

OFFERED = (JSON, CSV)
LAST_STEP = 2**63 - 1
"""The largest step a session can reach (a 64-bit signed counter): the largest ``since``."""


@router.get(
    "/{session_id}/metrics",
    summary="A session's step metrics, oldest first",
    operation_id="getSessionMetrics",
    responses={
        **answers(MetricsPage, description="A page of the kept steps' metrics"),
        200: {
            "content": {CSV: {"schema": {"type": "string", "description": "The page's items, one row each."}}},
            "headers": {
                "Link": {
                    "description": 'The next page, as rel="next", when there is one.',
                    "schema": {"type": "string"},
                }
            },
        },
        **problems(404, 406, 422),
    },
)
async def get_session_metrics(
    session_id: str,
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    since: Annotated[
        int, Query(ge=0, le=LAST_STEP, description="Only steps after this one; pass next_cursor to read on.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_METRICS_PAGE)] = 1000,
    accept: Annotated[
        str | None,
        Header(description=f"{JSON} (the default) or {CSV}.", json_schema_extra={"enum": [JSON, CSV, "*/*"]}),
    ] = None,
) -> Response:
    answer_as = negotiate(accept, OFFERED)
    items, next_step = await run_in_threadpool(
        lambda: service.sessions.metrics(caller=caller, session_id=session_id, after_step=since, limit=limit)
    )
    if answer_as == CSV:
        response = Response(csv_table(items), media_type=f"{CSV}; charset=utf-8", headers={"Vary": "Accept"})
    else:
        response = service.answer({"items": items, "next_cursor": next_step})
    if next_step is not None:
        next_page = request.url.include_query_params(since=next_step, limit=limit)
        response.headers["Link"] = f'<{next_page.path}?{next_page.query}>; rel="next"'
    return response
