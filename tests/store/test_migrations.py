"""The schema is versioned: migrations build exactly the tables the queries use, and a server
started on an older database upgrades it, or refuses to start naming both versions."""

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store.schema import SchemaOutOfDate, current_revision, head_revision
from service.store.sql import SqlSessionStore, StoreSettings, build_engine
from service.store.tables import metadata, rate_limit_metadata


def test_the_migrated_schema_is_exactly_the_tables_the_queries_use(new_database: Callable[[], str]) -> None:
    url = new_database()
    SqlSessionStore(url).close()
    engine = build_engine(url)
    expected = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(expected)
    if engine.dialect.name == "postgresql":
        # The rate limits' table is PostgreSQL's alone (UNLOGGED); SQLite keeps it in a file of its own.
        rate_limit_metadata.tables["rate_limits"].to_metadata(expected)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), expected)
    finally:
        engine.dispose()

    assert differences == []


def test_a_server_on_an_older_database_upgrades_it_on_start(new_database: Callable[[], str]) -> None:
    url = new_database()
    engine = build_engine(url)
    try:
        assert current_revision(engine) is None

        SqlSessionStore(url).close()

        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_without_auto_migrate_a_server_on_an_older_database_refuses_to_start_naming_both_versions(
    new_database: Callable[[], str],
) -> None:
    url = new_database()

    with pytest.raises(SchemaOutOfDate, match=f"revision none but this server needs {head_revision()}"):
        SqlSessionStore(url, StoreSettings(auto_migrate=False))

    engine = build_engine(url)
    try:
        assert "sessions" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
