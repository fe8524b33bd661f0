"""`lakehouse show`: read any table the way a dashboard would, without a JVM.

Tables are opened with delta-rs (the `deltalake` package) and queried with DuckDB over Arrow,
so `show` also proves that the tables stay readable by engines other than Spark.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from streaming.config import Config
from streaming.errors import ConfigError
from streaming.s3.storage import delta_rs_uri, storage_options

_NAME = re.compile(r"^(bronze|silver|quarantine|gold)[./]([A-Za-z0-9_/]+)$")


def table_location(config: Config, name: str) -> str:
    match = _NAME.match(name)
    if not match:
        raise ConfigError(
            f"unknown table name {name!r}",
            hint="name a table as <layer>.<table>, e.g. gold.demand_by_zone_hour",
        )
    return config.table_path(match[1], match[2])


def open_table(config: Config, name: str, as_of: str | None = None) -> Any:
    """The table (delta-rs), as of a version number or an ISO timestamp if given."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    location = table_location(config, name)
    try:
        table = DeltaTable(delta_rs_uri(location), storage_options=storage_options(config))
    except TableNotFoundError:
        raise ConfigError(
            f"table {name} does not exist at {location}",
            hint="run the layer that writes it first, e.g. `lakehouse run all --once`",
        ) from None
    if as_of is None:
        return table
    try:
        table.load_as_version(int(as_of) if as_of.isdigit() else _timestamp(as_of))
    except (DeltaError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"--as-of {as_of!r}: {name} cannot be read there ({first})",
            hint=f"versions 0 to {table.version()}, or an ISO time such as 2026-12-04T10:00:00Z; "
            "`lakehouse history` lists them",
        ) from None
    return table


def _timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def history(config: Config, name: str, limit: int) -> list[dict[str, Any]]:
    keep = ("version", "timestamp", "operation", "operationMetrics", "userMetadata")
    entries = open_table(config, name).history(limit)
    for entry in entries:
        entry["timestamp"] = datetime.fromtimestamp(entry["timestamp"] / 1000, UTC).isoformat()
    return [{k: e.get(k) for k in keep} for e in entries]


def read_table(
    config: Config, name: str, where: str | None = None, limit: int = 20, as_of: str | None = None
) -> tuple[list[str], list[tuple[Any, ...]], int]:
    """(columns, first `limit` rows matching `where`, number of matching rows)."""
    import duckdb

    dataset = open_table(config, name, as_of).to_pyarrow_dataset()
    connection = duckdb.connect()
    connection.register("t", dataset)
    condition = f" WHERE {where}" if where else ""
    try:
        total = connection.execute(f"SELECT count(*) FROM t{condition}").fetchone()
        result = connection.execute(f"SELECT * FROM t{condition} LIMIT {int(limit)}")
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"--where {where!r} is not valid: {first}") from None
    columns = [d[0] for d in result.description]
    return columns, result.fetchall(), int(total[0]) if total else 0


def render(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """A plain aligned text table."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
