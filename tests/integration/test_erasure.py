"""Governance on a lake written by the real pipeline (real Spark and Delta, hand-made Kafka
batches): a Gold row walked back to its Kafka records; the audit of every write and the
OpenLineage events of every batch; then a GDPR erasure: before, the subject is in every layer;
after, a decoding scan of every file finds none of their identifiers, the books close, Gold
equals its recomputation, and the same Kafka records replayed do not bring them back."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming import erasure, lease
from streaming.config import Config, load_config
from streaming.erasure import Subject, erase, find, prove
from streaming.errors import RetryableError
from streaming.gold.aggregates import TABLES
from streaming.lineage import lineage
from streaming.pipeline import BatchWriter
from streaming.redrive import delete_matching
from streaming.silver.query import check_inputs
from streaming.simulator import SIMULATED
from streaming.simulator.events import EventFactory
from streaming.simulator.stream import MessageStream
from streaming.verify import check_bronze, check_gold, check_silver
from tests.builders import PII_KEY, kafka_frame, lakehouse, one_clear_line
from tests.conftest import lake_env

NOW = datetime.now(UTC).replace(microsecond=0)
PEOPLE = ("bookings", "user_events", "feedback")


def _lake(root: Path) -> Config:
    return load_config(
        {**lake_env(root, "127.0.0.1:1", "c."), "LAKEHOUSE_PII_KEY": PII_KEY,
         "LAKEHOUSE_OPENLINEAGE_FILE": str(root / "lineage" / "events.jsonl"),
         "LAKEHOUSE_ERASE_GRACE_SECONDS": "1"}  # no other writer here
    )  # fmt: skip


def _batches(spark: SparkSession):
    """Two batches over every topic from a pool of 20 users (so one has many rows), the second
    with duplicates and malformed rows; and every message sent."""
    stream = MessageStream("all", duplicates=0.1, malformed=0.1, seed=11, vehicles=500)
    stream.factory = EventFactory(seed=11, vehicles=500, users=20)
    offsets = dict.fromkeys(SIMULATED, 0)
    first = stream.next_chunk(250, NOW)
    second = stream.next_chunk(250, NOW)
    frames = [kafka_frame(spark, m, offsets, NOW) for m in (first, second)]
    return frames, first + second


def _subject(messages) -> Subject:
    """The user with the most decodable bookings, app events and feedback among those with a
    valid booking and a valid app event (which users those are depends on the hour the test
    runs at), with their e-mail and phone."""
    records, valid = [], set()
    for m in messages:
        if m.entity in PEOPLE:
            try:
                record = json.loads(m.value)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("user_id"):
                records.append(record)
                if m.kind == "valid":
                    valid.add((m.entity, record["user_id"]))
    both = {u for e, u in valid if e == "bookings"} & {u for e, u in valid if e == "user_events"}
    user, _ = Counter(r["user_id"] for r in records if r["user_id"] in both).most_common(1)[0]
    contact = next(r for r in records if r["user_id"] == user and r.get("email"))
    return Subject(user, contact["email"], contact["phone"])


def _ledger(path: Path, messages) -> Path:
    offsets: Counter[str] = Counter()
    lines = ["topic,partition,offset,kind"]
    for m in messages:
        lines.append(f"c.{m.entity},0,{offsets[m.entity]},{m.kind}")
        offsets[m.entity] += 1
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.seconds(250)
def test_lineage_audit_and_an_erasure_that_leaves_no_trace(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _lake(tmp_path)
    frames, messages = _batches(spark)
    writer = BatchWriter(spark, config, "all", check_inputs(config))
    for batch_id, frame in enumerate(frames):
        writer(frame, batch_id)
    subject = _subject(messages)
    key = config.require_pii_key()
    _walk_back_a_gold_row(spark, config, messages)
    _every_write_audited_and_every_batch_in_openlineage(config)

    # Before: in Bronze, Silver and Gold, and the scan of the files finds it.
    found = {r["table"] for r in find(spark, config, subject).select("table").collect()}
    assert {"bronze.bookings", "silver.bookings", "bronze.user_events"} <= found, found
    bookings = spark.read.format("delta").load(config.table_path("silver", "bookings"))
    tokens = subject.tokens(key)  # computed in Python as Silver computes them in Spark
    assert bookings.where(F.col("email_token") == tokens["email_token"]).count() > 0
    assert bookings.where(F.col("phone_token") == tokens["phone_token"]).count() > 0
    before = prove(config, subject.needles(key))
    layers = {hit["file"].split("/", 1)[0] for hit in before["hits"]}
    assert {"bronze", "silver", "gold"} <= layers, before["hits"]

    # The first attempt at applying it fails after its first commit (a conflict that outlasted
    # the retries, say); the second resumes, and the purge still covers the first's commit.
    calls = []

    def deleting_then_failing(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise RetryableError("injected: a write that kept conflicting")
        return delete_matching(*args, **kwargs)

    monkeypatch.setattr(erasure, "delete_matching", deleting_then_failing)
    monkeypatch.setattr(erasure, "_RETRY_S", 0.1)
    receipt = erase(spark, config, subject, acquire=lambda: lease.take(config, ["silver", "gold"]))
    assert len(calls) > 2 and calls[0] not in calls[2:], calls  # resumed without redoing it
    assert receipt.proof["hits"] == [], receipt.proof["hits"]
    assert receipt.proof["files"] > 50 and receipt.proof["identifiers"] == 5
    assert receipt.rows["silver.bookings"] > 0 and receipt.rows["bronze.bookings"] > 0
    assert set(receipt.versions) >= {"bronze.bookings", "silver.bookings"}
    assert any(name.startswith("gold.") for name in receipt.gold), receipt.gold
    assert sum(receipt.files_rewritten.values()) > 0
    assert sum(p["files"] for p in receipt.purged.values()) > 0
    assert receipt.tombstones == sum(
        n for table, n in receipt.rows.items() if table.startswith("bronze.")
    )
    text = json.dumps(receipt.as_dict())
    assert not any(n.lower() in text.lower() for n in subject.needles(key))

    # The books close with the erased rows gone from every layer; Gold == recomputation.
    ledger = _ledger(tmp_path / "sent.ledger", messages)
    bronze = check_bronze(spark, config, [ledger])
    assert (bronze.missing, bronze.duplicated, bronze.unerased) == (0, 0, 0), bronze
    assert bronze.erased == receipt.tombstones
    for entity in SIMULATED:
        books = check_silver(spark, config, entity)
        assert books.ok, books
    for name in TABLES:
        check = check_gold(spark, config, name)
        assert check.ok, check
    journeys = spark.read.format("delta").load(config.table_path("gold", "customer_journey_events"))
    assert journeys.where(F.col("user_token") == subject.tokens(key)["email_token"]).count() == 0

    # The same Kafka records again (a restart from an old checkpoint): tombstoned, not written.
    again = BatchWriter(spark, config, "all", check_inputs(config))
    again(frames[0].unionByName(frames[1]), len(frames))
    assert find(spark, config, subject).count() == 0

    # A second erasure of the same person finds nothing and says so; the proof holds.
    second = erase(spark, config, subject, acquire=lambda: lease.take(config, ["silver", "gold"]))
    assert (second.tombstones, second.rows, second.proof["hits"]) == (0, {}, [])
    assert "no row of the subject" in second.line()


def test_erase_flags_are_checked_before_spark_starts(tmp_path: Path) -> None:
    env = {**os.environ, **lake_env(tmp_path, "127.0.0.1:1", "c."), "LAKEHOUSE_PII_KEY": PII_KEY}
    nobody = lakehouse("erase", env=env, timeout=60)
    one_clear_line(nobody, 2, "name the subject to erase")
    short = lakehouse("erase", "--user-id", "U", env=env, timeout=60)
    one_clear_line(short, 2, "too short")
    empty = lakehouse("erase", "--user-id", "U0000001", env=env, timeout=60)
    one_clear_line(empty, 2, "no Bronze table")
    unknown = lakehouse("lineage", "gold.nothing", "--where", "true", env=env, timeout=60)
    one_clear_line(unknown, 2, "unknown table")


def _walk_back_a_gold_row(spark: SparkSession, config: Config, messages) -> None:
    """The busiest demand row, walked back: as many Silver and Bronze bookings as it counts,
    each a record the producer sent (the ledger), of the row's vehicle type and hour."""
    demand = spark.read.format("delta").load(config.table_path("gold", "demand_by_zone_hour"))
    row = demand.orderBy(F.desc("booking_count"), "zone_id", "vehicle_type", "hour").first()
    assert row is not None and row["booking_count"] >= 1, row  # 2+ at most hours of the day
    where = (f"zone_id = {row['zone_id']} AND vehicle_type = '{row['vehicle_type']}' "
             f"AND date = DATE'{row['date']}' AND hour = {row['hour']}")  # fmt: skip
    walked = lineage(spark, config, "gold.demand_by_zone_hour", where, limit=100)
    assert walked["rows"] == 1
    assert walked["silver"]["bookings"] == walked["bronze"]["bookings"] == row["booking_count"]
    assert walked["batches"]["bookings"], walked
    sent = {}
    offsets: Counter[str] = Counter()
    for m in messages:
        sent[(f"c.{m.entity}", offsets[m.entity])] = m
        offsets[m.entity] += 1
    bookings = [k for k in walked["kafka"] if k["topic"] == "c.bookings"]
    assert len(bookings) == row["booking_count"]
    for record in bookings:
        message = sent[(record["topic"], record["offset"])]
        assert message.kind in ("valid", "duplicate") or message.kind.startswith("late")
        booked = json.loads(message.value)
        assert booked["vehicle_type"] == row["vehicle_type"]
        assert datetime.fromisoformat(booked["booking_timestamp"]).hour == row["hour"]


def _every_write_audited_and_every_batch_in_openlineage(config: Config) -> None:
    from streaming.catalog import AUDIT_WRITES, TableRef
    from streaming.tables import open_table

    table = open_table(config, TableRef(*AUDIT_WRITES).path(config))
    assert table is not None
    audited = table.to_pyarrow_table().to_pylist()
    by_batch = Counter(r["batch_id"] for r in audited)
    assert set(by_batch) == {0, 1} and all(n >= 10 for n in by_batch.values()), by_batch
    for row in audited:
        assert row["query"] == "pipeline.all" and row["version"] >= 1 and "pid" in row["by"]
        stored = open_table(config, TableRef(*row["table"].split(".", 1)).path(config))
        assert stored is not None
        history = {int(h["version"]): h for h in stored.history()}
        assert json.loads(history[row["version"]]["userMetadata"])["batch"] == row["batch_id"]
    silver = [r for r in audited if r["table"] == "silver.bookings"]
    assert silver and all(r["rows_written"] > 0 and r["rows_in"] > 0 for r in silver)

    events = [json.loads(line) for line in config.lineage.file and
              Path(config.lineage.file).read_text().splitlines()]  # fmt: skip
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"] * 2
    complete = events[1]
    assert complete["job"] == {**complete["job"], "namespace": "lakehouse", "name": "pipeline.all"}
    outputs = {o["name"].rsplit("/", 2)[-2] + "." + o["name"].rsplit("/", 1)[-1]: o
               for o in complete["outputs"]}  # fmt: skip
    first = {r["table"]: r for r in audited if r["batch_id"] == 0}
    assert set(outputs) == set(first)
    for name, output in outputs.items():
        assert output["facets"]["version"]["datasetVersion"] == str(first[name]["version"])
        assert output["outputFacets"]["outputStatistics"]["rowCount"] == first[name]["rows_written"]
    assert {i["name"] for i in complete["inputs"]} == {f"c.{e}" for e in SIMULATED}
