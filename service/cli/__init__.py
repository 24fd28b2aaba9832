"""``optim-service serve``: run the API; ``migrate`` and ``backup`` for its database; ``keys`` and
``tenants`` for who may use it (``tenants.py``)."""

import argparse
import os
import sys
from pathlib import Path

from service.cli import tenants
from service.config import Settings
from service.server import run
from service.server.metrics_files import metrics_directory
from service.store.schema import ensure_schema, head_revision
from service.store.sql import build_engine
from service.store.sqlite.backup import BackupError, backup_sqlite
from service.tenancy.startup import InsecureStart


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="optim-service", description="Training as a service: the HTTP API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--database-url", help="overrides OPTIM_DATABASE_URL (default: SQLite under ./data)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes sharing the port and the database (default 1); one per core serves the most steps. "
        "A process that dies is replaced.",
    )
    serve.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="do not log each request (saves CPU)"
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve requests without an API key on a non-loopback address while no key exists: anyone who can "
        "reach the port can then read, change and delete every session",
    )
    migrate = commands.add_parser("migrate", help="upgrade the database schema to this version's, then exit")
    migrate.add_argument("--database-url", help="overrides OPTIM_DATABASE_URL")
    backup = commands.add_parser(
        "backup",
        help="copy a SQLite deployment (the database and its array files) consistently, while it runs",
        description="Copy the SQLite database (SQLite's online backup) and the array file each of its rows points "
        "at into DESTINATION, holding the database's write lock meanwhile: writes wait, reads go on. For "
        "PostgreSQL, use pg_dump.",
    )
    backup.add_argument("destination", type=Path, help="a directory, created if missing, that holds no database yet")
    backup.add_argument("--database-url", help="overrides OPTIM_DATABASE_URL")
    tenants.add_commands(commands)
    args = parser.parse_args(argv)
    if getattr(args, "database_url", None):
        os.environ["OPTIM_DATABASE_URL"] = args.database_url
    if args.command in ("keys", "tenants"):
        tenants.run(args)
        return
    if args.command == "migrate":
        settings = Settings()
        engine = build_engine(settings.database_url)
        try:
            ensure_schema(engine, upgrade=True)
        finally:
            engine.dispose()
        print(f"schema at revision {head_revision()}")
        return
    if args.command == "backup":
        try:
            summary = backup_sqlite(database_url=Settings().database_url, destination=args.destination)
        except BackupError as error:
            sys.exit(f"optim-service backup: {error}")
        print(
            f"backed up {summary.sessions} sessions to {summary.database} "
            f"and {summary.array_files} array files ({summary.array_bytes} bytes) beside it"
        )
        return
    # The worker processes read these, as every setting, from the environment.
    os.environ["OPTIM_HOST"] = args.host
    if args.insecure_no_auth:
        os.environ["OPTIM_INSECURE_NO_AUTH"] = "true"
    # Before anything imports prometheus-client (check_serving does): the workers count into files there.
    with metrics_directory():
        try:
            check_serving(Settings())
        except InsecureStart as refusal:
            sys.exit(f"optim-service: {refusal}")
        run.serve(
            host=args.host, port=args.port, workers=args.workers, log_level=args.log_level, access_log=args.access_log
        )


def check_serving(settings: Settings) -> None:
    """Refuse, before any worker starts, what each worker would refuse: serving keyless on a public address.
    Any other failure to open the store is left to the workers, which report it as they fail to start."""
    from service.app import prepare_tenancy, store_settings
    from service.store import SqlSessionStore
    from service.store.tenants import Tenants

    try:
        store = SqlSessionStore(settings.database_url, store_settings(settings))
    except Exception:
        return
    try:
        prepare_tenancy(settings, Tenants(store))
    finally:
        store.close()
