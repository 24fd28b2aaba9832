"""The step's statements, run straight on the database driver's cursor.

SQLAlchemy's execution layer costs about 17 µs a statement in a tight loop, and more
inside a request (an execution context, the compiled cache's lookup, a result object,
each row processed through it): a small step's unit of work took 0.47 ms through
``Connection.execute`` against 0.41 ms this way, about 5% of a 1k step over HTTP
(``python -m benchmarks.driver_statements`` and ``benchmarks.step_phases``, and
docs/benchmarks.md). So the statements every step runs (reading the held session,
its Idempotency-Key record, and the UPDATE that saves it) stay here; all others go
through SQLAlchemy. A ``DriverStatement`` is a Core statement compiled once for the
engine's dialect. It runs on the cursor of the transaction's own connection,
with its parameters and result columns passed through the processors
SQLAlchemy's types give for that dialect, so the database receives, and the
caller gets back, what ``Connection.execute`` would have passed.
"""

from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class DriverStatement:
    sql: str
    positions: tuple[str, ...] | None
    """Parameter names in the order a positional paramstyle takes them; None for a named one."""
    bind_processors: Mapping[str, Processor]
    result_processors: tuple[Processor, ...]
    row_type: type[tuple[Any, ...]]
    driver_error: type[Exception]
    """The driver's base exception, whose instances leave as SQLAlchemy's wrappers of them."""

    @classmethod
    def compile(cls, statement: sa.Select[Any] | sa.Update | sa.Insert, dialect: Dialect) -> "DriverStatement":
        """``statement`` for ``dialect``; ValueError for one whose parameters are not all given at execution."""
        compiled = statement.compile(dialect=dialect)
        for name, bind in compiled.binds.items():
            if not bind.required or bind.expanding or bind.literal_execute:
                raise ValueError(f"parameter {name!r} is not a plain bindparam() given at execution: {statement}")
        if compiled.escaped_bind_names:
            raise ValueError(f"parameter names that {dialect.name} needs escaped: {compiled.escaped_bind_names}")
        bind_processors = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in compiled.binds.items()
        }
        columns = list(statement.selected_columns) if isinstance(statement, sa.Select) else []
        result_processors = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )
        row_type = namedtuple("Row", [column.name for column in columns])  # type: ignore[misc]
        positions = tuple(compiled.positiontup) if dialect.positional and compiled.positiontup is not None else None
        return cls(str(compiled), positions, bind_processors, result_processors, row_type, dialect.loaded_dbapi.Error)

    def _parameters(self, values: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
        processed = {
            name: value if (process := self.bind_processors.get(name)) is None else process(value)
            for name, value in values.items()
        }
        return processed if self.positions is None else [processed[name] for name in self.positions]

    def _executed(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """A cursor that has run the statement (the caller closes it); driver errors as SQLAlchemy raises them."""
        parameters = self._parameters(values)
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self.sql, parameters)
        except self.driver_error as error:
            # As SQLAlchemy does: a connection the database dropped is invalidated, so that the pool
            # replaces it instead of handing it out again.
            lost = connection.dialect.is_disconnect(error, connection.connection.dbapi_connection, cursor)  # type: ignore[arg-type]  # the driver's Error
            cursor.close()
            if lost:
                connection.invalidate(error)
            raise sa.exc.DBAPIError.instance(
                self.sql, parameters, error, self.driver_error, connection_invalidated=lost
            ) from error
        except BaseException:
            cursor.close()
            raise
        return cursor

    def rowcount(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Run the statement; the number of rows it matched."""
        cursor = self._executed(connection, values)
        try:
            count: int = cursor.rowcount
            return count
        finally:
            cursor.close()

    def first(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """Run the query; its first row, with attributes named as the columns, or None."""
        cursor = self._executed(connection, values)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        processed = zip(self.result_processors, row, strict=True)
        return self.row_type(*(value if process is None else process(value) for process, value in processed))
