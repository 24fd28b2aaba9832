"""``optim-service keys`` and ``tenants``: API keys and per-tenant limits, kept in the database.

A key is shown once, when it is created, alone on the last line of the output; the
database keeps only its hash. Changes take effect at the next request on every
replica (a key is looked up at each use).
"""

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from service.config import Settings
from service.store import SqlSessionStore
from service.store.tenants import LIMIT_COLUMNS, Tenants
from service.tenancy import keys

LIMIT_OPTIONS = {
    "max_sessions": ("--max-sessions", int, "sessions the tenant may hold"),
    "max_bytes": ("--max-bytes", int, "bytes of arrays (params and optimizer state) its sessions may hold"),
    "max_params": ("--max-params", int, "params (array elements) one of its sessions may hold"),
    "requests_per_second": ("--requests-per-second", float, "requests per second each of its keys may send"),
    "burst": ("--burst", int, "requests each of its keys may send at once"),
}
assert set(LIMIT_OPTIONS) == set(LIMIT_COLUMNS)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def _tenants() -> Iterator[Tenants]:
    from service.app import store_settings

    settings = Settings()
    store = SqlSessionStore(settings.database_url, store_settings(settings))
    try:
        yield Tenants(store)
    finally:
        store.close()


def _tenant_name(text: str) -> str:
    if not keys.valid_tenant(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a tenant name: lowercase letters, digits, '-' and '_', at most 63 characters"
        )
    return text


def _limit(kind: type[int] | type[float]) -> Callable[[str], int | float | None]:
    def parse(text: str) -> int | float | None:
        if text == "default":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or 'default': {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be at least 0 (0: no limit), not {text}")
        return value

    return parse


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    key_commands = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = key_commands.add_parser(
        "create", help="create a key and print it (alone, on the last line); it is never shown again"
    )
    create.add_argument("--tenant", required=True, type=_tenant_name, help="the tenant the key acts for")
    create.add_argument(
        "--admin", action="store_true", help="an admin key also lists every tenant's sessions and their summaries"
    )
    listing = key_commands.add_parser("list", help="keys with their tenant, creation and last use (never secrets)")
    listing.add_argument("--tenant", type=_tenant_name, help="only this tenant's")
    revoke = key_commands.add_parser("revoke", help="revoke a key: it stops working at once, on every replica")
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    key_commands.add_parser(
        "generate", help="print a new random key without storing it (for OPTIM_BOOTSTRAP_KEY or its file)"
    )

    tenant_commands = commands.add_parser("tenants", help="per-tenant quotas and rate limits").add_subparsers(
        dest="tenants_command", required=True
    )
    change = tenant_commands.add_parser(
        "set", help="set a tenant's own limits ('default' restores the setting's, 0 means no limit)"
    )
    change.add_argument("name", type=_tenant_name)
    for column, (option, kind, text) in LIMIT_OPTIONS.items():
        change.add_argument(option, dest=column, type=_limit(kind), default=argparse.SUPPRESS, help=text)
    tenant_commands.add_parser("list", help="tenants with their own limits and their usage")


def run(args: argparse.Namespace) -> None:
    if args.command == "keys":
        _keys(args)
    else:
        _tenant_limits(args)


def _keys(args: argparse.Namespace) -> None:
    if args.keys_command == "generate":
        print(keys.mint().token)
        return
    with _tenants() as tenants:
        if args.keys_command == "create":
            minted = keys.mint()
            tenants.add_key(
                key_id=minted.id, tenant=args.tenant, secret_hash=minted.secret_hash, admin=args.admin, now=_now()
            )
            kind = "an admin key" if args.admin else "a key"
            print(f"created {kind} {minted.id} for tenant {args.tenant!r}; it is shown this once:")
            print(minted.token)
        elif args.keys_command == "list":
            rows = [
                [
                    key.id,
                    key.tenant,
                    "yes" if key.admin else "no",
                    _moment(key.created_at),
                    _moment(key.last_used_at),
                    _moment(key.revoked_at),
                ]
                for key in tenants.keys(tenant=args.tenant)
            ]
            _table(["id", "tenant", "admin", "created", "last used", "revoked"], rows)
        elif not tenants.revoke(args.key_id, now=_now()):
            sys.exit(f"optim-service keys revoke: no active key {args.key_id!r}")
        else:
            print(f"revoked key {args.key_id}")


def _tenant_limits(args: argparse.Namespace) -> None:
    settings = Settings()
    defaults = {
        "max_sessions": settings.tenant_max_sessions,
        "max_bytes": settings.tenant_max_bytes,
        "max_params": settings.session_max_params,
        "requests_per_second": settings.tenant_requests_per_second,
        "burst": settings.tenant_burst,
    }
    with _tenants() as tenants:
        if args.tenants_command == "set":
            changes = {column: getattr(args, column) for column in LIMIT_COLUMNS if hasattr(args, column)}
            tenants.set_limits(args.name, changes, now=_now())
        rows = []
        for tenant in tenants.tenants():
            limits = [_limit_text(tenant.limits[column], defaults[column]) for column in LIMIT_COLUMNS]
            rows.append([tenant.name, *limits, str(tenant.sessions), str(tenant.stored_bytes)])
        _table(["tenant", *LIMIT_COLUMNS, "sessions", "stored_bytes"], rows)


def _limit_text(own: float | int | None, default: float | int) -> str:
    value = default if own is None else own
    text = "none" if not value else f"{value:g}" if isinstance(value, float) else str(value)
    return text if own is not None else f"{text} (default)"


def _moment(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds") + "Z"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
