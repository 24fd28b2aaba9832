"""What routes share: the parts the app's lifespan builds, as typed dependencies, and answers with arrays."""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.responses import Response

from service.api.etags import etag
from service.api.round_events import RoundEvents
from service.config import Settings
from service.sessions.service import Sessions
from service.store import SessionMeta
from service.tenancy.callers import Caller
from service.wire.documents import Documents
from service.wire.media_types import JSON


@dataclass(frozen=True)
class Service:
    """What the routes work with, built once in the app's lifespan."""

    sessions: Sessions
    documents: Documents
    settings: Settings
    round_events: RoundEvents

    def answer(
        self,
        value: dict[str, Any],
        *,
        media_type: str = JSON,
        root: str | None = None,
        status: int = 200,
        version: int | None = None,
        **headers: str,
    ) -> Response:
        """``value`` as JSON or safetensors (arrays under ``root`` named by param name alone), with the
        session's ``version`` as its ETag in that representation. ``Vary: Accept`` tells caches that the
        representation follows Accept (``negotiation.negotiate``)."""
        if version is not None:
            headers["ETag"] = etag(version, media_type)
        headers["Vary"] = "Accept"
        body = self.documents.encode(value, media_type=media_type, root=root)
        return Response(body, status_code=status, media_type=media_type, headers=headers)


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def caller_of(request: Request) -> Caller:
    """Who sent the request, as the authentication middleware admitted it."""
    caller: Caller = request.state.caller
    return caller


async def get_caller(request: Request) -> Caller:
    return caller_of(request)


CallerDep = Annotated[Caller, Depends(get_caller)]


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds") + "Z"


def summary(meta: SessionMeta) -> dict[str, Any]:
    """A session as its summary shows it."""
    return {
        "id": meta.id,
        "optimizer": meta.optimizer,
        "dtype": meta.dtype,
        "step": meta.step,
        "param_groups": meta.param_groups,
        "shapes": meta.shapes,
        "created_at": _timestamp(meta.created_at),
        "updated_at": _timestamp(meta.updated_at),
        "tenant": meta.tenant,
        "aggregation": meta.aggregation,
        "clip_grad_norm": meta.clip_grad_norm,
        "nonfinite": meta.nonfinite,
    }
