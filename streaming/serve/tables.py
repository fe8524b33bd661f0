"""Reads of one table for one role: delta-rs opens the Delta table (refreshed when a new version
lands), DuckDB runs the query over Arrow with every value bound as a parameter.

Identifiers come only from the table's own schema (a filter or order names a column, which is
looked up, then quoted); values are never pasted into SQL.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from streaming.catalog import TableRef
from streaming.s3.storage import delta_rs_uri, storage_options

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds

    from streaming.config import Config
    from streaming.serve.policy import ColumnView

MAX_LIMIT = 10_000
OPERATORS = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "in": "IN"}
_TIME_TRAVEL_KEPT = 16  # table versions opened for `as_of`, least recently used dropped


class BadRequest(Exception):
    """A request this table cannot answer (400), with a one-line reason."""


class Forbidden(Exception):
    """A request the role may not make (403), with a one-line reason."""


class NotFound(Exception):
    """No such table or version (404), with a one-line reason."""


@dataclass(frozen=True)
class Snapshot:
    """One version of one table, ready to query."""

    ref: TableRef
    version: int
    dataset: ds.Dataset
    types: dict[str, str]  # column -> DuckDB type, in the table's order


@dataclass
class _Open:
    table: Any  # deltalake.DeltaTable
    snapshot: Snapshot
    checked: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class TableCache:
    """Open tables, each looking for a new Delta version at most every `refresh_seconds`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.refresh = config.serve.refresh_seconds
        self._open: dict[TableRef, _Open] = {}
        self._versions: OrderedDict[tuple[TableRef, int], Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def snapshot(self, ref: TableRef, as_of: int | None = None) -> Snapshot:
        if as_of is not None:
            return self._version(ref, as_of)
        with self._lock:
            opened = self._open.get(ref)
        if opened is None:
            table = self._table(ref)
            opened = _Open(table, _snapshot(ref, table), time.monotonic())
            with self._lock:
                opened = self._open.setdefault(ref, opened)
        with opened.lock:
            if time.monotonic() - opened.checked >= self.refresh:
                opened.table.update_incremental()
                opened.checked = time.monotonic()
                if opened.table.version() != opened.snapshot.version:
                    opened.snapshot = _snapshot(ref, opened.table)
            return opened.snapshot

    def history(self, ref: TableRef, limit: int) -> list[dict[str, Any]]:
        table = self._table(ref)
        keep = ("version", "timestamp", "operation", "operationMetrics", "userMetadata")
        return [{k: entry.get(k) for k in keep} for entry in table.history(limit)]

    def _version(self, ref: TableRef, version: int) -> Snapshot:
        key = (ref, version)
        with self._lock:
            if key in self._versions:
                self._versions.move_to_end(key)
                return self._versions[key]
        latest = self.snapshot(ref).version
        if not 0 <= version <= latest:
            raise NotFound(f"{ref} has versions 0 to {latest}; as_of={version} is not one")
        from deltalake.exceptions import DeltaError

        try:
            table = self._table(ref, version)
        except DeltaError as exc:  # a version whose log entry was cleaned up
            raise NotFound(f"{ref} version {version} can no longer be read: {exc}") from None
        snapshot = _snapshot(ref, table)
        with self._lock:
            self._versions[key] = snapshot
            while len(self._versions) > _TIME_TRAVEL_KEPT:
                self._versions.popitem(last=False)
        return snapshot

    def _table(self, ref: TableRef, version: int | None = None) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(
                delta_rs_uri(ref.path(self.config)),
                version=version,
                storage_options=storage_options(self.config),
            )
        except TableNotFoundError:
            raise NotFound(f"{ref} has not been written yet") from None


def _snapshot(ref: TableRef, table: Any) -> Snapshot:
    import duckdb

    dataset = table.to_pyarrow_dataset()
    connection = duckdb.connect()
    connection.register("t", dataset)
    described = connection.execute("DESCRIBE SELECT * FROM t").fetchall()
    connection.close()
    return Snapshot(ref, table.version(), dataset, {row[0]: row[1] for row in described})


@dataclass(frozen=True)
class Filter:
    column: str
    operator: str  # a key of OPERATORS
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.column}:{self.operator}:{','.join(self.values)}"


def parse_filter(text: str) -> Filter:
    """`column:op:value` (`in` takes comma-separated values)."""
    column, _, rest = text.partition(":")
    operator, _, value = rest.partition(":")
    if not column or operator not in OPERATORS or not _:
        raise BadRequest(
            f"filter {text!r} is not column:op:value with op one of {', '.join(OPERATORS)}"
        )
    values = tuple(value.split(",")) if operator == "in" else (value,)
    return Filter(column, operator, values)


@dataclass(frozen=True)
class Read:
    """What a caller asked of a table."""

    columns: tuple[str, ...] = ()  # empty: every visible column
    filters: tuple[Filter, ...] = ()
    order: tuple[str, ...] = ()  # column, or -column for descending
    limit: int = 100
    offset: int = 0

    def check(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be 1 to {MAX_LIMIT}, got {self.limit}")
        if self.offset < 0:
            raise BadRequest(f"offset must be 0 or more, got {self.offset}")


@dataclass(frozen=True)
class Result:
    snapshot: Snapshot
    rows: pa.Table
    total: int  # rows matching the filters, over every page


def run(snapshot: Snapshot, view: ColumnView, read: Read) -> Result:
    """The page of `read` over `snapshot`, as `view`'s role sees it."""
    import duckdb

    read.check()
    visible = set(view.visible)
    selected = read.columns or view.visible
    for column in selected:
        if column not in visible:
            raise BadRequest(f"{snapshot.ref} has no column {column!r}")
    used = [f.column for f in read.filters] + [c.removeprefix("-") for c in read.order]
    for column in used:
        if column not in visible:
            raise BadRequest(f"{snapshot.ref} has no column {column!r}")
        if column in view.restricted():
            raise Forbidden(
                f"column {column} of {snapshot.ref} is masked for this role: "
                "it cannot be filtered or ordered by"
            )
    types = snapshot.types
    projection = ", ".join(
        f"CAST(NULL AS {types[c]}) AS {_quoted(c)}" if c in view.nulled else _quoted(c)
        for c in selected
    )
    conditions, parameters = _conditions(read.filters, types)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    order = [
        f"{_quoted(c.removeprefix('-'))} {'DESC' if c.startswith('-') else 'ASC'}"
        for c in read.order
    ]
    # Ties broken by every column the role may see (and order by): the same page each time.
    order += [
        _quoted(c)
        for c in view.visible
        if c not in view.restricted() and _orderable(types[c]) and c not in read.order
    ]
    order_by = f" ORDER BY {', '.join(order)} NULLS FIRST" if order else ""
    connection = duckdb.connect()
    try:
        connection.register("t", snapshot.dataset)
        total_row = connection.execute(f"SELECT count(*) FROM t{where}", parameters).fetchall()[0]
        rows = connection.sql(
            f"SELECT {projection} FROM t{where}{order_by} LIMIT ? OFFSET ?",
            params=[*parameters, read.limit, read.offset],
        ).to_arrow_table()
    except duckdb.ConversionException as exc:
        raise BadRequest(f"a filter value does not fit its column: {_first_line(exc)}") from None
    except duckdb.Error as exc:
        raise BadRequest(f"the read cannot run: {_first_line(exc)}") from None
    finally:
        connection.close()
    return Result(snapshot, rows, int(total_row[0]) if total_row else 0)


def _conditions(filters: tuple[Filter, ...], types: dict[str, str]) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    parameters: list[Any] = []
    for f in filters:
        cast = f"CAST(? AS {types[f.column]})"
        if f.operator == "in":
            conditions.append(f"{_quoted(f.column)} IN ({', '.join([cast] * len(f.values))})")
        else:
            conditions.append(f"{_quoted(f.column)} {OPERATORS[f.operator]} {cast}")
        parameters.extend(f.values)
    return conditions, parameters


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _orderable(duck_type: str) -> bool:
    return not any(marker in duck_type for marker in ("[]", "MAP", "STRUCT", "BLOB"))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


# Output formats: JSON (decimals as exact strings), CSV (nested values as JSON), Arrow IPC.
MEDIA = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
}


def render(result: Result, read: Read, output: str) -> bytes:
    if output == "arrow":
        import pyarrow as pa

        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, result.rows.schema) as writer:
            writer.write_table(result.rows)
        return sink.getvalue()
    if output == "csv":
        import pyarrow.csv as pacsv

        sink = io.BytesIO()
        pacsv.write_csv(_flat(result.rows), sink)
        return sink.getvalue()
    document = {
        "table": str(result.snapshot.ref),
        "version": result.snapshot.version,
        "total": result.total,
        "offset": read.offset,
        "limit": read.limit,
        "columns": result.rows.column_names,
        "rows": result.rows.to_pylist(),
    }
    return json.dumps(document, default=json_value, separators=(",", ":")).encode()


def json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON")


def _flat(rows: pa.Table) -> pa.Table:
    """Nested columns (lists, maps, structs) as JSON text: CSV has no nesting."""
    import pyarrow as pa

    columns = []
    for name in rows.column_names:
        column = rows.column(name)
        if pa.types.is_nested(column.type):
            text = [
                None if v is None else json.dumps(v, default=json_value) for v in column.to_pylist()
            ]
            column = pa.array(text, pa.string())
        columns.append(column)
    return pa.table(columns, names=rows.column_names)
