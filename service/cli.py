"""``optim-service serve``: run the API with uvicorn."""

import argparse
import os

import uvicorn

from service.config import Settings
from service.store.schema import ensure_schema, head_revision
from service.store.sql import build_engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="optim-service", description="Training as a service: the HTTP API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--database-url", help="overrides OPTIM_DATABASE_URL (default: SQLite under ./data)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1: one per container)"
    )
    migrate = commands.add_parser("migrate", help="upgrade the database schema to this version's, then exit")
    migrate.add_argument("--database-url", help="overrides OPTIM_DATABASE_URL")
    args = parser.parse_args(argv)
    if args.database_url:
        os.environ["OPTIM_DATABASE_URL"] = args.database_url
    if args.command == "migrate":
        settings = Settings()
        engine = build_engine(settings.database_url)
        try:
            ensure_schema(engine, upgrade=True)
        finally:
            engine.dispose()
        print(f"schema at revision {head_revision()}")
        return
    uvicorn.run(
        "service.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=args.workers,
        timeout_graceful_shutdown=10,
    )
