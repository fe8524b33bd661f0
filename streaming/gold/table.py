"""Gold aggregates as pure functions of Silver.

Each Gold table is described once (`GoldTable`): its key, how a Silver row maps to the key it
touches, which Silver dates a touched key needs, and how to build rows from Silver. The writer
runs `build` on the Silver rows of the keys a micro-batch touched; `verify` runs the same `build`
on all of Silver. Arithmetic is exact where it can be (counts, decimal sums, integer time), and
every rounding is deterministic, so incremental Gold and a recomputation compare equal, exactly.

A table whose keys keep growing through a long period (battery health: a vehicle's week) also
has an `Extension`: its rows carry their partial aggregates as `_` columns, and new Silver rows
extend them without reading the key's earlier Silver rows again. Partials and public columns
come from one `finish`, in the rebuild and in the extension alike, so the two agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MONEY = "decimal(18,2)"
LEVEL = "decimal(9,4)"
IN_TRIP = ("completed", "in_progress")
UPDATED_AT = "_updated_at"
TOTAL = "decimal(28,2)"  # a sum of money
DISTANCE = "decimal(28,3)"  # a sum of kilometres
SUM = "decimal(22,4)"  # a sum of levels (battery, trip minutes), exact
SILVER_VERSION = "_silver_version"  # an extended table's rows: the Silver version built from


@dataclass(frozen=True)
class Extension:
    """How new Silver inserts extend a table's stored rows without a rebuild.

    The writer extends a key when every change of the batch for it is an insert of a Silver
    version after the one its stored row was built from (SILVER_VERSION), with an event time
    after the row's `last_event_time`; any other key is rebuilt from Silver. `grow(stored, fresh)`
    returns the rows of the keys in `fresh` (new Silver rows: key columns and `columns`) from
    their stored rows, where there are any.
    """

    columns: tuple[str, ...]
    grow: Callable[[DataFrame, DataFrame], DataFrame]


@dataclass(frozen=True)
class Additive:
    """A table kept by partial aggregates, so a batch's Silver rows update it without reading
    Silver again.

    `partials` maps Silver rows (per source) to partial rows: the key columns and columns that
    several rows of one key can be combined from (counts, exact sums, minima, maxima, sorted
    sets of distinct members). `combine` folds any number of partial rows per key into one;
    `finish` derives the public columns from one partial row per key and keeps the partials
    as `_` columns. A batch then finishes combine(stored rows' partials + the batch's partials),
    and a recomputation finishes combine(partials of all of Silver): the same functions, so the
    two agree exactly.
    """

    partials: Callable[[Mapping[str, DataFrame]], DataFrame]
    combine: Callable[[DataFrame], DataFrame]
    finish: Callable[[DataFrame], DataFrame]

    def build(self, silver: Mapping[str, DataFrame]) -> DataFrame:
        return self.finish(self.combine(self.partials(silver)))


@dataclass(frozen=True)
class GoldTable:
    """One Gold table: its key, its Silver sources and how to build it.

    `sources` maps a Silver entity to the key columns of a Silver row, plus `_date`: the row's
    anchor date. A touched key needs the Silver partitions `_date + span[0] .. _date + span[1]`.
    `prune` names the key column the MERGE can prune target files by; `hour`, the key column
    that holds the hour of the rows' event time, so the rebuild reads only the touched hours.
    """

    name: str
    keys: tuple[str, ...]
    sources: Mapping[str, Callable[[], dict[str, Column]]]
    build: Callable[[Mapping[str, DataFrame]], DataFrame]
    span: tuple[int, int] = (0, 0)
    partition_by: tuple[str, ...] = ()
    prune: str | None = None
    rolling: bool = False  # demand's 7- and 28-day averages: see with_rolling, refresh_rolling
    hour: str | None = None  # a key column holding the rows' event hour (of the key's `date`)
    extend: Extension | None = None  # only for a table with one Silver source
    additive: Additive | None = None  # its rows are partial aggregates: see Additive

    def __post_init__(self) -> None:
        if self.extend is not None and len(self.sources) != 1:
            raise ValueError(f"{self.name}: an extension needs exactly one Silver source")


def avg(column: str, scale: int = 4) -> Column:
    """Average over an exact decimal sum, rounded once: the same value in any row order."""
    return F.round(F.avg(F.col(column).cast(LEVEL)), scale).cast("double")


def seconds_between(start: Column, end: Column) -> Column:
    return (F.unix_micros(end) - F.unix_micros(start)) / F.lit(1_000_000.0)


def members(column: str) -> Column:
    """The distinct values of `column` in a group, sorted: a set that partial rows can merge."""
    return F.array_sort(F.collect_set(F.col(column)))


def merged(column: str) -> Column:
    """The union of the member sets of a key's partial rows, sorted."""
    return F.array_sort(F.array_distinct(F.flatten(F.collect_list(F.col(column)))))


def ratio(total: str, count: str) -> Column:
    """An exact sum over its count, rounded once (null where there is nothing to average)."""
    return F.when(F.col(count) > 0, F.round(F.col(total) / F.col(count), 4).cast("double"))


def booking_keys(*names: str) -> Callable[[], dict[str, Column]]:
    return lambda: {n: F.col(n) for n in names} | {"_date": F.col("date")}


def in_trip() -> Column:
    return F.col("status").isin(*IN_TRIP)
