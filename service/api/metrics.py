"""/metrics: the service's Prometheus metrics (``observability/metrics.py``), for an admin key.

Where keys exist, only an admin key reads them (they tell about every tenant's traffic together); a
server that serves without keys (on loopback, before the first key) serves them as it serves the rest.
"""

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.api.dependencies import caller_of
from service.api.openapi import PROBLEM_JSON
from service.errors import ProblemError
from service.observability.metrics import exposition
from service.store import SessionStore, StorageFailure

router = APIRouter(tags=["metrics"])

TEXT_FORMAT = "text/plain"
OPENMETRICS = "application/openmetrics-text"
METRICS_ANSWER = {
    "description": "Every metric, of every worker process: the Prometheus text format, or OpenMetrics when "
    "Accept asks for it (docs/api.md lists them).",
    "content": {TEXT_FORMAT: {"schema": {"type": "string"}}, OPENMETRICS: {"schema": {"type": "string"}}},
}
NOT_ADMIN_ANSWER = {
    "description": "The key is not an admin key.",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


class AdminRequired(ProblemError):
    slug = "admin-required"


def _session_count(store: SessionStore) -> int | None:
    """Sessions in storage; None (the gauge left out of this scrape) when storage does not answer."""
    try:
        return store.session_count()
    except StorageFailure:
        return None


@router.get(
    "/metrics",
    summary="Prometheus metrics (an admin key)",
    operation_id="getMetrics",
    responses={200: METRICS_ANSWER, 403: NOT_ADMIN_ANSWER},
)
async def metrics(request: Request) -> Response:
    caller = caller_of(request)
    if caller.key_id is not None and not caller.admin:
        raise AdminRequired("the metrics are read with an admin key")
    store: SessionStore = request.app.state.store
    body, media_type = await run_in_threadpool(exposition, lambda: _session_count(store), request.headers.get("accept"))
    return Response(body, media_type=media_type)
