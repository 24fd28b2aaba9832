"""Every request to /v1 (and to /metrics) is admitted first: its API key, its tenant, a token from its key's bucket.

A pure ASGI middleware, so that an unauthenticated request is answered before its
body is read. It refuses with 401 (``WWW-Authenticate: Bearer``) or 429
(``Retry-After``), and gives every admitted response the IETF ``RateLimit-Policy``
and ``RateLimit`` fields of the caller's key. The admitted caller goes to the routes
in the request's state (``dependencies.caller_of``). Health checks, the OpenAPI
document and the problem pages need no key; neither does OPTIONS, which tells only
the methods a path allows.
"""

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.paths import route_path
from service.errors import problem_response, storage_problem
from service.store import StorageFailure
from service.tenancy.authentication import Admission, Authenticator, RateLimited, Unauthenticated

GUARDED_PREFIX = "/v1"
GUARDED_PATHS = frozenset({"/metrics"})
"""Paths outside /v1 that need a key too (once any key exists)."""


def is_guarded(path: str) -> bool:
    """Whether requests to ``path`` (as the routes see it) are admitted here first."""
    return path == GUARDED_PREFIX or path.startswith(GUARDED_PREFIX + "/") or path in GUARDED_PATHS


def _guarded(scope: Scope) -> bool:
    return is_guarded(route_path(scope)) and scope["method"] != "OPTIONS"


class Authentication:
    def __init__(self, app: ASGIApp, *, retry_after_seconds: int = 1) -> None:
        self.app = app
        self._retry_after_seconds = retry_after_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _guarded(scope):
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator = scope["app"].state.authenticator
        authorization = Headers(scope=scope).get("authorization")
        try:
            admission = await self._admit(authenticator, authorization)
        except Unauthenticated as refusal:
            challenge = 'Bearer realm="optim-service"'
            if refusal.invalid_token:
                challenge += ', error="invalid_token"'
            response = problem_response(
                slug="unauthenticated",
                detail=refusal.message,
                headers={"WWW-Authenticate": challenge},
            )
            await response(scope, receive, send)
            return
        except RateLimited as refusal:
            response = problem_response(
                slug="rate-limited",
                detail=str(refusal),
                headers={
                    "Retry-After": str(refusal.decision.retry_after_seconds),
                    "RateLimit-Policy": refusal.limit.policy_header(),
                    "RateLimit": refusal.decision.header(),
                },
            )
            await response(scope, receive, send)
            return
        except StorageFailure as failure:
            await storage_problem(failure, retry_after_seconds=self._retry_after_seconds)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = admission.caller
        if admission.rate is None:
            await self.app(scope, receive, send)
            return
        limit, decided = admission.rate

        async def send_with_rate_limit(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["RateLimit-Policy"] = limit.policy_header()
                headers["RateLimit"] = decided.header()
            await send(message)

        await self.app(scope, receive, send_with_rate_limit)

    async def _admit(self, authenticator: Authenticator, authorization: str | None) -> Admission:
        if authorization is None and authenticator.keyless_known():
            # Served without a key (or not) by the last look, a second ago at most: no thread, no query.
            caller = authenticator.keyless_caller()
            if caller is not None:
                return Admission(caller=caller, rate=None)
        return await run_in_threadpool(authenticator.admit, authorization)
