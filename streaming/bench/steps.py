"""One drain-ladder step, run in a process of its own: `python -m streaming.bench step ...`.

The process meters itself (its Python, its JVM, their workers) phase by phase: `startup` (the
SparkSession), then each phase it was asked for, in order: `raw` (confluent-kafka consumer),
`noop` (Spark's Kafka source into the no-op sink), `bronze` and `all` (those pipelines with an
availableNow trigger, as `lakehouse run <name> --once` runs them, with what each batch reported
per layer), and `stream`: `lakehouse run all` (streaming) in the same application on the same
lake until SIGTERM, for the rate ladder; a file `streaming` next to the report says its query
has started. The queries' progress reports give the processing window (first batch start to
last batch end), which leaves out JVM start-up and table creation. The report is rewritten
after every phase.

When one process runs both pipelines, `bronze` writes a lake of its own next to the main one:
`all` (and `stream` after it) must find Bronze holding the corpus once, not twice.
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
from streaming.config import Config
from streaming.errors import BrokerError, QueryError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from streaming.pipeline import BatchReport

log = logging.getLogger(__name__)
PHASES = ("raw", "noop", "bronze", "all", "stream")
SPARK_PHASES = ("noop", "bronze", "all", "stream")
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
            outcome = _PHASES[phase](spark, _lake_of(config, phase, phases), expected)
            metered = dataclasses.asdict(sampler.mark())
            report["phases"].append({"name": phase, **metered, **outcome})
        _write(result, report)
    report["peak_rss_mb"] = sampler.overall_peaks()
    sampler.stop()
    _write(result, report)
    if spark is not None:
        spark.stop()


def _lake_of(config: Config, phase: str, phases: list[str]) -> Config:
    """The tables `phase` writes: its own, next to the main ones, for `bronze` when `all` runs
    in the same process (each pipeline appends the corpus to Bronze under its own mark)."""
    if phase != "bronze" or "all" not in phases:
        return config
    return dataclasses.replace(config, root=config.root.rstrip("/") + "-bronze-step")


def _write(path: Path, report: dict[str, Any]) -> None:
    """Replace the report at once: a reader never sees half of it."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)


def _stream(spark: SparkSession, config: Config, marker: Path) -> None:
    """`lakehouse run all` in this application until SIGTERM; `marker` appears once its query
    has started (every table exists by then)."""
    from streaming.pipeline import query_name
    from streaming.runner import run

    spark.streams.addListener(_started(query_name("all"), marker))
    run(config, "all", once=False)


def _started(name: str, marker: Path) -> Any:
    """A listener that touches `marker` when the query `name` starts."""
    from pyspark.sql.streaming import StreamingQueryListener

    class Started(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            if event.name == name:
                marker.touch()

        def onQueryProgress(self, event: Any) -> None:
            pass

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            pass

    return Started()


def _start_spark(config: Config, phases: list[str]) -> SparkSession:
    from streaming.runner import preflight
    from streaming.spark import build_spark

    # One clear line for a missing key, topic or jar: the checks of the longest pipeline run.
    preflight(config, "all" if {"all", "stream"} & set(phases) else "bronze")
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
        return _consume(consumer, expected)
    except KafkaException as exc:
        raise BrokerError(f"raw consumer failed: {exc}") from None
    finally:
        consumer.close()


def _consume(consumer: Any, expected: int) -> dict[str, Any]:
    """Poll until `expected` messages are in. The window runs from the start of the poll that
    returned the first messages to the end of the one that returned the last: the whole time
    spent fetching them. A poll asks for at most what is still missing: one asking for more
    waits out its whole timeout, which the window would then measure instead of the reads."""
    count = size = 0
    first = last = None
    deadline = time.monotonic() + 120 + expected / 10_000
    while count < expected:
        asked = time.time()
        batch = consumer.consume(min(RAW_POLL, expected - count), timeout=1.0)
        for message in batch:
            if message.error() is not None:
                raise BrokerError(f"raw consumer: {message.error()}")
            size += len(message.value() or b"")
        if batch:
            first = asked if first is None else first
            last = time.time()
        count += len(batch)
        if time.monotonic() > deadline:
            raise BrokerError(f"raw consumer read {count} of {expected} messages in time")
    window = [first, last] if first is not None else None
    return {"rows": {"raw.telemetry": count}, "payload_bytes": size, "window": window}


def _noop(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    from streaming.bronze import read_topics

    query = (
        read_topics(spark, config, [ENTITY])
        .writeStream.format("noop")
        .queryName(NOOP_QUERY)
        .option("checkpointLocation", config.checkpoint_path(NOOP_QUERY))
        .trigger(availableNow=True)
        .start()
    )
    return _drain(query)


def _bronze(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    return _pipeline(spark, config, "bronze")


def _all(spark: SparkSession, config: Config, _: int) -> dict[str, Any]:
    return _pipeline(spark, config, "all")


def _pipeline(spark: SparkSession, config: Config, name: str) -> dict[str, Any]:
    """One pipeline (`lakehouse run <name> --once`) over the corpus, with what each of its
    batches reported: rows per layer and seconds per layer."""
    from streaming import pipeline
    from streaming.silver.query import check_inputs

    reports: list[BatchReport] = []
    inputs = check_inputs(config) if "silver" in pipeline.LAYERS[name] else None
    query = pipeline.start(spark, config, name, inputs, once=True, observer=reports.append).query
    drained, figures = _drain(query), layer_figures(reports)
    drained["rows"].update(figures.pop("rows"))
    return {**drained, **figures}


def layer_figures(reports: list[BatchReport]) -> dict[str, Any]:
    """Rows and seconds per layer over a pipeline's batches: Bronze rows appended, Silver rows
    judged (and their books), Gold rows upserted."""
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    books: dict[str, dict[str, int]] = {}

    def add(key: str, count: int) -> None:
        rows[key] = rows.get(key, 0) + count

    for report in reports:
        for entity in report.bronze_written:
            add(f"bronze.{entity}", report.rows_in.get(entity, 0))
        for entity, counts in report.silver.items():
            add(f"silver.{entity}", counts.bronze)
            book = books.setdefault(entity, {"valid": 0, "duplicate": 0, "quarantined": 0})
            book["valid"] += counts.valid
            book["duplicate"] += counts.duplicate
            book["quarantined"] += sum(counts.stages.values())
        for table, summary in report.gold.items():
            add(f"gold.{table}", summary.upserted)
        for layer, spent in report.seconds.items():
            seconds[layer] = seconds.get(layer, 0.0) + spent
    return {
        "rows": rows,
        "silver": books,
        "layer_s": {layer: round(s, 2) for layer, s in seconds.items()},
    }


_PHASES: dict[str, Callable[[Any, Config, int], dict[str, Any]]] = {
    "raw": _raw,
    "noop": _noop,
    "bronze": _bronze,
    "all": _all,
}


def _drain(query: StreamingQuery) -> dict[str, Any]:
    """Wait for the query; return the rows it read, its batches and its processing window
    (the first non-empty batch's start to the last one's end)."""
    _await(query)
    progress = [p for p in query.recentProgress if p.numInputRows > 0]
    starts = [_epoch(p.timestamp) for p in progress]
    ends = [start + p.batchDuration / 1000.0 for start, p in zip(starts, progress, strict=True)]
    return {
        "rows": {query.name or str(query.id): sum(p.numInputRows for p in progress)},
        "batches": len(progress),
        "window": [min(starts), max(ends)] if starts else None,
    }


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
