"""Every data-quality rule on tiny batch frames, with Great Expectations' null semantics.

Each rule compiles to a boolean Column; `passes` makes it never null. Every rule but
`expect_column_values_to_not_be_null` lets a null value pass: presence is its own rule.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming.contracts import load_contracts
from streaming.quality import ACTIONS, RULES, passes
from streaming.silver.transform import _bucket, validate

NOT_NULL = "expect_column_values_to_not_be_null"
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
REGEX = "expect_column_values_to_match_regex"
NOT_IN_FUTURE = "expect_column_values_to_not_be_in_future"
LENGTHS = "expect_column_value_lengths_to_be_between"
VEHICLE_ID = r"^[A-Z]{2}\d{6}$"


def table(
    spark: SparkSession, values: list[Any], ddl: str, *checks: tuple[str, dict[str, Any]]
) -> list[list]:
    """For each (rule, params): `passes` on every value, in input order, all in one query.

    A local frame keeps its row order, so no sort (and no shuffle) is needed.
    """
    frame = spark.createDataFrame([(v,) for v in values], f"v {ddl}")
    selected = [passes(rule, F.col("v"), params) for rule, params in checks]
    rows = frame.select(*selected).collect()
    return [[row[i] for row in rows] for i in range(len(checks))]


def outcomes(
    spark: SparkSession, values: list[Any], ddl: str, rule: str, params: dict[str, Any]
) -> list[Any]:
    """`passes(rule)` for each value, in input order."""
    return table(spark, values, ddl, (rule, params))[0]


def test_the_rule_set_is_the_one_contracts_may_name() -> None:
    assert set(RULES) == {NOT_NULL, IN_SET, BETWEEN, REGEX, NOT_IN_FUTURE, LENGTHS}
    assert ACTIONS == ("warn", "quarantine", "fail")


def test_not_null_is_the_only_rule_that_rejects_null(spark: SparkSession) -> None:
    assert outcomes(spark, ["a", "", None], "STRING", NOT_NULL, {}) == [True, True, False]
    assert outcomes(spark, [0.0, math.nan, None], "DOUBLE", NOT_NULL, {}) == [True, True, False]


def test_every_other_rule_lets_null_pass(spark: SparkSession) -> None:
    frame = spark.createDataFrame([(None, None, None)] * 2, "s STRING, d DOUBLE, t TIMESTAMP")
    checks = [
        passes(IN_SET, F.col("s"), {"value_set": ["car"]}),
        passes(BETWEEN, F.col("d"), {"min_value": 0, "max_value": 1}),
        passes(BETWEEN, F.col("d"), {"min_value": 0, "strict_min": True}),
        passes(BETWEEN, F.col("d"), {}),
        passes(REGEX, F.col("s"), {"regex": VEHICLE_ID}),
        passes(NOT_IN_FUTURE, F.col("t"), {}),
        passes(NOT_IN_FUTURE, F.col("t"), {"tolerance": "5 minutes"}),
        passes(LENGTHS, F.col("s"), {"min_value": 3, "max_value": 5}),
    ]
    assert [list(row) for row in frame.select(*checks).collect()] == [[True] * len(checks)] * 2


def test_in_set_is_exact_and_case_sensitive(spark: SparkSession) -> None:
    params = {"value_set": ["scooter", "ebike", "car", "van"]}
    values = ["scooter", "ebike", "car", "van", "Car", "car ", "", "truck", None]
    assert outcomes(spark, values, "STRING", IN_SET, params) == [
        True, True, True, True, False, False, False, False, True,
    ]  # fmt: skip


def test_in_set_on_numbers(spark: SparkSession) -> None:
    assert outcomes(spark, [1, 2, 3, None], "INT", IN_SET, {"value_set": [1, 3]}) == [
        True, False, True, True,
    ]  # fmt: skip


def test_between_is_inclusive_by_default(spark: SparkSession) -> None:
    values = [-0.001, 0.0, 50.0, 100.0, 100.001, None]
    params = {"min_value": 0, "max_value": 100}
    assert outcomes(spark, values, "DOUBLE", BETWEEN, params) == [
        False, True, True, True, False, True,
    ]  # fmt: skip


def test_between_rejects_nan_and_infinities_outside_the_bounds(spark: SparkSession) -> None:
    values = [math.nan, math.inf, -math.inf, 5.0]
    bounded = {"min_value": 0, "max_value": 100}
    # NaN is not a number whatever the bounds; an infinity only fails the bound it crosses.
    assert table(
        spark, values, "DOUBLE", (BETWEEN, bounded), (BETWEEN, {"min_value": 0}), (BETWEEN, {})
    ) == [
        [False, False, False, True],
        [False, True, False, True],
        [False, True, True, True],
    ]


def test_between_strict_min_and_strict_max(spark: SparkSession) -> None:
    both = {"min_value": 0, "max_value": 1, "strict_min": True, "strict_max": True}
    # strict_* = false is the inclusive default.
    inclusive = {"min_value": 0, "max_value": 1, "strict_min": False, "strict_max": False}
    assert table(
        spark,
        [0.0, 0.5, 1.0],
        "DOUBLE",
        (BETWEEN, {"min_value": 0, "strict_min": True}),
        (BETWEEN, {"max_value": 1, "strict_max": True}),
        (BETWEEN, both),
        (BETWEEN, inclusive),
    ) == [
        [False, True, True],
        [True, True, False],
        [False, True, False],
        [True, True, True],
    ]


def test_between_on_integer_columns(spark: SparkSession) -> None:
    params = {"min_value": 1, "max_value": 5}
    assert outcomes(spark, [0, 1, 3, 5, 6, None], "INT", BETWEEN, params) == [
        False, True, True, True, False, True,
    ]  # fmt: skip
    big = {"min_value": 0, "strict_min": True}
    assert outcomes(spark, [0, 1, 2**40], "BIGINT", BETWEEN, big) == [False, True, True]


def test_regex_on_vehicle_ids(spark: SparkSession) -> None:
    good = ["AB123456", "ZZ000000", "SC999999"]
    bad = ["ab123456", "AB12345", "AB1234567", "A1234567", "ABC23456", "AB12 456", "", " AB123456"]
    results = outcomes(spark, [*good, *bad, None], "STRING", REGEX, {"regex": VEHICLE_ID})
    assert results == [True] * len(good) + [False] * len(bad) + [True]


def test_regex_is_a_search_unless_anchored(spark: SparkSession) -> None:
    values = ["xxAB123456yy", "AB123456"]
    assert outcomes(spark, values, "STRING", REGEX, {"regex": r"[A-Z]{2}\d{6}"}) == [True, True]


def test_not_in_future_with_tolerance(spark: SparkSession) -> None:
    now = datetime.now(UTC)
    values = [
        now - timedelta(days=1),
        now + timedelta(minutes=1),
        now + timedelta(days=1),
        None,
    ]
    assert table(
        spark,
        values,
        "TIMESTAMP",
        (NOT_IN_FUTURE, {"tolerance": "5 minutes"}),
        (NOT_IN_FUTURE, {}),  # without a tolerance a minute ahead is in the future
        (NOT_IN_FUTURE, {"tolerance": "2 days"}),
        (NOT_IN_FUTURE, {"tolerance": "1 hour"}),  # singular units read the same way
    ) == [
        [True, True, False, True],
        [True, False, False, True],
        [True, True, True, True],
        [True, True, False, True],
    ]


def test_value_lengths_between(spark: SparkSession) -> None:
    values = ["", "a", "ab", "abcd", "abcde", "été", None]
    params = {"min_value": 2, "max_value": 4}
    assert table(spark, values, "STRING", (LENGTHS, params), (LENGTHS, {"min_value": 1})) == [
        [False, False, True, True, False, True, True],
        [False, True, True, True, True, True, True],
    ]


def test_passes_is_never_null(spark: SparkSession) -> None:
    frame = spark.createDataFrame([(None,)], "v STRING")
    cases: list[tuple[str, dict[str, Any]]] = [
        (NOT_NULL, {}),
        (IN_SET, {"value_set": ["a"]}),
        (REGEX, {"regex": "a"}),
        (LENGTHS, {"min_value": 1}),
    ]
    columns = [passes(name, F.col("v"), params) for name, params in cases]
    assert list(frame.select(*columns).collect()[0]) == [False, True, True, True]


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        (IN_SET, {}, "missing parameter(s) ['value_set']"),
        (REGEX, {}, "missing parameter(s) ['regex']"),
        (REGEX, {"regex": "x", "flags": "i"}, "unknown parameter(s) ['flags']"),
        (BETWEEN, {"min": 0}, "unknown parameter(s) ['min']"),
        (NOT_NULL, {"mostly": 0.9}, "unknown parameter(s) ['mostly']"),
        (NOT_IN_FUTURE, {"tolerence": "5 minutes"}, "unknown parameter(s) ['tolerence']"),
        (LENGTHS, {"min_value": 1, "strict_min": True}, "unknown parameter(s) ['strict_min']"),
    ],
)
def test_rule_check_rejects_missing_and_unknown_parameters(
    rule: str, params: dict, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        RULES[rule].check(params)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("rule", "params"),
    [
        (NOT_NULL, {}),
        (IN_SET, {"value_set": []}),
        (BETWEEN, {}),
        (BETWEEN, {"min_value": 0, "max_value": 1, "strict_min": True, "strict_max": True}),
        (REGEX, {"regex": "."}),
        (NOT_IN_FUTURE, {}),
        (NOT_IN_FUTURE, {"tolerance": "1 second"}),
        (LENGTHS, {"min_value": 0, "max_value": 1}),
    ],
)
def test_rule_check_accepts_known_parameters(rule: str, params: dict) -> None:
    RULES[rule].check(params)


BATTERY_STATUS = [
    (5.0, "critical"),
    (0.0, "critical"),
    (9.999, "critical"),
    (10.0, "low"),
    (29.9, "low"),
    (30.0, "medium"),
    (69.99, "medium"),
    (70.0, "good"),
    (100.0, "good"),
    (None, None),
]


def test_battery_status_buckets(spark: SparkSession) -> None:
    (derivation,) = load_contracts()["telemetry"].derive
    assert derivation.name == "battery_status"
    assert derivation.column == "battery_level"
    assert derivation.bounds == (10, 30, 70)
    assert derivation.labels == ("critical", "low", "medium", "good")
    values = [value for value, _ in BATTERY_STATUS]
    frame = spark.createDataFrame([(v,) for v in values], "battery_level DOUBLE")
    status = _bucket(F.col("battery_level"), derivation.bounds, derivation.labels)
    rows = frame.select(status.alias("s")).collect()
    assert [row.s for row in rows] == [label for _, label in BATTERY_STATUS]


def _telemetry(vehicle_id: str, battery: float, at: datetime, **extra: Any) -> bytes:
    record = {
        "event_id": f"e-{vehicle_id}-{battery}",
        "vehicle_id": vehicle_id,
        "vehicle_type": "scooter",
        "timestamp": at.isoformat(timespec="milliseconds"),
        "latitude": 40.75,
        "longitude": -73.98,
        "battery_level": battery,
        "speed_kmh": 12.5,
        "status": "available",
        **extra,
    }
    return json.dumps(record).encode()


def _bronze(spark: SparkSession, payloads: list[bytes]):
    """Bronze-shaped rows, one per payload, in order (row i at partition i, offset i)."""
    return spark.createDataFrame(
        [(i, i, b"k", value) for i, value in enumerate(payloads)],
        "_kafka_partition INT, _kafka_offset BIGINT, key BINARY, value BINARY",
    )


def test_validate_derives_battery_status_and_applies_the_contract(spark: SparkSession) -> None:
    contract = load_contracts()["telemetry"]
    at = datetime(2026, 1, 15, 8, 30, tzinfo=UTC)
    payloads = [
        _telemetry("AB000001", 5, at),
        _telemetry("AB000002", 10, at),
        _telemetry("AB000003", 29.9, at),
        _telemetry("AB000004", 30, at),
        _telemetry("AB000005", 70, at),
        _telemetry("AB000006", 100, at),
        _telemetry("bad-id", 50, at),
        _telemetry("AB000008", 150, at),
        _telemetry("AB000009", 50, at, speed_kmh=500.0),
        _telemetry("AB000010", 50, datetime.now(UTC) + timedelta(days=1)),
    ]
    rows = (
        validate(_bronze(spark, payloads), contract)
        .select(
            "_kafka_offset",
            "battery_status",
            F.col("_rejection.stage").alias("stage"),
            F.col("_rejection.rule_ids").alias("rule_ids"),
            "_warnings",
            "_fatal",
            "date",
            "hour",
        )
        .collect()
    )
    assert [row.battery_status for row in rows] == [
        "critical", "low", "low", "medium", "good", "good", "medium", "good", "medium", "medium",
    ]  # fmt: skip
    assert [(row.stage, row.rule_ids) for row in rows] == [
        *[(None, None)] * 6,
        ("rule", ["vehicle_id_format"]),
        ("rule", ["battery_level_range"]),
        (None, None),
        ("rule", ["timestamp_not_in_future"]),
    ]
    assert [row._warnings for row in rows] == [[]] * 8 + [["speed_plausible"], []]
    # No contract rule has action `fail`: rows that decoded carry an empty list.
    assert all(row._fatal == [] for row in rows)
    assert {(str(row.date), row.hour) for row in rows[:9]} == {("2026-01-15", 8)}


def test_a_json_value_is_a_message_only_when_it_is_an_object(spark: SparkSession) -> None:
    contract = load_contracts()["telemetry"]
    good = _telemetry("AB000001", 50, datetime(2026, 1, 15, 8, 30, tzinfo=UTC))
    payloads = [
        good,
        b" \t\r\n" + good,
        b"[" + good + b"]",
        b'"{ not an object }"',
        b"42",
        b"null",
        b"{ not json",
    ]
    rows = (
        validate(_bronze(spark, payloads), contract)
        .select("_rejection.stage", "_rejection.rule_ids")
        .collect()
    )
    assert [(row.stage, row.rule_ids) for row in rows] == [
        (None, None),
        (None, None),
        *[("decode", ["decode.not_an_object"])] * 4,
        ("decode", ["decode.not_json"]),
    ]


def test_text_a_lenient_parser_would_take_is_rejected(spark: SparkSession) -> None:
    contract = load_contracts()["telemetry"]
    at = datetime(2026, 1, 15, 8, 30, tzinfo=UTC)
    good = _telemetry("AB000001", 50, at)
    paired = _telemetry("AB000002", 50, at, note="ok \\ud83d\\ude00").replace(b"\\\\", b"\\")
    payloads = [
        paired,  # an escaped surrogate pair is a character
        good + b"," + good,  # two messages run together
        good + b" " + good,
        _telemetry("AB000003", 50, at, note="x \\ud800 y").replace(b"\\\\", b"\\"),
        good[:-1] + b',"reading":NaN}',
        good[:-1] + b',"nested":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        good.replace(b'"battery_level": 50', b'"battery_level": 1e400'),
    ]
    rows = (
        validate(_bronze(spark, payloads), contract)
        .select("_rejection.stage", "_rejection.rule_ids")
        .collect()
    )
    assert [(row.stage, row.rule_ids) for row in rows] == [
        (None, None),
        ("decode", ["decode.trailing_data"]),
        ("decode", ["decode.not_json"]),
        ("decode", ["decode.not_utf8"]),
        ("decode", ["decode.not_json"]),
        ("decode", ["decode.not_json"]),
        ("schema", ["schema.not_finite"]),
    ]


def test_an_oversized_payload_goes_on_as_its_first_allowed_bytes(spark: SparkSession) -> None:
    contract = load_contracts()["telemetry"]
    limit = contract.max_message_bytes
    at = datetime(2026, 1, 15, 8, 30, tzinfo=UTC)
    exact = _telemetry("AB000001", 50, at)
    exact = exact[:-1] + b', "pad": "' + b"x" * (limit - len(exact) - 11) + b'"}'
    oversized = exact[:-2] + b'xx"}'
    rows = (
        validate(_bronze(spark, [exact, oversized]), contract)
        .select("value", "_rejection.stage", "_rejection.rule_ids", "_rejection.reason")
        .collect()
    )
    assert len(exact) == limit and len(oversized) == limit + 2
    assert (rows[0].stage, bytes(rows[0].value)) == (None, exact)  # at the limit: whole
    assert (rows[1].stage, rows[1].rule_ids) == ("decode", ["decode.oversized"])
    assert bytes(rows[1].value) == oversized[:limit]
    assert rows[1].reason.startswith(f"{limit + 2} bytes > {limit}")
