"""The schema's version: upgrade the database on start, or refuse to start with a clear message."""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x6F7074696D  # any constant shared by every replica
"""PostgreSQL advisory lock taken while migrating, so replicas starting together migrate once."""


class SchemaOutOfDate(RuntimeError):
    """The database's schema is older than this server's and upgrading was not allowed."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ensure_schema(engine: Engine, *, upgrade: bool) -> None:
    """Bring the schema to this server's version, or raise SchemaOutOfDate if ``upgrade`` is off."""
    head = head_revision()
    if current_revision(engine) == head:
        return
    with engine.connect() as connection:
        connection.info["writes"] = True
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                current = MigrationContext.configure(connection).get_current_revision()
                if current == head:
                    return
                if not upgrade:
                    raise SchemaOutOfDate(
                        f"the database schema is at revision {current or 'none'} but this server needs {head}; "
                        "run `optim-service migrate`, or start with OPTIM_AUTO_MIGRATE=true"
                    )
                config = _config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            connection.info.pop("writes", None)
