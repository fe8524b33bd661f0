"""The Gold tables, one module each: the registry the writer, `verify` and table creation share.

A new Gold table is a module that defines `TABLE` (a `GoldTable`) and a line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from streaming.gold import battery, demand, journeys, revenue, utilization
from streaming.gold.table import GoldTable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TABLES: dict[str, GoldTable] = {
    m.TABLE.name: m.TABLE for m in (demand, utilization, revenue, battery, journeys)
}


def recompute(table: GoldTable, silver: Mapping[str, DataFrame]) -> DataFrame:
    """The whole table from the given Silver frames: what Gold must equal."""
    rows = table.build(silver)
    return demand.with_rolling(rows) if table.rolling else rows
