"""API keys: ``osk_<id>_<secret>``, with a public id to find the key by and a secret kept only as a hash.

The id (12 lowercase hex digits) names the key in listings and logs; the secret (32
random bytes, URL-safe base64: 256 bits) is what proves it. The recognisable prefix
lets secret scanners find keys that leaked into code or logs. The database keeps the
SHA-256 of the secret, which a high-entropy secret makes as good as a slow hash, and
a presented secret is compared with it in constant time.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "osk_"
KEY_PATTERN = re.compile(r"osk_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""Tenant names: lowercase letters, digits, '-' and '_', at most 63 characters."""


@dataclass(frozen=True)
class MintedKey:
    id: str
    secret_hash: str
    token: str
    """The whole key, as the client sends it; shown once and never stored."""


def mint() -> MintedKey:
    """A new random key."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return MintedKey(id=key_id, secret_hash=hash_secret(secret), token=f"{PREFIX}{key_id}_{secret}")


def parse(token: str) -> tuple[str, str] | None:
    """A key's id and secret, or None if ``token`` is not shaped like a key."""
    match = KEY_PATTERN.fullmatch(token)
    return None if match is None else (match["id"], match["secret"])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    """Whether ``secret`` is the one ``secret_hash`` was made from, in time independent of where they differ."""
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def valid_tenant(name: str) -> bool:
    return TENANT_PATTERN.fullmatch(name) is not None
