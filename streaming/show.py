"""`lakehouse show`: read any table the way a dashboard would, without a JVM.

Tables are opened with delta-rs (the `deltalake` package) and queried with DuckDB over Arrow,
so `show` also proves that the tables stay readable by engines other than Spark.
"""

from __future__ import annotations

import re
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


def read_table(
    config: Config, name: str, where: str | None = None, limit: int = 20
) -> tuple[list[str], list[tuple[Any, ...]], int]:
    """(columns, first `limit` rows matching `where`, number of matching rows)."""
    import duckdb
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    location = table_location(config, name)
    try:
        dataset = DeltaTable(
            delta_rs_uri(location), storage_options=storage_options(config)
        ).to_pyarrow_dataset()
    except TableNotFoundError:
        raise ConfigError(
            f"table {name} does not exist at {location}",
            hint="run the layer that writes it first, e.g. `lakehouse run all --once`",
        ) from None
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
