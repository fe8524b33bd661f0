"""The whole chain on the real broker, killed -9 mid-run and restarted, beside maintenance and an
erasure: the ledgers equal Bronze, Silver's books close, every kind lands where it belongs, Gold
equals a recomputation."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming.catalog import AUDIT_MAINTENANCE, RUN_HISTORY, TOMBSTONES, TableRef
from streaming.gold.aggregates import TABLES
from streaming.simulator import SIMULATED
from streaming.simulator.malformed import PRIMARY_ID
from streaming.simulator.producer import ProduceOptions, run_producer
from streaming.tables import open_table
from streaming.verify import check_bronze, read_ledgers
from tests.builders import LAKEHOUSE, PII_KEY, kill_9_mid_run, lakehouse

pytestmark = pytest.mark.e2e
COORDS = ["_kafka_topic", "_kafka_partition", "_kafka_offset"]
SHORT_WATERMARK = {"telemetry", "user_events", "external"}  # late events (1-48 h) are late here

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
}
_AVRO_BODY = {"wrong_type", "null_required", "missing_field", "bad_timestamp"}


def expected_places(entity: str, kind: str, fmt: str) -> set[tuple[str, str | None, str | None]]:
    """Where a ledger row of `kind` must end up: (place, stage, one of its rule ids)."""
    if kind == "valid":
        return {("silver", None, None)}
    if kind in {"duplicate", "late"}:
        late = ("quarantine", "late", "late.watermark")
        if kind == "late":
            return {late} if entity in SHORT_WATERMARK else {("silver", None, None)}
        # A copy of a late event is late itself: late rows never reach deduplication.
        return {("duplicate", None, None)} | ({late} if entity in SHORT_WATERMARK else set())
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


def _produce(lake, tmp_path: Path, count: int) -> dict[str, Path]:
    ledgers = {"json": tmp_path / "json.ledger", "avro": tmp_path / "avro.ledger"}
    options: dict[str, Any] = {
        "rate": math.inf,
        "duplicates": 0.05,
        "malformed": 0.12,
        "late": 0.03,
    }
    run_producer(lake.config, "all", ProduceOptions(count=count, ledger=ledgers["json"], **options))
    run_producer(
        lake.config, "telemetry",
        ProduceOptions(count=count // 4, format="avro", seed=7, ledger=ledgers["avro"], **options),
    )  # fmt: skip
    return ledgers


def test_a_day_kill_9_restart_maintenance_and_an_erasure_every_oracle_and_every_kind_in_place(
    lake, spark: SparkSession, tmp_path: Path
) -> None:
    """kill -9 mid-run; restart as a long-running stream beside `maintain` (compacting every
    minute); erase a person while both run; stop both; every oracle holds, every kind of record
    is where it belongs (the erased ones nowhere), and the erasure's proof found nothing."""
    ledgers = _produce(lake, tmp_path, 4_000)  # 5,000 events: 4 batches of 1,500 at most
    env = lake.process_env(
        LAKEHOUSE_PII_KEY=PII_KEY,
        LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER="1500",
        LAKEHOUSE_TRIGGER_INTERVAL="0 seconds",
    )
    log = Path(lake.config.table_path("silver", "telemetry")) / "_delta_log"
    # table creation + one batch, then a random moment
    kill_9_mid_run("all", env, log, commits=2, timeout_s=600, jitter_s=3.0)
    partial = check_bronze(spark, lake.config, list(ledgers.values()))
    assert partial.duplicated == 0 and partial.unexpected == 0
    assert partial.missing > 0, "the kill did not land before the pipeline caught up"

    env = lake.process_env(
        LAKEHOUSE_PII_KEY=PII_KEY,
        LAKEHOUSE_TRIGGER_INTERVAL="2 seconds",
        LAKEHOUSE_MAINTAIN_INTERVAL="60",
        # A compaction beside the erasure takes seconds here; its leftovers are purged after 30 s.
        LAKEHOUSE_ERASE_GRACE_SECONDS="15",
    )
    running = [_start(["run", "all"], env, tmp_path / "stream.log")]
    try:
        events = sum(1 for p in ledgers.values() for _ in p.open()) - len(ledgers)
        _wait(lambda: _rows_in(lake.config) >= events, "the restarted stream to catch up", running)
        running.append(_start(["maintain", "--no-vacuum"], env, tmp_path / "maintain.log"))
        user = _busiest_user(spark, lake.config)
        receipt_file = tmp_path / "receipt.json"
        erased = lakehouse(
            "erase", "--user-id", user, "--receipt", str(receipt_file), env=env, timeout=900
        )
        assert erased.returncode == 0, erased.stdout[-2000:] + erased.stderr[-3000:]
        receipt = json.loads(receipt_file.read_text())
        assert receipt["proof"]["hits"] == [] and receipt["tombstones"] > 0, receipt
        assert f"pid {running[0][0].pid}" in receipt["applied_by"]  # the stream applied it
        _wait(lambda: _optimized(lake.config) > 0, "a compaction that lowered a file count",
              running)  # fmt: skip
    finally:
        for process, _ in reversed(running):
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=120) for process, _ in running]
    logs = [log.read_text() for _, log in running]
    assert codes == [0] * len(codes), [text[-3000:] for text in logs]
    errors = [line for line in logs[0].splitlines() if " E streaming." in line]
    assert not errors, errors  # no failed batch, no failed attempt at the erasure

    # `lakehouse verify` (its own JVM) checks every oracle: the ledgers against Bronze (the
    # erased records counted apart), Silver's books, Gold against a recomputation.
    verify = lakehouse(
        "verify", *[f"--ledger={p}" for p in ledgers.values()], env=lake.process_env()
    )
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    report = json.loads(verify.stdout)
    bronze = report["bronze"]
    assert (bronze["missing"], bronze["duplicated"], bronze["unexpected"]) == (0, 0, 0), bronze
    assert bronze["erased"] == receipt["tombstones"]
    assert set(report["silver"]) == set(SIMULATED)
    for entity, books in report["silver"].items():
        assert books["ok"] and books["bronze_rows"] > 0, (entity, books)
        assert books["bronze_rows"] == books["silver"] + books["quarantined"] + books["duplicates"]

    placed = _placements(spark, lake.config)
    tombstoned = spark.read.format("delta").load(TableRef(*TOMBSTONES).path(lake.config))
    prefix = lake.config.topic_prefix
    seen: dict[tuple[str, str, str], set] = {}
    for fmt, ledger in ledgers.items():
        rows = (
            read_ledgers(spark, [ledger])
            .withColumnRenamed("topic", "_kafka_topic")
            .withColumnRenamed("partition", "_kafka_partition")
            .withColumnRenamed("offset", "_kafka_offset")
            .join(tombstoned.select(*COORDS), COORDS, "left_anti")  # nowhere, as `verify` said
            .join(placed, COORDS, "left")
            .groupBy("_kafka_topic", "kind", "place", "stage", "rule_ids")
            .count()
            .collect()
        )
        for row in rows:
            entity = row["_kafka_topic"].removeprefix(prefix)
            allowed = expected_places(entity, row["kind"], fmt)
            matches = {
                (place, stage, rule) for place, stage, rule in allowed
                if place == row["place"] and stage == row["stage"]
                and (rule is None or rule in (row["rule_ids"] or []))
            }  # fmt: skip
            assert matches, (fmt, entity, row["kind"], row["place"], row["stage"], row["rule_ids"])
            seen.setdefault((fmt, entity, row["kind"]), set()).add(row["place"])
    malformed_kinds = {kind for (fmt, _, kind) in seen if fmt == "json"} - {
        "valid",
        "duplicate",
        "late",
    }
    assert len(malformed_kinds) >= 15, sorted(malformed_kinds)

    gold = report["gold"]  # Gold == recomputation, late rows and dups included
    assert set(gold) == set(TABLES)
    for name, check in gold.items():
        assert check["ok"] and check["gold_rows"] > 0 and check["lag_seconds"] == 0, (name, check)


def _start(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], Path]:
    with log.open("wb") as out:
        process = subprocess.Popen([*LAKEHOUSE, *args], env=env, stdout=out, stderr=out)
    return process, log


def _wait(condition, what: str, running, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for process, log in running:
            assert process.poll() is None, f"{log.name} ended: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(2)


def _rows_in(config) -> int:
    """Every row the pipeline's batches took in, by the run history."""
    table = open_table(config, TableRef(*RUN_HISTORY).path(config))
    if table is None:
        return 0
    runs = table.to_pyarrow_table(columns=["batch_id", "rows_in"]).to_pylist()
    newest = {r["batch_id"]: r["rows_in"] for r in runs}  # a replayed batch: its last attempt
    return sum(n for rows in newest.values() for _, n in rows)


def _busiest_user(spark: SparkSession, config) -> str:
    """The person with the most bookings and app events in Silver."""
    silver = [
        spark.read.format("delta").load(config.table_path("silver", e)).select("user_id")
        for e in ("bookings", "user_events")
    ]
    counts = silver[0].unionByName(silver[1]).groupBy("user_id").count()
    return str(counts.orderBy(F.desc("count"), "user_id").collect()[0]["user_id"])


def _optimized(config) -> int:
    """OPTIMIZE actions that left fewer files than they found."""
    table = open_table(config, TableRef(*AUDIT_MAINTENANCE).path(config))
    if table is None:
        return 0
    rows = table.to_pyarrow_table().to_pylist()
    return sum(
        1 for r in rows if r["action"] == "optimize" and r["files_after"] < r["files_before"]
    )
