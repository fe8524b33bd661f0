"""Freshness and lag arithmetic over Delta history and lag samples (delta-rs, no JVM).

Freshness of a table at a commit = the commit's timestamp - the newest source timestamp visible
in the table at that version: `_kafka_timestamp` for Bronze and Silver, `last_event_time` for
Gold (mapped back to when its record reached Kafka). The newest value comes from the files'
statistics where every visible file has them, from the column itself otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DATA_OPERATIONS = ("WRITE", "STREAMING UPDATE", "MERGE")
FLAT_GROWTH = 0.05  # lag may grow by at most 5 % of the offered rate and still count as flat
MIN_LOWS = 3  # commits needed in a step to fit a trend


@dataclass(frozen=True)
class Commit:
    version: int
    committed: float  # unix seconds
    newest: float  # newest source timestamp visible at this version, unix seconds


@dataclass(frozen=True)
class LagSample:
    at: float  # unix seconds
    end_offsets: int  # sum over partitions of the broker's high watermarks
    committed: int  # sum over partitions of Bronze's committed offsets


def data_commits(path: str, column: str, since: float, until: float) -> list[Commit]:
    """Every commit in [since, until] that wrote data, with the newest `column` value then."""
    from deltalake import DeltaTable

    commits = []
    for entry in DeltaTable(path).history():
        committed = entry["timestamp"] / 1000.0
        if entry["operation"] not in DATA_OPERATIONS or not since <= committed <= until:
            continue
        newest = newest_value(DeltaTable(path, version=entry["version"]), column)
        if newest is not None:
            commits.append(Commit(entry["version"], committed, newest))
    return sorted(commits, key=lambda c: c.version)


def newest_value(table: Any, column: str) -> float | None:
    """max(column) over the table version, in unix seconds (None for an empty table)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    actions = pa.table(table.get_add_actions(flatten=True))
    stat = f"max.{column}"
    if actions.num_rows == 0:
        return None
    if stat in actions.column_names and actions.column(stat).null_count == 0:
        values = actions.column(stat)
    else:  # no statistics for this column: read it
        values = table.to_pyarrow_table(columns=[column]).column(column)
    newest = pc.max(values).as_py()
    if newest is None:
        return None
    if isinstance(newest, datetime):
        return (newest if newest.tzinfo else newest.replace(tzinfo=UTC)).timestamp()
    return float(newest)


def freshness(
    commits: Sequence[Commit], to_kafka_time: Callable[[float], float] | None = None
) -> list[float]:
    """Seconds from the newest record's Kafka timestamp to its commit, one value per commit."""
    convert = to_kafka_time or (lambda t: t)
    return [round(c.committed - convert(c.newest), 3) for c in commits]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 3)


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "commits": len(values),
        "p50_s": percentile(values, 50),
        "p95_s": percentile(values, 95),
        "max_s": round(max(values), 3) if values else None,
    }


def lag_trend(
    samples: Sequence[LagSample], rate: float, start: float, end: float
) -> dict[str, Any]:
    """Does Bronze's Kafka lag stay flat while the sender runs (from `start` to `end`)?

    The lag is a saw-tooth: it grows between commits and drops at each. Its low points (the
    first sample after each commit) carry the trend without the teeth: a pipeline that keeps up
    has them level, one that falls behind has them climb at the rate it misses. The slope of a
    least-squares line through them, as a share of the offered rate, is the growth: flat below
    FLAT_GROWTH. Fewer than MIN_LOWS commits in the window cannot show a trend: `flat` is then
    None (undetermined), unless the lag never dropped at all, which is growth by definition.
    """
    window = [s for s in samples if start <= s.at <= end]
    if len(window) < 2:
        return {"flat": None, "growth": None, "reason": "fewer than two lag samples"}
    lags = [s.end_offsets - s.committed for s in window]
    figures: dict[str, Any] = {
        "max_lag_records": max(lags),
        "end_lag_records": lags[-1],
        "max_lag_seconds": round(max(lags) / rate, 2) if rate > 0 else None,
    }
    lows = [b for a, b in itertools.pairwise(window) if b.committed > a.committed]
    if not lows:
        return {**figures, "flat": False, "growth": 1.0, "commits": 0, "reason": "no commit"}
    if len(lows) < MIN_LOWS:
        reason = f"{len(lows)} commit(s) while sending: too few to show a trend"
        return {**figures, "flat": None, "growth": None, "commits": len(lows), "reason": reason}
    slope = _slope([p.at for p in lows], [p.end_offsets - p.committed for p in lows])
    growth = slope / rate if rate > 0 else math.inf
    return {
        **figures,
        "flat": growth < FLAT_GROWTH,
        "growth": round(growth, 4),
        "slope_records_per_s": round(slope, 1),
        "commits": len(lows),
    }


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
