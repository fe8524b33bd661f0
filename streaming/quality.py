"""Data-quality rules: Great-Expectations-named expectations compiled to Spark column expressions.

Each rule turns (column, parameters) into a boolean Column that is true where a row passes.
Like Great Expectations, every rule but `expect_column_values_to_not_be_null` lets nulls pass:
presence is its own rule. No per-row Python, no collection to the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

ACTIONS = ("warn", "quarantine", "fail")


@dataclass(frozen=True)
class Rule:
    required: frozenset[str]
    optional: frozenset[str]
    build: Callable[[Column, Mapping[str, Any]], Column]

    def check(self, params: Mapping[str, Any]) -> None:
        """Parameter names and values, checked when the contract loads (not when Spark runs)."""
        missing = self.required - set(params)
        unknown = set(params) - self.required - self.optional - {"when"}
        if missing:
            raise ValueError(f"missing parameter(s) {sorted(missing)}")
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}")
        if "tolerance" in params:
            _interval(params["tolerance"])
        when = params.get("when", {})
        if not isinstance(when, Mapping) or not all(isinstance(v, list) for v in when.values()):
            raise ValueError("when must map columns to lists of values, e.g. {status = ['done']}")


def _not_null(column: Column, _: Mapping[str, Any]) -> Column:
    return column.isNotNull()


def _in_set(column: Column, params: Mapping[str, Any]) -> Column:
    return column.isNull() | column.isin(list(params["value_set"]))


def _between(column: Column, params: Mapping[str, Any]) -> Column:
    passes = column.isNull() | ~F.isnan(column.cast("double"))
    if "min_value" in params:
        low = F.lit(params["min_value"])
        passes = passes & (column > low if params.get("strict_min") else column >= low)
    if "max_value" in params:
        high = F.lit(params["max_value"])
        passes = passes & (column < high if params.get("strict_max") else column <= high)
    return column.isNull() | passes


def _regex(column: Column, params: Mapping[str, Any]) -> Column:
    return column.isNull() | column.rlike(params["regex"])


def _not_in_future(column: Column, params: Mapping[str, Any]) -> Column:
    tolerance = F.expr(f"INTERVAL {_interval(params.get('tolerance', '0 seconds'))}")
    return column.isNull() | (column <= F.current_timestamp() + tolerance)


def _lengths_between(column: Column, params: Mapping[str, Any]) -> Column:
    return _between(F.length(column), params)


_UNITS = ("second", "minute", "hour", "day")


def _interval(text: str) -> str:
    """'5 minutes' -> '5 MINUTE' (a Spark interval literal); anything else is a ValueError."""
    parts = str(text).split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1].rstrip("s") not in _UNITS:
        raise ValueError(f"tolerance {text!r} is not a duration like '5 minutes'")
    return f"{int(parts[0])} {parts[1].rstrip('s').upper()}"


RULES: dict[str, Rule] = {
    "expect_column_values_to_not_be_null": Rule(frozenset(), frozenset(), _not_null),
    "expect_column_values_to_be_in_set": Rule(frozenset({"value_set"}), frozenset(), _in_set),
    "expect_column_values_to_be_between": Rule(
        frozenset(), frozenset({"min_value", "max_value", "strict_min", "strict_max"}), _between
    ),
    "expect_column_values_to_match_regex": Rule(frozenset({"regex"}), frozenset(), _regex),
    "expect_column_values_to_not_be_in_future": Rule(
        frozenset(), frozenset({"tolerance"}), _not_in_future
    ),
    "expect_column_value_lengths_to_be_between": Rule(
        frozenset(), frozenset({"min_value", "max_value"}), _lengths_between
    ),
}


def passes(rule: str, column: Column, params: Mapping[str, Any]) -> Column:
    """The Column that is true where a row satisfies `rule` (never null).

    `when = {column = [values]}` limits a rule to the rows where every named column holds one
    of its values (Great Expectations' row_condition, kept structured rather than as SQL text).
    """
    result = F.coalesce(RULES[rule].build(column, params), F.lit(False))
    for other, values in params.get("when", {}).items():
        result = result | ~F.coalesce(F.col(other).isin(list(values)), F.lit(False))
    return result
