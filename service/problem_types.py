"""Every kind of problem the service answers with: the one table that the problem documents (their
``type``, ``title`` and ``status``) and the pages at ``/problems/{slug}`` that explain them are built from.

A ``type`` is ``/problems/{slug}``, relative to the server: ``GET`` it for the page. Add a new kind of
problem here first; ``tests/api/test_problem_pages.py`` fails for a type the service emits without an
entry.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ProblemType:
    status: int
    title: str
    about: str
    """What it means and what the client can do about it (plain text, one paragraph)."""


PROBLEM_TYPES: dict[str, ProblemType] = {
    "malformed-request": ProblemType(
        400,
        "Malformed HTTP request",
        "The server could not parse the request line or headers as HTTP/1.1, so the request reached no "
        "endpoint. The server closes the connection after this answer; open a new one.",
    ),
    "malformed-body": ProblemType(
        400,
        "Malformed request body",
        "The body is not what its Content-Type says: not JSON (or not a JSON object), or not a safetensors "
        "file. Nothing was changed.",
    ),
    "malformed-header": ProblemType(
        400,
        "Malformed request header",
        "A request header has a value the service cannot read; the `errors` entry names the header. "
        "Nothing was changed.",
    ),
    "unauthenticated": ProblemType(
        401,
        "A valid API key is required",
        "Requests to /v1 and /metrics need `Authorization: Bearer <API key>`. The key was missing, unknown, revoked or "
        "mistyped (`WWW-Authenticate` says which). Ask the service's operator for a key.",
    ),
    "not-your-session": ProblemType(
        403,
        "Another tenant's session",
        "An admin key may list and read the summaries of other tenants' sessions, but not change them or "
        "read their arrays.",
    ),
    "admin-required": ProblemType(
        403,
        "An admin key is required",
        "The service's metrics (/metrics) are read with an admin key (`optim-service keys create --admin`), "
        "once any key exists.",
    ),
    "quota-exceeded": ProblemType(
        403,
        "Over the tenant's quota",
        "The request would take the tenant past one of its quotas (sessions, stored bytes or params per "
        "session); the problem names the quota, its limit, the usage and what was requested. Delete "
        "sessions, or ask for a larger quota. Nothing was changed.",
    ),
    "not-found": ProblemType(404, "No such resource", "No endpoint of the service has this path."),
    "session-not-found": ProblemType(
        404,
        "No such session",
        "No session with this id exists for the caller: it never existed, was deleted, or belongs to another tenant.",
    ),
    "round-not-found": ProblemType(
        404,
        "No such round",
        "The session is not synchronous, or has no round with this step: a round ahead of the session has not "
        "opened yet, and a session remembers its newest 1000 closed rounds only.",
    ),
    "round-moved-on": ProblemType(
        409,
        "The round has moved on",
        "The contribution's based_on_step is not the session's current round (synchronous), or is more stale "
        "than the session's max_staleness allows, or is ahead of the session (asynchronous); `current_step` says "
        "where the session is. Nothing was stored: GET the params, recompute the gradient on them, and contribute "
        "to round `current_step`.",
    ),
    "round-answer-expired": ProblemType(
        409,
        "The round's answer is no longer kept",
        "The round closed and was applied, but its answer's params were not copied (or no longer are) and a later "
        "step has changed the session's params; `current_step` says where the session is. GET the params.",
    ),
    "contribution-changed": ProblemType(
        422,
        "A different contribution from the same worker",
        "The worker has already contributed to this round with a different request. A retry must send the same "
        "body (the same media type and bytes); nothing was changed.",
    ),
    "method-not-allowed": ProblemType(
        405,
        "Method not allowed",
        "The path exists, but not with this method. The `Allow` header lists every method it takes "
        "(`OPTIONS` on the path says the same).",
    ),
    "not-acceptable": ProblemType(
        406,
        "No acceptable response media type",
        "`Accept` names no media type the endpoint answers in: application/json, and for endpoints with "
        "arrays also application/vnd.safetensors.",
    ),
    "idempotency-key-in-flight": ProblemType(
        409,
        "A request with this Idempotency-Key is still being processed",
        "Another request with the same Idempotency-Key has not finished. Retry after `Retry-After` "
        "seconds: the retry gets its response.",
    ),
    "idempotent-response-expired": ProblemType(
        409,
        "The first response to this Idempotency-Key is no longer kept",
        "The request with this Idempotency-Key was applied, but its response is no longer kept; the detail "
        "says which step it was applied as. Nothing was applied again; read the session for its state.",
    ),
    "precondition-failed": ProblemType(
        412,
        "The session has moved on",
        "`If-Match` names none of the session's current ETags: another request changed it since. Read it "
        "again (its ETag) and decide. Nothing was changed.",
    ),
    "body-too-large": ProblemType(
        413,
        "Request body too large",
        "The body is over the server's limit (`OPTIM_MAX_BODY_BYTES`). Nothing was changed.",
    ),
    "unsupported-media-type": ProblemType(
        415,
        "Unsupported request media type",
        "The body's Content-Type is missing, or is not one the endpoint reads: application/json, and for "
        "endpoints with arrays also application/vnd.safetensors. A body without a Content-Type is not "
        "read. Nothing was changed.",
    ),
    "unsupported-content-encoding": ProblemType(
        415,
        "Unsupported request content encoding",
        "The body has a Content-Encoding the server does not decode; `Accept-Encoding` in the answer lists "
        "those it does. Send the body unencoded. Nothing was changed.",
    ),
    "host-not-allowed": ProblemType(
        421,
        "This server does not serve that host",
        "The Host header names a host that is not in the server's allow-list (`OPTIM_ALLOWED_HOSTS`). A "
        "server on a loopback address serves only localhost, 127.0.0.1 and [::1], so that a web page cannot "
        "reach it under another name (DNS rebinding). Nothing was changed.",
    ),
    "validation-error": ProblemType(
        422,
        "Invalid request",
        "A field is wrong: a type, an unknown or missing field, a hyperparameter, a name, a shape, a NaN or "
        "infinite value, or a state_dict that does not fit. The `errors` entries name each field (`loc`) "
        "and what is wrong with it (`msg`). Nothing was changed.",
    ),
    "idempotency-key-reused": ProblemType(
        422,
        "Idempotency-Key reused with a different request",
        "The Idempotency-Key was first sent with another body (or media type). Use a new key for a new "
        "request. Nothing was changed.",
    ),
    "rate-limited": ProblemType(
        429,
        "Too many requests for this key",
        "The API key sent more requests than its rate limit allows (the `RateLimit-Policy` header). Retry "
        "after `Retry-After` seconds.",
    ),
    "http-error": ProblemType(
        400,
        "Refused by the HTTP layer",
        "The request was refused before it reached an endpoint; the status and the detail say why.",
    ),
    "internal-error": ProblemType(
        500,
        "Internal server error",
        "A bug in the service. It is logged with the request id, which is the problem's `instance` and the "
        "`X-Request-ID` header: quote it when you report the problem.",
    ),
    "method-not-implemented": ProblemType(
        501,
        "Method not implemented",
        "The request's method is one the server does not know for any resource. The server closes the "
        "connection after this answer.",
    ),
    "storage-busy": ProblemType(
        503,
        "Storage is busy",
        "A lock, a database connection or a statement took longer than its bound. Nothing was changed; "
        "retry after `Retry-After` seconds.",
    ),
    "storage-unavailable": ProblemType(
        503,
        "Storage is not answering",
        "Storage answered with an I/O error, or the connection to it was lost. Retry after `Retry-After` "
        "seconds. If the detail says the change may have been committed, retry with the same "
        "Idempotency-Key, which answers with the first response if it was.",
    ),
    "too-many-connections": ProblemType(
        503,
        "Too many connections",
        "The server process holds as many connections as it may, and none is idle. The connection is "
        "closed; retry after `Retry-After` seconds.",
    ),
    "insufficient-storage": ProblemType(
        507,
        "Storage is full",
        "The disk is full. Nothing was changed; writes succeed again once there is room, without a restart. "
        "Retry after `Retry-After` seconds.",
    ),
}


def type_uri(slug: str) -> str:
    return f"/problems/{slug}"
