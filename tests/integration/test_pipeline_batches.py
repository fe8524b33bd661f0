"""The `all` pipeline's batch writer on hand-made Kafka batches (real Spark and Delta, no broker):
a batch killed after any of its table writes, then replayed by a restarted pipeline, ends as a
batch that never died, table by table, and every oracle holds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from streaming import commits
from streaming.config import Config, load_config
from streaming.gold.aggregates import TABLES
from streaming.pipeline import BatchWriter
from streaming.silver import query
from streaming.silver.query import check_inputs
from streaming.simulator import SIMULATED
from streaming.simulator.stream import MessageStream
from streaming.verify import check_gold, check_silver
from tests.builders import PII_KEY, kafka_frame
from tests.conftest import lake_env

STAMPS = ("_ingested_at", "_processed_at", "_quarantined_at", "_updated_at")
NOW = datetime.now(UTC).replace(microsecond=0)


def lake(root: Path) -> Config:
    return load_config({**lake_env(root, "127.0.0.1:1", "c."), "LAKEHOUSE_PII_KEY": PII_KEY})


def kafka_batches(spark: SparkSession):
    """Two batches over every topic: the first without a duplicate (nothing in it may be taken
    for one on a replay), the second with copies of rows of both batches, malformed and late
    rows."""
    offsets = dict.fromkeys(SIMULATED, 0)

    def frame(messages):
        return kafka_frame(spark, messages, offsets, NOW)

    clean = MessageStream("all", seed=3, vehicles=5_000)
    first = clean.next_chunk(200, NOW)
    messy = MessageStream("all", duplicates=0.1, malformed=0.1, late=0.05, seed=4, vehicles=5_000)
    messy._recent = {e: [m for m in first if m.entity == e] for e in SIMULATED}  # later copies
    second = messy.next_chunk(200, NOW)
    assert {m.entity for m in first} == set(SIMULATED)
    assert not any(m.kind != "valid" for m in first)
    assert {"duplicate", "late"} <= {m.kind for m in second}
    return [frame(first), frame(second)]


def tables(spark: SparkSession, config: Config) -> dict:
    """Every table of the lake, its timestamps of processing dropped."""
    from delta.tables import DeltaTable

    names = [("bronze", e) for e in SIMULATED] + [("silver", e) for e in SIMULATED]
    names += [("quarantine", e) for e in SIMULATED] + [("silver", "vehicle_state")]
    names += [("gold", t) for t in TABLES]
    found = {}
    for layer, name in names:
        path = config.table_path(layer, name)
        if DeltaTable.isDeltaTable(spark, path):
            found[f"{layer}.{name}"] = spark.read.format("delta").load(path).drop(*STAMPS)
    return found


class _Crash(Exception):
    """Raised right after a table write of an attempt has committed, as a kill -9 there would
    leave it."""

    attempt: ClassVar[dict[str, int]] = {"writes": 0}  # the current attempt's table writes


def _crash_after_each_write(monkeypatch: pytest.MonkeyPatch, every: int) -> list[str]:
    """Make every attempt die right after its `every`-th table write; returns the crash log."""
    crashes: list[str] = []
    write = commits.CommitGuard.write
    attempt = {"writes": 0}

    def counted(self, path, batch_id, work):
        wrote = write(self, path, batch_id, work)
        attempt["writes"] += wrote
        if wrote and attempt["writes"] == every:
            crashes.append(f"batch {batch_id} after {path.rsplit('/lakehouse/', 1)[1]}")
            raise _Crash(crashes[-1])
        return wrote

    monkeypatch.setattr(commits.CommitGuard, "write", counted)
    monkeypatch.setattr(_Crash, "attempt", attempt, raising=False)
    return crashes


def _held_on_disk(spark: SparkSession) -> list[int]:
    """RDDs persisted on disk alone: a batch's raw rows while it runs, none between batches."""
    rdds = spark.sparkContext._jsc.getPersistentRDDs()
    return [
        int(key)
        for key in rdds.keySet().toArray()
        if not rdds.get(key).getStorageLevel().useMemory()
    ]


def _until_it_passes(spark: SparkSession, config: Config, batch, batch_id: int) -> None:
    """Attempts, each a restarted pipeline (a new writer, tables in order: one thread), each
    dying after a write more than the last one, until one gets through.

    A restart rebuilds the geofence grid and PII pads, static reference data (its cached frames
    are materialised again on first use): the attempts share them (each contract's decode and
    checks are shared by the process already), and re-read everything a restart must (the
    tables' commit history, the watermarks, the tables)."""
    built: dict[str, object] = {}
    geofences, pads = query._geofences, query.pads_frame

    def once(key: str, make):
        def made(*args):
            if key not in built:
                built[key] = make(*args)
            return built[key]

        return made

    query._geofences = once("geofences", geofences)
    query.pads_frame = once("pads", pads)
    try:
        _attempts(spark, config, batch, batch_id)
    finally:
        query._geofences, query.pads_frame = geofences, pads


def _attempts(spark: SparkSession, config: Config, batch, batch_id: int) -> None:
    for _ in range(100):
        _Crash.attempt["writes"] = 0
        writer = BatchWriter(spark, config, "all", check_inputs(config), workers=1)
        try:
            writer(batch, batch_id)
            return
        except _Crash:
            continue
    raise AssertionError("the batch never got through")


@pytest.mark.slow
@pytest.mark.seconds(320)
def test_a_batch_killed_after_any_table_write_replays_to_the_batch_that_never_died(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches = kafka_batches(spark)
    clean = lake(tmp_path / "clean")
    writer = BatchWriter(spark, clean, "all", check_inputs(clean))
    for batch_id, batch in enumerate(batches):
        writer(batch, batch_id)
        assert not _held_on_disk(spark), f"batch {batch_id} left its raw rows on disk"
    expected = {name: frame.collect() for name, frame in tables(spark, clean).items()}

    config = lake(tmp_path / "crashed")
    caplog.set_level(logging.INFO, logger="streaming.silver.writer")
    # The batch without duplicates dies after each of its writes in turn (issue: its replay
    # must not take its own Silver rows for duplicates); the messy one after every eighth.
    crashes = _crash_after_each_write(monkeypatch, every=1)
    _until_it_passes(spark, config, batches[0], 0)
    first = list(crashes)
    monkeypatch.undo()
    crashes = _crash_after_each_write(monkeypatch, every=8)
    _until_it_passes(spark, config, batches[1], 1)

    crashed_after = {c.split(" after ")[1] for c in first}
    every_table = {f"{layer}/{e}" for layer in ("bronze", "silver") for e in SIMULATED}
    every_table |= {"silver/vehicle_state"} | {f"gold/{t}" for t in TABLES}
    assert crashed_after == every_table  # no quarantine: nothing in batch 0 is rejected
    assert len(crashes) >= 2, crashes  # 16-21 writes, a crash after every eighth
    # An attempt after an entity's Silver commit reads its rows back instead of judging again:
    # in batch 0, one attempt per later Silver write and per Gold write, and the last one.
    read_back = [r for r in caplog.records if "read back from version" in r.getMessage()]
    assert len(read_back) >= sum(range(1, len(SIMULATED) + 1)), len(read_back)
    replayed = tables(spark, config)
    assert set(replayed) == set(expected)
    for name, frame in replayed.items():
        assertDataFrameEqual(frame, expected[name])
    for entity in SIMULATED:
        books = check_silver(spark, config, entity)
        assert books.ok and books.silver > 0, books
    quarantine = replayed["quarantine.telemetry"]
    assert quarantine.where(F.col("_batch_id") == 0).count() == 0, "batch 0 has no duplicate"
    assert quarantine.where(F.col("stage") == "duplicate").count() > 0
    for name in TABLES:
        check = check_gold(spark, config, name)
        assert check.ok and check.gold_rows > 0, check
