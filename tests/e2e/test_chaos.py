"""`lakehouse chaos --quick` as a user runs it: the real pipeline killed -9 mid-batch, its torn
offset file and a lost commit-log entry, at least one event of every malformed kind on every
topic. After the scenario every oracle holds, and each oracle fails on an injected fault: one
row dropped and another doubled.
Then, on the run's kept lake, every kind of record the producers sent is where it belongs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming.config import load_config
from streaming.simulator import SIMULATED
from streaming.simulator.malformed import MALFORMED_KINDS, PRIMARY_ID
from streaming.verify import read_ledgers
from tests.builders import lakehouse

pytestmark = pytest.mark.e2e
COORDS = ["_kafka_topic", "_kafka_partition", "_kafka_offset"]

_RULES = {
    "future_timestamp": {"bookings": "booking_not_in_future"},
    "bad_enum": {
        "telemetry": "vehicle_type_known", "bookings": "status_known",
        "user_events": "event_type_known", "external": "source_known",
        "feedback": "content_type_image",
    },
    "out_of_range": {
        "telemetry": "battery_level_range", "bookings": "distance_plausible",
        "external": "zone_id_known", "feedback": "rating_range",
    },
    "invalid_coordinates": {"bookings": "pickup_latitude_valid"},
    "missing_field": {
        "telemetry": "latitude_not_null", "bookings": "vehicle_id_not_null",
        "user_events": "user_id_not_null", "external": "source_not_null",
        "feedback": "booking_id_not_null",
    },
}  # fmt: skip
_FIXED = {
    "truncated_json": ("decode", "decode.not_json"),
    "not_json_object": ("decode", "decode.not_an_object"),
    "wrong_type": ("schema", "schema.wrong_type"),
    "bad_timestamp": ("schema", "schema.wrong_type"),
    "non_utf8": ("decode", "decode.not_utf8"),
    "wrong_magic_byte": ("decode", "decode.unknown_format"),
    "unknown_schema_id": ("schema", "schema.unknown_schema_id"),
    "empty_value": ("decode", "decode.empty"),
    "oversized_value": ("decode", "decode.oversized"),
    "bad_vehicle_id": ("rule", "vehicle_id_format"),
    "negative_duration": ("rule", "trip_duration_not_negative"),
    "negative_revenue": ("rule", "revenue_not_negative"),
    **dict.fromkeys(
        (
            "nan_literal",
            "infinity_literal",
            "single_quotes",
            "trailing_garbage",
            "bom_prefix",
            "control_char",
            "duplicate_keys",
            "deeply_nested",
        ),
        ("decode", "decode.not_json"),
    ),
    "lone_surrogate": ("decode", "decode.not_utf8"),
    "huge_string": ("decode", "decode.oversized"),
    "number_overflow": ("schema", "schema.not_finite"),
}
_AVRO_BODY = {"wrong_type", "null_required", "missing_field", "bad_timestamp"}


def expected_places(entity: str, kind: str, fmt: str) -> set[tuple[str, str | None, str | None]]:
    """Where a ledger row of `kind` must end up: (place, stage, one of its rule ids)."""
    if kind == "valid":
        return {("silver", None, None)}
    late = ("quarantine", "late", "late.watermark")
    if kind == "late":  # 0.5 to 10 watermarks late: in time, or late
        return {late, ("silver", None, None)}
    if kind == "duplicate":  # a copy of a late event is late itself: never deduplicated
        return {("duplicate", None, None), late}
    if fmt == "avro" and kind in _AVRO_BODY:
        return {("quarantine", "decode", "decode.avro_body")}
    if kind in _FIXED:
        return {("quarantine", *_FIXED[kind])}
    if kind == "null_required":
        return {("quarantine", "rule", f"{PRIMARY_ID[entity]}_not_null")}
    defaults = {
        "future_timestamp": "timestamp_not_in_future",
        "invalid_coordinates": "latitude_valid",
    }
    return {("quarantine", "rule", _RULES.get(kind, {}).get(entity, defaults.get(kind)))}


def _placements(spark: SparkSession, config):
    """(coordinates, place, stage, rule_ids) of every row in Silver and quarantine; duplicates
    (quarantined with stage `duplicate`) as their own place."""
    no_stage = F.lit(None).cast("string").alias("stage")
    no_rules = F.lit(None).cast("array<string>").alias("rule_ids")
    frames = []
    for entity in SIMULATED:
        silver = spark.read.format("delta").load(config.table_path("silver", entity))
        frames.append(silver.select(*COORDS, F.lit("silver").alias("place"), no_stage, no_rules))
        quarantine = spark.read.format("delta").load(config.table_path("quarantine", entity))
        duplicate = F.col("stage") == "duplicate"  # duplicates are quarantined with this stage
        frames.append(
            quarantine.select(
                *COORDS,
                F.when(duplicate, "duplicate").otherwise("quarantine").alias("place"),
                F.when(~duplicate, F.col("stage")).alias("stage"),
                F.when(~duplicate, F.col("rule_ids")).alias("rule_ids"),
            )
        )
    placed = frames[0]
    for frame in frames[1:]:
        placed = placed.unionByName(frame)
    return placed


@pytest.mark.seconds(360)
@pytest.mark.timeout(1800)
def test_chaos_quick_loses_doubles_and_corrupts_nothing_and_every_kind_lands_in_place(
    tmp_path: Path, spark: SparkSession
) -> None:
    env = {**os.environ, "LAKEHOUSE_PII_KEY": "chaos-test-pii-key-0123456789abcdef"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    result = lakehouse("chaos", "--quick", "--work", str(tmp_path), "--keep", env=env,
                       timeout=1700)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = json.loads(next(tmp_path.glob("chaos-*/chaos.json")).read_text())
    assert report["ok"]
    outcomes = {o["scenario"]: o for o in report["scenarios"]}
    assert list(outcomes) == ["checkpoint"]
    for name, outcome in outcomes.items():
        assert outcome["events"] > 0 and outcome["faults"] > 0, outcome
        counts = [outcome[k] for k in ("lost", "duplicated", "unexpected", "gold_wrong")]
        assert counts == [0, 0, 0, 0] and outcome["violations"] == [], (name, outcome)
    assert len(outcomes["checkpoint"]["recovery_s"]) == 1
    notes = " ".join(outcomes["checkpoint"]["notes"])
    assert "torn" in notes and "deleted" in notes
    proofs = report["proofs"]
    assert [p["table"] for p in proofs] == [
        "bronze.telemetry", "silver.telemetry", "gold.demand_by_zone_hour"
    ], proofs  # fmt: skip
    for proof in proofs:  # each oracle names the dropped row and the doubled one, nothing else
        assert proof["failed"] and sorted(proof["found"].values()) == [1, 1], proof
    assert "| checkpoint |" in result.stdout and "recovery" in result.stdout

    config = load_config(report["lake"])
    placed = _placements(spark, config)
    rows = (
        read_ledgers(spark, [Path(p) for p in report["ledgers"]])
        .withColumnRenamed("topic", "_kafka_topic")
        .withColumnRenamed("partition", "_kafka_partition")
        .withColumnRenamed("offset", "_kafka_offset")
        .join(placed, COORDS, "left")
        .groupBy("_kafka_topic", "kind", "place", "stage", "rule_ids")
        .count()
        .collect()
    )
    seen = set()
    for row in rows:
        entity = row["_kafka_topic"].removeprefix(config.topic_prefix)
        allowed = expected_places(entity, row["kind"], "json")
        matches = {
            (place, stage, rule) for place, stage, rule in allowed
            if place == row["place"] and stage == row["stage"]
            and (rule is None or rule in (row["rule_ids"] or []))
        }  # fmt: skip
        assert matches, (entity, row["kind"], row["place"], row["stage"], row["rule_ids"])
        seen.add(row["kind"])
    assert seen - {"valid", "duplicate", "late"} == set(MALFORMED_KINDS), sorted(seen)
