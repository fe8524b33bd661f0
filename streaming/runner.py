"""Runs one pipeline (`all`, `bronze` or `refine`: see `streaming.pipeline`) as one query.

Checks everything a user can get wrong before the JVM starts (jars, writable paths, brokers,
topics, contracts), then starts the pipeline's query, serves metrics, and waits: with `once`
until it has drained what was available, otherwise until it fails or SIGTERM/SIGINT asks for a
clean stop (the checkpoint makes any stop, clean or not, safe to restart from). A long-running
Silver and Gold writer also applies recorded erasures between its batches.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from py4j.protocol import Py4JError

from streaming import checkpoints, jars, lease, pipeline
from streaming.config import Config
from streaming.erasure import PendingErasures, apply_pending
from streaming.errors import ConfigError, QueryError
from streaming.history import RunHistory
from streaming.kafka.admin import require_topics
from streaming.metrics import PipelineMetrics, ProgressListener
from streaming.s3 import storage as s3_storage
from streaming.silver.query import SilverInputs, check_inputs
from streaming.spark import build_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from streaming.pipeline import BatchReport

log = logging.getLogger(__name__)
# What `run silver` and `run gold` were: Silver and Gold now run in one pass, as `refine`.
RENAMED = {"silver": "refine", "gold": "refine"}
NO_SPACE = b"No space left on device"  # the OS error of a full disk, as the JVM words it


@dataclass(frozen=True)
class Plan:
    """What one `run` starts, with every input checked before Spark starts."""

    pipeline: str
    layers: list[str]
    silver: SilverInputs | None


def run(config: Config, name: str, once: bool) -> None:
    if name in RENAMED:
        raise ConfigError(
            f"`run {name}` is now part of `run {RENAMED[name]}`",
            hint="Silver and Gold run in one pass over each batch: `lakehouse run refine` "
            "(or `run all` for Kafka -> Bronze -> Silver -> Gold)",
        )
    plan = preflight(config, name)
    with lease.writer_leases(config, plan.layers):  # one writer per layer
        resume_checks(config, plan)
        log_start = config.spark_log.stat().st_size if config.spark_log.is_file() else 0
        try:
            _run(config, plan, once)
        except QueryError as exc:
            raise _query_failed(config, plan, log_start, exc) from None
        except (Py4JError, ConnectionError) as exc:
            if _jvm_alive():
                raise
            raise _jvm_ended(config, plan, log_start) from exc


def _jvm_alive() -> bool:
    """False only when this process started the JVM and it has exited (under spark-submit
    the JVM is not a child of this process: it counts as alive)."""
    from pyspark import SparkContext

    process = getattr(SparkContext._gateway, "proc", None)
    return process is None or process.poll() is None


def _jvm_ended(config: Config, plan: Plan, log_start: int) -> QueryError:
    """The error for a JVM that went away under the pipeline: out of heap, if its log says so
    since this run began (Spark ends the JVM when a task runs out of memory)."""
    name = pipeline.query_name(plan.pipeline)
    if _logged(config, log_start, b"java.lang.OutOfMemoryError"):
        return QueryError(
            f"query {name} stopped: its JVM ran out of heap "
            f"(LAKEHOUSE_DRIVER_MEMORY={config.spark.driver_memory})",
            query=name,
            hint="give it more (LAKEHOUSE_DRIVER_MEMORY) or take fewer records per batch "
            "(LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER), then run again: the checkpoint resumes after "
            "the last committed batch",
        )
    return QueryError(
        f"query {name} stopped: its JVM ended unexpectedly",
        query=name,
        hint=f"see Spark's log {config.spark_log}; the checkpoint resumes after the last "
        "committed batch",
    )


def _query_failed(config: Config, plan: Plan, log_start: int, exc: QueryError) -> QueryError:
    """The error a failed query ends the run with: a full disk named as such (a task's write
    failure reaches the query's error without its cause; Spark's log holds it)."""
    if _logged(config, log_start, NO_SPACE):
        return _no_space(pipeline.query_name(plan.pipeline))
    return exc


def _logged(config: Config, log_start: int, text: bytes) -> bool:
    """Whether Spark's log holds `text` since this run began (read line by line: a long run's
    log can be large)."""
    try:
        with config.spark_log.open("rb") as spark_log:
            spark_log.seek(log_start)
            return any(text in line for line in spark_log)
    except OSError:
        return False


def _no_space(name: str) -> QueryError:
    return QueryError(
        f"query {name} stopped: no space left on the device holding the lake or its checkpoints",
        query=name,
        hint="free space or grow the volume, then run again: the checkpoint resumes after the "
        "last committed batch",
    )


def resume_checks(config: Config, plan: Plan) -> None:
    """What the checkpoint and the broker say before the query resumes (under the leases: a
    torn offset file is set aside only by the pipeline's one writer)."""
    name = pipeline.query_name(plan.pipeline)
    location = config.checkpoint_path(name)
    repaired = checkpoints.repair_torn_offsets(config, name, location)
    if repaired:
        log.warning(repaired)
    if "bronze" in plan.layers:
        checkpoints.check_data_loss(config, name, location)


def _run(config: Config, plan: Plan, once: bool) -> None:
    spark = build_spark(config, app_name=f"lakehouse-{plan.pipeline}")
    log.info("Spark's own log: %s", config.spark_log)
    metrics = PipelineMetrics()
    metrics.serve(config.metrics_port)
    listener = ProgressListener(metrics)
    spark.streams.addListener(listener)
    query: StreamingQuery | None = None
    try:
        history = RunHistory(config, plan.pipeline)

        def observer(report: BatchReport) -> None:
            metrics.record_batch(report)
            history.append(report)

        query, writer = pipeline.start(spark, config, plan.pipeline, plan.silver, once, observer)
        log.info("started %s", query.name)
        if once:
            _await(query)
        else:
            tick = None
            if {"silver", "gold"} <= set(plan.layers):
                tick = ErasureDesk(spark, config, writer).tick
            _await_stop(spark, [query], tick)
    finally:
        if query is not None and query.isActive:
            query.stop()
        # Detach before the JVM goes: it must not call back into a Python that has exited.
        spark.streams.removeListener(listener)
    if query is not None:
        log.info("%s: %d rows in this run", query.name, _rows_processed(query))
    spark.stop()


def _rows_processed(query: StreamingQuery) -> int:
    return sum(progress["numInputRows"] for progress in query.recentProgress)


def preflight(config: Config, name: str) -> Plan:
    """Fail with one clear line before any stream starts."""
    layers = list(pipeline.LAYERS[name])
    silver = check_inputs(config) if "silver" in layers else None
    spark_jars = jars.require(config.jars_dir, "spark")
    s3_storage.require_log_store_jars(config, [jar.name for jar in spark_jars])
    for setting, location in (
        ("LAKEHOUSE_ROOT", config.root),
        ("LAKEHOUSE_CHECKPOINTS", config.checkpoints),
    ):
        if "://" not in location:
            require_writable(setting, Path(location))
        else:  # the bucket exists, the credentials work, the prefix is writable
            s3_storage.check_location(config, setting, location)
    if "bronze" in layers:
        require_topics(config, list(config.entities))
    return Plan(name, layers, silver)


def require_writable(setting: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{setting} {folder} is not writable ({exc.strerror})",
            hint=f"point {setting} at a folder this user can write",
        ) from None


class ErasureDesk:
    """A running Silver and Gold writer applies the erasures `lakehouse erase` records, between
    two of its batches (it is those tables' one writer). A failed attempt is logged and tried
    again a minute later; the stream goes on."""

    RETRY_S = 60.0

    def __init__(self, spark: SparkSession, config: Config, writer: pipeline.BatchWriter) -> None:
        self.spark = spark
        self.config = config
        self.writer = writer
        self.pending = PendingErasures(config)
        self.next_try = 0.0
        # A batch the last run died inside: this run finishes it first (`part_written_batches`).
        unfinished = checkpoints.part_written(config, pipeline.query_name(writer.pipeline))
        self.unfinished = unfinished[0] if unfinished is not None else None

    def tick(self) -> None:
        if time.monotonic() < self.next_try:
            return
        if self.unfinished is not None and self.writer.finished < self.unfinished:
            return
        try:
            if not self.pending.waiting():
                return
            with self.writer.lock:
                apply_pending(self.spark, self.config)
        # The stream must not fail for an erasure, nor for a storage outage while it looks for
        # one (its batches have their own retries): both are tried again.
        except Exception as exc:
            log.error("erasures could not be looked up or applied (again in %.0f s): %s",
                      self.RETRY_S, str(exc).splitlines()[0][:300])  # fmt: skip
            self.next_try = time.monotonic() + self.RETRY_S


def _await_stop(
    spark: SparkSession, queries: list[StreamingQuery], tick: Callable[[], None] | None = None
) -> None:
    from pyspark.errors import StreamingQueryException

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        with contextlib.suppress(StreamingQueryException):  # the query that failed says why below
            spark.streams.awaitAnyTermination(1)
        if tick is not None:
            tick()
        for query in queries:
            if not query.isActive:
                _await(query)
                raise QueryError(f"query {query.name} stopped unexpectedly", query=query.name)
    log.info("stopping %d queries", len(queries))
    for query in queries:
        query.stop()


def _await(query: StreamingQuery) -> None:
    from pyspark.errors import StreamingQueryException

    try:
        query.awaitTermination()
    except StreamingQueryException as exc:
        if NO_SPACE.decode() in str(exc):
            raise _no_space(query.name or "") from None
        first_line = str(exc).strip().splitlines()[0][:500]
        progress = query.lastProgress
        raise QueryError(
            f"query {query.name} failed: {first_line}",
            query=query.name or "",
            batch_id=progress["batchId"] if progress else None,
            hint="fix the cause and run again: the checkpoint resumes where it stopped",
        ) from None
