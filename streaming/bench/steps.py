"""One drain-ladder step, run in a process of its own: `python -m streaming.bench step ...`.

The process meters itself (its Python, its JVM, their workers) phase by phase: `startup` (the
SparkSession), then each phase it was asked for, in order: `raw` (confluent-kafka consumer),
`noop` (Spark's Kafka source into the no-op sink), `bronze`, `silver`, `gold` (the layers' own
queries with an availableNow trigger, each layer draining before the next starts, as
`lakehouse run all --once` does), and `stream`: `lakehouse run all` (streaming) in the same
application on the same lake until SIGTERM, for the rate ladder; a file `streaming` next to the
report says its Gold queries have started. The queries' progress reports give the processing
window (first batch start to last batch end), which leaves out JVM start-up and table creation.
The report is rewritten after every phase.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming.bench.procfs import TreeSampler
from streaming.config import ENTITIES, Config
from streaming.errors import BrokerError, QueryError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)
PHASES = ("raw", "noop", "bronze", "silver", "gold", "stream")
SPARK_PHASES = ("noop", "bronze", "silver", "gold", "stream")
ENTITY = "telemetry"
NOOP_QUERY = "bench.noop"
RAW_POLL = 10_000


def run_step(config: Config, phases: list[str], expected: int, result: Path) -> None:
    """Run the phases, metering each, and write the step's JSON to `result` after each."""
    sampler = TreeSampler(os.getpid()).start()
    report: dict[str, Any] = {"phases": [], "started": time.time()}
    spark = None
    if any(phase in SPARK_PHASES for phase in phases):
        spark = _start_spark(config, phases)
        report["phases"].append({"name": "startup", **dataclasses.asdict(sampler.mark())})
    else:
        sampler.mark()
    for phase in phases:
        if phase == "stream":  # the drain phases are written: the ladder has read them
            assert spark is not None
            _stream(spark, config, result.parent / "streaming")
            report["phases"].append({"name": phase, **dataclasses.asdict(sampler.mark())})
            spark = None  # the runner stopped it
        else:
            outcome = _PHASES[phase](spark, config, expected)
            metered = dataclasses.asdict(sampler.mark())
            report["phases"].append({"name": phase, **metered, **outcome})
        _write(result, report)
    report["peak_rss_mb"] = sampler.overall_peaks()
    sampler.stop()
    _write(result, report)
    if spark is not None:
        spark.stop()


def _write(path: Path, report: dict[str, Any]) -> None:
    """Replace the report at once: a reader never sees half of it."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)


def _stream(spark: SparkSession, config: Config, marker: Path) -> None:
    """`lakehouse run all` in this application until SIGTERM; `marker` appears once every
    Gold query has started."""
    from streaming.gold.aggregates import TABLES
    from streaming.runner import run

    spark.streams.addListener(_gold_started(len(TABLES), marker))
    run(config, "all", once=False)


def _gold_started(count: int, marker: Path) -> Any:
    """A listener that touches `marker` when `count` Gold queries have started."""
    from pyspark.sql.streaming import StreamingQueryListener

    class GoldStarted(StreamingQueryListener):
        def __init__(self) -> None:
            self.names: set[str] = set()

        def onQueryStarted(self, event: Any) -> None:
            if (event.name or "").startswith("gold."):
                self.names.add(event.name)
                if len(self.names) >= count:
                    marker.touch()

        def onQueryProgress(self, event: Any) -> None:
            pass

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            pass

    return GoldStarted()


def _start_spark(config: Config, phases: list[str]) -> SparkSession:
    from streaming.runner import preflight
    from streaming.spark import build_spark

    layers = [phase for phase in phases if phase in ("bronze", "silver", "gold")]
    preflight(config, layers)  # one clear line for a missing key, topic or jar
    # Keep every progress report of the step (Spark keeps the last 100 by default).
    extra = {**config.spark.extra, "spark.sql.streaming.numRecentProgressUpdates": "100000"}
    config = dataclasses.replace(config, spark=dataclasses.replace(config.spark, extra=extra))
    return build_spark(config, app_name="lakehouse-bench-" + "-".join(phases))


def _raw(_: Any, config: Config, expected: int) -> dict[str, Any]:
    """Read every message of the telemetry topic with a plain confluent-kafka consumer."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    topic = config.topic(ENTITY).name
    consumer = Consumer(
        {
            **config.kafka.client_options(),
            "group.id": f"lakehouse-bench-raw-{os.getpid()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        count = size = 0
        first = last = time.time()
        deadline = time.monotonic() + 120 + expected / 10_000
        while count < expected:
            batch = consumer.consume(RAW_POLL, timeout=1.0)
            for message in batch:
                if message.error() is not None:
                    raise BrokerError(f"raw consumer: {message.error()}")
                size += len(message.value() or b"")
            if batch and count == 0:
                first = time.time()
            count += len(batch)
            last = time.time() if batch else last
            if time.monotonic() > deadline:
                raise BrokerError(f"raw consumer read {count} of {expected} messages in time")
    except KafkaException as exc:
        raise BrokerError(f"raw consumer failed: {exc}") from None
    finally:
        consumer.close()
    return {"rows": {"raw.telemetry": count}, "payload_bytes": size, "window": [first, last]}


def _noop(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    from streaming.bronze import read_topic

    query = (
        read_topic(spark, config, ENTITY)
        .writeStream.format("noop")
        .queryName(NOOP_QUERY)
        .option("checkpointLocation", config.checkpoint_path(NOOP_QUERY))
        .trigger(availableNow=True)
        .start()
    )
    return _drain([query])


def _bronze(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    from streaming.bronze import start_bronze

    return _drain([start_bronze(spark, config, entity, True) for entity in ENTITIES])


def _silver(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    from streaming.silver.query import check_inputs, start_silver

    return _drain(start_silver(spark, config, check_inputs(config), True))


def _gold(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    from streaming.gold.query import start_gold

    return _drain(start_gold(spark, config, True))


_PHASES: dict[str, Callable[[Any, Config, int], dict[str, Any]]] = {
    "raw": _raw,
    "noop": _noop,
    "bronze": _bronze,
    "silver": _silver,
    "gold": _gold,
}


def _drain(queries: list[StreamingQuery]) -> dict[str, Any]:
    """Wait for every query; return rows read per query and the processing window."""
    for query in queries:
        _await(query)
    rows: dict[str, int] = {}
    starts: list[float] = []
    ends: list[float] = []
    batches = 0
    for query in queries:
        progress = query.recentProgress
        rows[query.name or str(query.id)] = sum(p.numInputRows for p in progress)
        for p in progress:
            if p.numInputRows > 0:
                begin = _epoch(p.timestamp)
                starts.append(begin)
                ends.append(begin + p.batchDuration / 1000.0)
                batches += 1
    window = [min(starts), max(ends)] if starts else None
    return {"rows": rows, "batches": batches, "window": window}


def _await(query: StreamingQuery) -> None:
    from pyspark.errors import StreamingQueryException

    try:
        query.awaitTermination()
    except StreamingQueryException as exc:
        first_line = str(exc).strip().splitlines()[0][:500]
        raise QueryError(
            f"query {query.name} failed: {first_line}", query=query.name or ""
        ) from None


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
