"""API keys and tenant limits for tests, made as an operator makes them: with ``optim-service keys`` and
``optim-service tenants``, run in-process on the test's database."""

import contextlib
import io
import os
from collections.abc import Iterator

from service.cli import main


@contextlib.contextmanager
def _database(database_url: str) -> Iterator[None]:
    before = os.environ.get("OPTIM_DATABASE_URL")
    os.environ["OPTIM_DATABASE_URL"] = database_url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OPTIM_DATABASE_URL", None)
        else:
            os.environ["OPTIM_DATABASE_URL"] = before


def run_cli(database_url: str, *argv: str) -> str:
    """What ``optim-service ARGV`` prints, run on ``database_url``."""
    output = io.StringIO()
    with _database(database_url), contextlib.redirect_stdout(output):
        main(list(argv))
    return output.getvalue()


def create_key(database_url: str, tenant: str, *, admin: bool = False) -> str:
    """A new key of ``tenant``: the last line ``keys create`` prints."""
    printed = run_cli(database_url, "keys", "create", "--tenant", tenant, *(["--admin"] if admin else []))
    return printed.rstrip("\n").splitlines()[-1]


def key_id(key: str) -> str:
    return key.split("_")[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
