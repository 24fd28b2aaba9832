"""Secure by default: a server serves requests without keys only on loopback, and only while none exists.

Bound to any other address with no key, it refuses to start, naming the command that
creates one and the flag that opts out. A deployment with no way to run that command
first (a container) passes its first key in: ``OPTIM_BOOTSTRAP_KEY`` or a file.
"""

import ipaddress
import logging
from datetime import UTC, datetime

from service.store.tenants import Tenants
from service.tenancy import keys

log = logging.getLogger("service")

OPT_OUT = "--insecure-no-auth (OPTIM_INSECURE_NO_AUTH=true)"


class InsecureStart(RuntimeError):
    """The server would serve every session to anyone who can reach it; it does not start."""


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def store_bootstrap_key(tenants: Tenants, token: str, *, tenant: str, admin: bool) -> None:
    """Store the bootstrap key if it is new; a revoked one stays revoked."""
    parsed = keys.parse(token.strip())
    if parsed is None:
        raise InsecureStart(
            "the bootstrap key is not an API key of this service (osk_<12 hex digits>_<43 characters>); make one "
            "with `optim-service keys generate`"
        )
    if not keys.valid_tenant(tenant):
        raise InsecureStart(f"the bootstrap tenant {tenant!r} is not a tenant name (lowercase letters, digits, - _)")
    key_id, secret = parsed
    found = tenants.key(key_id)
    if found is None:
        tenants.add_key(
            key_id=key_id,
            tenant=tenant,
            secret_hash=keys.hash_secret(secret),
            admin=admin,
            now=datetime.now(UTC).replace(tzinfo=None),
        )
        log.info("stored the bootstrap API key %s of tenant %r", key_id, tenant)
        return
    key, _ = found
    if not keys.secret_matches(secret, key.secret_hash):
        raise InsecureStart(f"another key with the bootstrap key's id {key_id} exists; generate a new bootstrap key")
    if key.revoked_at is not None:
        log.warning("the bootstrap API key %s was revoked, and stays revoked", key_id)


def check_start(*, host: str, insecure_no_auth: bool, tenants: Tenants) -> tuple[int, str]:
    """How the server will serve, as a log level and line; ``InsecureStart`` if it would serve anyone without a
    key on a non-loopback address (and was not told to)."""
    if tenants.any_active_key():
        return logging.INFO, f"serving on {host}; every request to /v1 needs an API key"
    if is_loopback(host):
        return logging.WARNING, (
            f"serving WITHOUT authentication on {host} (loopback only): no API key exists. Once one does "
            "(`optim-service keys create --tenant NAME`), every request needs one."
        )
    if insecure_no_auth:
        return logging.WARNING, (
            f"serving WITHOUT authentication on {host}, reachable from other machines, because of {OPT_OUT}: "
            "anyone who can reach this port can read, change and delete every session"
        )
    raise InsecureStart(
        f"refusing to serve on {host} without API keys: anyone who can reach it could read, change and delete "
        "every session. Create a key first with `optim-service keys create --tenant NAME` (or pass one in with "
        f"OPTIM_BOOTSTRAP_KEY or OPTIM_BOOTSTRAP_KEY_FILE), listen on 127.0.0.1, or start with {OPT_OUT}."
    )
