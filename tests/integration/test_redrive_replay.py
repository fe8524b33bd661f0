"""`lakehouse redrive` and `lakehouse replay` on a real lake (real Spark and Delta, no broker).

Re-drive: a wrong rule quarantines valid rows, the rule is fixed, the re-drive brings exactly
those rows to Silver and Gold, once. Replay: a derivation changes, one hour is replayed from
Bronze, that hour reflects the change and the other does not. Bad input is one line."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming import bronze, lease
from streaming.config import Config, load_config
from streaming.gold.aggregates import TABLES
from streaming.pipeline import BatchWriter
from streaming.redrive import REDRIVEN, check_selection, redrive
from streaming.replay import check_range, replay
from streaming.silver.query import check_inputs
from streaming.simulator import SIMULATED
from streaming.simulator.stream import MessageStream
from streaming.verify import check_gold, check_silver
from tests.builders import PII_KEY, lakehouse, one_clear_line
from tests.conftest import PROJECT, lake_env

RULE = "battery_level_range"
KEYS = ["_kafka_partition", "_kafka_offset"]


def _lake(root: Path, contracts: Path | None = None) -> Config:
    env = {**lake_env(root, "127.0.0.1:1", "r."), "LAKEHOUSE_PII_KEY": PII_KEY}
    if contracts is not None:
        env["LAKEHOUSE_CONTRACTS"] = str(contracts)
    return load_config(env)


def _wrong_contracts(folder: Path) -> Path:
    """The contracts with telemetry's battery range wrongly capped at 50 instead of 100."""
    shutil.copytree(PROJECT / "contracts", folder)
    path = folder / "telemetry.toml"
    text = path.read_text()
    start = text.index(f'id = "{RULE}"')
    fixed = text[start:].replace("max_value = 100", "max_value = 50", 1)
    path.write_text(text[:start] + fixed)
    return folder


def _batch(spark: SparkSession, entity: str = "all", now: datetime | None = None, start: int = 0):
    now = now or datetime.now(UTC).replace(microsecond=0)
    messages = MessageStream(entity, seed=11 + start, vehicles=400).next_chunk(150, now)
    offsets = dict.fromkeys(SIMULATED, start)
    rows: list[tuple[Any, ...]] = []
    for m in messages:
        rows.append((m.key, m.value, f"r.{m.entity}", 0, offsets[m.entity], now, 0, []))
        offsets[m.entity] += 1
    return spark.createDataFrame(rows, bronze.KAFKA_SCHEMA).localCheckpoint()


def _versions(spark: SparkSession, config: Config) -> dict[str, int]:
    from delta.tables import DeltaTable

    paths = [config.table_path(layer, "telemetry") for layer in ("silver", "quarantine")]
    paths += [config.table_path("gold", name) for name in TABLES]
    return {p: DeltaTable.forPath(spark, p).history(1).collect()[0]["version"] for p in paths}


@pytest.mark.slow
@pytest.mark.seconds(100)
def test_a_fixed_rule_redrives_exactly_its_rows_to_silver_and_gold_once(
    spark: SparkSession, tmp_path: Path
) -> None:
    wrong = _lake(tmp_path, _wrong_contracts(tmp_path / "contracts"))
    BatchWriter(spark, wrong, "all", check_inputs(wrong))(_batch(spark), 0)
    quarantine = spark.read.format("delta").load(wrong.table_path("quarantine", "telemetry"))
    wrongly = quarantine.where(F.array_contains("rule_ids", RULE)).select(*KEYS).collect()
    assert len(wrongly) > 10, "the wrong rule must have caught valid rows"

    fixed = _lake(tmp_path)  # the same lake, the shipped (right) contracts
    inputs = check_inputs(fixed)
    selection = check_selection(inputs, "telemetry", rule=RULE)
    before = _versions(spark, fixed)
    dry = redrive(spark, fixed, inputs, selection, dry_run=True)
    assert (dry.selected, dry.passing, dry.unchanged) == (len(wrongly), len(wrongly), 0)
    assert _versions(spark, fixed) == before, "a dry run wrote"

    done = redrive(spark, fixed, inputs, selection)
    assert done.number == 1
    assert (done.taken, done.to_silver, done.duplicate) == (len(wrongly), len(wrongly), 0)
    assert done.quarantined == {}
    assert done.gold, "the re-driven rows reached no Gold table"
    silver = spark.read.format("delta").load(fixed.table_path("silver", "telemetry"))
    arrived = silver.where(F.col("_batch_id") == 1).select(*KEYS).collect()
    assert sorted(arrived) == sorted(wrongly)
    claimed = spark.read.format("delta").load(fixed.table_path("quarantine", "telemetry"))
    assert claimed.where(F.col(REDRIVEN) == 1).count() == len(wrongly)

    books = check_silver(spark, fixed, "telemetry")
    assert books.ok and books.quarantined == 0 and books.silver == silver.count(), books
    for name, table in TABLES.items():
        if "telemetry" in table.sources:
            check = check_gold(spark, fixed, name)
            assert check.ok and check.gold_rows > 0, check

    after = _versions(spark, fixed)
    again = redrive(spark, fixed, inputs, selection)
    assert (again.selected, again.taken, again.number) == (0, 0, None)
    assert _versions(spark, fixed) == after, "a second re-drive changed a table"


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["nosuch"], ["unknown entity 'nosuch'", "telemetry"]),
        (["telemetry", "--stage", "duplicate"], ["duplicates are not re-driven"]),
        (["telemetry", "--stage", "parse"], ["unknown stage 'parse'", "decode"]),
        (["telemetry", "--rule", "no_such_rule"], ["unknown rule 'no_such_rule'"]),
        (["telemetry", "--since", "yesterday"], ["--since 'yesterday' is not a time"]),
    ],
)
def test_bad_flags_are_one_line_and_change_nothing(lake, flags, phrases) -> None:
    result = lakehouse("redrive", *flags, env=lake.process_env(LAKEHOUSE_PII_KEY=PII_KEY))
    one_clear_line(result, 2, *phrases)
    assert not Path(lake.config.root).exists(), "a refused re-drive touched the lake"


def test_a_redrive_is_refused_while_a_writer_holds_silver(lake) -> None:
    holder = lease.Holder.this_process()
    held = lease.acquire(lake.config, ["silver", "gold"], holder, settle_s=0)
    try:
        result = lakehouse("redrive", "telemetry", env=lake.process_env(LAKEHOUSE_PII_KEY=PII_KEY))
    finally:
        held.release()
    one_clear_line(result, 2, "another process writes the silver tables", f"pid {os.getpid()}")


def _rebucketed(folder: Path) -> Path:
    """The contracts with telemetry's battery_status bounds moved (a derivation change)."""
    shutil.copytree(PROJECT / "contracts", folder)
    path = folder / "telemetry.toml"
    path.write_text(path.read_text().replace("bounds = [10, 30, 70]", "bounds = [20, 40, 80]"))
    return folder


def _status(level: float | None, bounds: tuple[float, ...]) -> str | None:
    if level is None:
        return None
    labels = ("critical", "low", "medium", "good")
    return next(
        (label for bound, label in zip(bounds, labels, strict=False) if level < bound), labels[-1]
    )


@pytest.mark.slow
@pytest.mark.seconds(135)
def test_replaying_one_hour_after_a_derivation_change_rebuilds_that_hour_only(
    spark: SparkSession, tmp_path: Path
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    config = _lake(tmp_path)
    writer = BatchWriter(spark, config, "all", check_inputs(config))
    # Two batches in the replayed hour, further apart than the watermark (10 minutes): a
    # replay judges them together and must not take the older ones for late rows.
    writer(_batch(spark, "telemetry", hour + timedelta(minutes=20)), 0)
    writer(_batch(spark, "telemetry", hour + timedelta(minutes=45), start=150), 1)
    writer(_batch(spark, "telemetry", hour + timedelta(minutes=80), start=300), 2)
    silver_path = config.table_path("silver", "telemetry")

    def hours() -> dict[int, dict]:
        """Silver's rows by Kafka hour (0: the replayed one), keyed by Kafka position."""
        rows = spark.read.format("delta").load(silver_path).drop("_processed_at", "_batch_id")
        by_hour: dict[int, dict] = {0: {}, 1: {}}
        next_hour = hour.replace(tzinfo=None) + timedelta(hours=1)
        for row in rows.collect():
            position = (row["_kafka_partition"], row["_kafka_offset"])
            by_hour[int(row["_kafka_timestamp"] >= next_hour)][position] = row
        return by_hour

    before = hours()
    assert before[0] and before[1]
    changed = _lake(tmp_path, _rebucketed(tmp_path / "contracts"))
    inputs = check_inputs(changed)
    wanted = check_range(
        inputs, "telemetry", hour.isoformat(), (hour + timedelta(hours=1)).isoformat()
    )
    done = replay(spark, changed, inputs, wanted)
    assert done.number == 1 and done.replayed == done.removed_silver == len(before[0])
    assert done.to_silver == len(before[0]) and done.quarantined == {} and done.gold

    after = hours()
    assert after[1] == before[1], "the other hour changed"
    assert after[0].keys() == before[0].keys()
    replayed = after[0].values()
    assert all(r["battery_status"] == _status(r["battery_level"], (20, 40, 80)) for r in replayed)
    assert any(r["battery_status"] != _status(r["battery_level"], (10, 30, 70)) for r in replayed)
    assert check_silver(spark, changed, "telemetry").ok
    for name, table in TABLES.items():
        if "telemetry" in table.sources:
            check = check_gold(spark, changed, name)
            assert check.ok and check.gold_rows > 0, check

    again = replay(spark, changed, inputs, wanted)  # idempotent: the same rows again
    assert again.number == 2 and hours()[0] == after[0]
    assert check_silver(spark, changed, "telemetry").ok


def test_a_replay_range_backwards_is_one_line(lake) -> None:
    result = lakehouse(
        "replay", "telemetry", "--from", "2026-12-05T10:00:00Z", "--to", "2026-12-05T09:00:00Z",
        env=lake.process_env(LAKEHOUSE_PII_KEY=PII_KEY),
    )  # fmt: skip
    one_clear_line(result, 2, "--from 2026-12-05T10:00:00Z is not before --to")
