"""The `all` pipeline's batch writer on hand-made Kafka batches (real Spark and Delta, no broker):
a batch killed after any of its table writes, then replayed by a restarted pipeline, ends as a
batch that never died, table by table, and every oracle holds."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from streaming import commits
from streaming.config import ENTITIES, Config, load_config
from streaming.gold.aggregates import TABLES
from streaming.pipeline import BatchWriter
from streaming.silver.query import check_inputs
from streaming.simulator.stream import MessageStream
from streaming.verify import check_gold, check_silver
from tests.conftest import lake_env

PII_KEY = "test-only-pii-key-0123456789abcdef"
STAMPS = ("_ingested_at", "_processed_at", "_quarantined_at", "_updated_at")
NOW = datetime.now(UTC).replace(microsecond=0)


def lake(root: Path) -> Config:
    return load_config({**lake_env(root, "127.0.0.1:1", "c."), "LAKEHOUSE_PII_KEY": PII_KEY})


def kafka_batches(spark):  # type: ignore[no-untyped-def]
    """Two batches over every topic: the first without a duplicate (nothing in it may be taken
    for one on a replay), the second with copies of rows of both batches, malformed and late
    rows."""
    from streaming import bronze

    offsets = dict.fromkeys(ENTITIES, 0)

    def frame(messages):  # type: ignore[no-untyped-def]
        rows = []
        for m in messages:
            rows.append((m.key, m.value, f"c.{m.entity}", 0, offsets[m.entity], NOW, 0, []))
            offsets[m.entity] += 1
        return spark.createDataFrame(rows, bronze.KAFKA_SCHEMA).localCheckpoint()

    clean = MessageStream("all", seed=3, vehicles=5_000)
    first = clean.next_chunk(300, NOW)
    messy = MessageStream("all", duplicates=0.1, malformed=0.1, late=0.05, seed=4, vehicles=5_000)
    messy._recent = {e: [m for m in first if m.entity == e] for e in ENTITIES}  # later copies
    second = messy.next_chunk(300, NOW)
    assert {m.entity for m in first} == set(ENTITIES)
    assert not any(m.kind != "valid" for m in first)
    assert {"duplicate", "late"} <= {m.kind for m in second}
    return [frame(first), frame(second)]


def tables(spark, config: Config) -> dict:  # type: ignore[no-untyped-def]
    """Every table of the lake, its timestamps of processing dropped."""
    from delta.tables import DeltaTable

    names = [("bronze", e) for e in ENTITIES] + [("silver", e) for e in ENTITIES]
    names += [("quarantine", e) for e in ENTITIES] + [("silver", "vehicle_state")]
    names += [("gold", t) for t in TABLES]
    found = {}
    for layer, name in names:
        path = config.table_path(layer, name)
        if DeltaTable.isDeltaTable(spark, path):
            found[f"{layer}.{name}"] = spark.read.format("delta").load(path).drop(*STAMPS)
    return found


class _Crash(Exception):
    """Raised right after the n-th table write of an attempt has committed, as a kill -9 there
    would leave it."""


def test_a_batch_killed_after_any_table_write_replays_to_the_batch_that_never_died(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = kafka_batches(spark)
    clean = lake(tmp_path / "clean")
    writer = BatchWriter(spark, clean, "all", check_inputs(clean))
    for batch_id, batch in enumerate(batches):
        writer(batch, batch_id)
    expected = {name: frame.collect() for name, frame in tables(spark, clean).items()}

    config = lake(tmp_path / "crashed")
    writes = {"n": 0, "crash_after": 0}
    lock = threading.Lock()
    write = commits.CommitGuard.write

    def counted(self, path, batch_id, work):  # type: ignore[no-untyped-def]
        wrote = write(self, path, batch_id, work)
        with lock:
            writes["n"] += wrote
            if wrote and writes["n"] == writes["crash_after"]:
                raise _Crash(f"after write {writes['n']}: {path}")
        return wrote

    monkeypatch.setattr(commits.CommitGuard, "write", counted)
    crashes = []
    for batch_id, batch in enumerate(batches):
        # Each attempt is a restarted pipeline (a new writer: nothing in memory) that dies one
        # write later than the one before, until one gets through. The writes of a batch run
        # side by side, so each crash point leaves a different set of tables committed.
        for crash_after in range(1, 100):
            writes.update(n=0, crash_after=crash_after)
            try:
                BatchWriter(spark, config, "all", check_inputs(config))(batch, batch_id)
            except _Crash as crash:
                crashes.append(str(crash))
                continue
            break

    assert len(crashes) >= 2 * 15, crashes  # every Bronze, Silver, quarantine and Gold write
    replayed = tables(spark, config)
    assert set(replayed) == set(expected)
    for name, frame in replayed.items():
        assertDataFrameEqual(frame, expected[name])
    for entity in ENTITIES:
        books = check_silver(spark, config, entity)
        assert books.ok and books.silver > 0, books
    duplicates = {e: check_silver(spark, config, e).duplicates for e in ENTITIES}
    assert sum(duplicates.values()) > 0
    quarantine = tables(spark, config)["quarantine.telemetry"]
    first = quarantine.where(F.col("_batch_id") == 0)
    assert first.count() == 0, "the batch without duplicates quarantined rows on its replays"
    for name in TABLES:
        check = check_gold(spark, config, name)
        assert check.ok and check.gold_rows > 0, check
