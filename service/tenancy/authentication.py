"""Authenticating a request: its API key, its tenant's limits, and a token from its key's bucket.

Every key is looked up when it is used, so that a revocation on any replica takes
effect at the next request. A server may serve requests without a key only while
no active key exists and it was allowed to (``keyless_allowed``: it listens on
loopback, or was started insecure on purpose); that state is looked up at most
every ``KEYLESS_CHECK_SECONDS``.
"""

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from service.store.rate_limits import RateLimits
from service.store.tables import DEFAULT_TENANT
from service.store.tenants import Tenants
from service.tenancy import keys
from service.tenancy.callers import Caller, Limits, anonymous
from service.tenancy.rate import Decision, RateLimit, decision

KEYLESS_CHECK_SECONDS = 1.0
"""How stale the answer to "may requests come without a key?" may be (a first key counts within this)."""
LAST_USE_EVERY_SECONDS = 60.0
"""A key's last use is written at most this often per process."""


class Unauthenticated(Exception):
    """No key, or not a valid one; ``invalid_token`` when one was sent (RFC 6750's error code)."""

    def __init__(self, message: str, *, invalid_token: bool) -> None:
        super().__init__(message)
        self.message = message
        self.invalid_token = invalid_token


class RateLimited(Exception):
    def __init__(self, limit: RateLimit, decision: Decision) -> None:
        super().__init__(
            f"this key may send {limit.requests_per_second:g} requests per second on average, {limit.burst} at "
            f"once; retry in {decision.retry_after_seconds} s"
        )
        self.limit = limit
        self.decision = decision


@dataclass(frozen=True)
class Admission:
    caller: Caller
    rate: tuple[RateLimit, Decision] | None
    """The caller's rate limit and where its bucket stands, for the RateLimit header fields."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Authenticator:
    def __init__(self, *, tenants: Tenants, rate_limits: RateLimits, defaults: Limits, keyless_allowed: bool) -> None:
        self._tenants = tenants
        self._rate_limits = rate_limits
        self._defaults = defaults
        self._keyless_allowed = keyless_allowed
        self._keyless: tuple[float, Caller | None] = (-KEYLESS_CHECK_SECONDS, None)
        self._last_use: dict[str, float] = {}
        self._mutex = threading.Lock()

    def keyless_caller(self) -> Caller | None:
        """The caller of requests without a key when these are served now, from the last look; else None."""
        checked_at, caller = self._keyless
        if time.monotonic() - checked_at < KEYLESS_CHECK_SECONDS:
            return caller
        return None

    def keyless_known(self) -> bool:
        """Whether ``keyless_caller`` answers from a fresh look (else call ``admit``, which looks)."""
        return time.monotonic() - self._keyless[0] < KEYLESS_CHECK_SECONDS

    def serves_without_keys(self) -> bool:
        """Whether requests without a key are served now: allowed, and no active key exists."""
        return self._keyless_allowed and not self._tenants.any_active_key()

    def admit(self, authorization: str | None) -> Admission:
        """The caller of a request with this Authorization header, which takes a token from its key's bucket.

        Raises ``Unauthenticated`` or ``RateLimited``; storage failures as the store raises them.
        """
        if authorization is None:
            caller = self._look_keyless()
            if caller is None:
                raise Unauthenticated(
                    "this server requires an API key: send it as 'Authorization: Bearer osk_...'", invalid_token=False
                )
            return Admission(caller=caller, rate=None)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send the API key as 'Authorization: Bearer osk_...'", invalid_token=True)
        caller = self._caller_of(token.strip())
        rate = caller.limits.rate
        if rate is None or caller.key_id is None:
            return Admission(caller=caller, rate=None)
        allowed, tat, now = self._rate_limits.take(caller.key_id, interval=rate.interval, capacity=rate.capacity)
        decided = decision(rate, allowed=allowed, tat=tat, now=now)
        if not allowed:
            raise RateLimited(rate, decided)
        return Admission(caller=caller, rate=(rate, decided))

    def _caller_of(self, token: str) -> Caller:
        parsed = keys.parse(token)
        invalid = Unauthenticated("the API key is not valid: it is unknown, revoked, or mistyped", invalid_token=True)
        if parsed is None:
            raise invalid
        key_id, secret = parsed
        found = self._tenants.key(key_id)
        if found is None:
            raise invalid
        key, tenant = found
        if key.revoked_at is not None or not keys.secret_matches(secret, key.secret_hash):
            raise invalid
        self._note_use(key.id)
        return Caller(
            tenant=key.tenant, key_id=key.id, admin=key.admin, limits=self._defaults.overridden(tenant.limits)
        )

    def _look_keyless(self) -> Caller | None:
        caller = None
        if self.serves_without_keys():
            tenant = self._tenants.tenant(DEFAULT_TENANT)
            caller = anonymous(self._defaults.overridden(tenant.limits if tenant else {}))
        self._keyless = (time.monotonic(), caller)
        return caller

    def _note_use(self, key_id: str) -> None:
        moment = time.monotonic()
        with self._mutex:
            if moment - self._last_use.get(key_id, -LAST_USE_EVERY_SECONDS) < LAST_USE_EVERY_SECONDS:
                return
            self._last_use[key_id] = moment
        self._tenants.touch(key_id, now=_now())
