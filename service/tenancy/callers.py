"""Who a request comes from: the tenant, the key, and what that tenant may hold and send."""

from dataclasses import dataclass

from service.store import Quotas
from service.store.tables import DEFAULT_TENANT
from service.tenancy.rate import RateLimit


@dataclass(frozen=True)
class Limits:
    """Quotas and a rate limit; ``None`` (or 0 in settings) for none."""

    max_sessions: int | None
    max_bytes: int | None
    max_params: int | None
    requests_per_second: float | None
    burst: int | None

    def overridden(self, own: dict[str, float | int | None]) -> "Limits":
        """These defaults, with the tenant's own limits where it has them."""

        def pick(name: str, default: float | int | None) -> float | int | None:
            value = own.get(name)
            return default if value is None else value

        return Limits(
            max_sessions=_count(pick("max_sessions", self.max_sessions)),
            max_bytes=_count(pick("max_bytes", self.max_bytes)),
            max_params=_count(pick("max_params", self.max_params)),
            requests_per_second=_rate(pick("requests_per_second", self.requests_per_second)),
            burst=_count(pick("burst", self.burst)),
        )

    @property
    def quotas(self) -> Quotas:
        return Quotas(max_sessions=self.max_sessions, max_bytes=self.max_bytes, max_params=self.max_params)

    @property
    def rate(self) -> RateLimit | None:
        if not self.requests_per_second:
            return None
        return RateLimit(requests_per_second=self.requests_per_second, burst=max(1, self.burst or 1))


def _count(value: float | int | None) -> int | None:
    """A limit as stored or set: 0 means none."""
    return None if not value else int(value)


def _rate(value: float | int | None) -> float | None:
    return None if not value else float(value)


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None
    """None when the server serves requests without keys (on loopback, before any key exists)."""
    admin: bool
    limits: Limits

    @property
    def quotas(self) -> Quotas:
        return self.limits.quotas


NO_LIMITS = Limits(max_sessions=None, max_bytes=None, max_params=None, requests_per_second=None, burst=None)


def anonymous(limits: Limits = NO_LIMITS) -> Caller:
    return Caller(tenant=DEFAULT_TENANT, key_id=None, admin=False, limits=limits)
