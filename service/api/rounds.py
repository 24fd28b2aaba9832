"""``GET /v1/sessions/{id}/rounds/{step}``: a synchronous round's answer, once it closes."""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from service.api.negotiation import negotiate
from service.api.openapi import answers, problems
from service.api.round_waits import round_answer
from service.api.schemas import RoundPending, StepResponse
from service.api.sessions import Accept
from service.wire.json_arrays import MAX_STEP

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get(
    "/{session_id}/rounds/{step}",
    summary="A synchronous round's answer, once it closes",
    operation_id="getRound",
    responses={
        **answers(StepResponse, binary=True, headers=("ETag",)),
        **answers(
            RoundPending,
            202,
            headers=("Location",),
            description="The round is still open after the server's wait: poll its Location again.",
        ),
        **problems(403, 404, 406, 409, 422),
    },
)
async def get_round(
    session_id: str, step: Annotated[int, Path(ge=0, le=MAX_STEP)], request: Request, accept: Accept = None
) -> Response:
    answer_as = negotiate(accept)
    return await round_answer(request, session_id=session_id, step=step, answer_as=answer_as)
