"""/v1/tenant: the caller's tenant, its quotas with their usage, and its key's rate limit."""

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.api.dependencies import CallerDep, ServiceDep
from service.api.openapi import answers
from service.api.schemas import TenantView

router = APIRouter(prefix="/v1/tenant", tags=["tenant"])


def _quota(limit: int | None, usage: int | None = None) -> dict[str, Any]:
    return {"limit": limit} if usage is None else {"limit": limit, "usage": usage}


@router.get(
    "",
    summary="The caller's tenant: quotas, usage and rate limit",
    operation_id="getTenant",
    responses=answers(TenantView),
)
async def get_tenant(service: ServiceDep, caller: CallerDep) -> Response:
    usage = await run_in_threadpool(lambda: service.sessions.usage(caller=caller))
    limits = caller.limits
    rate = limits.rate
    return service.answer(
        {
            "tenant": caller.tenant,
            "key": None if caller.key_id is None else {"id": caller.key_id, "admin": caller.admin},
            "quotas": {
                "max_sessions": _quota(limits.max_sessions, usage.sessions),
                "max_bytes": _quota(limits.max_bytes, usage.stored_bytes),
                "max_params": _quota(limits.max_params),
            },
            "rate_limit": None
            if rate is None or caller.key_id is None
            else {"requests_per_second": rate.requests_per_second, "burst": rate.burst},
        }
    )
