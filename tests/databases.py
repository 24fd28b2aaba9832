"""The databases the service's tests run on: SQLite always, PostgreSQL when a URL is given.

``OPTIM_TEST_POSTGRES_URL`` (for example ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
names a PostgreSQL database; each test gets a schema of its own there, dropped afterwards.
``.ci/run`` sets it, so in CI every PostgreSQL test runs.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

POSTGRES_URL_VARIABLE = "OPTIM_TEST_POSTGRES_URL"
NO_POSTGRES = f"{POSTGRES_URL_VARIABLE} is not set, so there is no PostgreSQL to test against"


def postgres_base_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VARIABLE) or None


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema of their own, which is dropped on exit."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


ENGINES = ("sqlite", "postgresql")


@contextmanager
def fresh_database(engine: str, directory: Path) -> Iterator[str]:
    """The URL of a new, empty database: a SQLite file in ``directory``, or a PostgreSQL schema."""
    if engine == "sqlite":
        yield f"sqlite:///{directory / f'optim-{uuid.uuid4().hex[:12]}.sqlite3'}"
        return
    base_url = postgres_base_url()
    if base_url is None:
        pytest.skip(NO_POSTGRES)
    with postgres_schema(base_url) as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL on a schema of this test's own; skips when no PostgreSQL is configured."""
    base_url = postgres_base_url()
    if base_url is None:
        pytest.skip(NO_POSTGRES)
    with postgres_schema(base_url) as url:
        yield url
