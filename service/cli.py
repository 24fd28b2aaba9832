"""``optim-service serve``: run the API with uvicorn."""

import argparse
import os

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="optim-service", description="Training as a service: the HTTP API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--database-url", help="overrides OPTIM_DATABASE_URL (default: SQLite under ./data)")
    serve.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.database_url:
        os.environ["OPTIM_DATABASE_URL"] = args.database_url
    uvicorn.run(
        "service.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )
