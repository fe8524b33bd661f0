"""Prometheus metrics for every streaming query, fed by a StreamingQueryListener.

Per query: rows in and out, batch duration, input and processing rate; per topic-partition:
committed offset and lag (latest offset - committed); and freshness: now - the newest Kafka
timestamp the query has committed (observed in the batch itself with `DataFrame.observe`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pyspark.sql.streaming import StreamingQueryListener

if TYPE_CHECKING:
    from streaming.gold.writer import GoldSummary
    from streaming.pipeline import BatchReport
    from streaming.silver.writer import SilverBooks

log = logging.getLogger(__name__)


class PipelineMetrics:
    """The metric families of one application, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, q = self.registry, ["query"]
        self.batches = Counter("lakehouse_batches", "Micro-batches completed", q, registry=r)
        self.rows_in = Counter("lakehouse_input_rows", "Rows read by a query", q, registry=r)
        self.rows_out = Counter("lakehouse_output_rows", "Rows written by a query", q, registry=r)
        self.batch_seconds = Histogram(
            "lakehouse_batch_duration_seconds",
            "Wall time of one micro-batch",
            q,
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        self.input_rate = Gauge(
            "lakehouse_input_rows_per_second", "Rate at which rows arrived", q, registry=r
        )
        self.processing_rate = Gauge(
            "lakehouse_processed_rows_per_second",
            "Rate at which rows were processed",
            q,
            registry=r,
        )
        tp = ["query", "topic", "partition"]
        self.committed_offset = Gauge(
            "lakehouse_kafka_committed_offset", "Next offset to read (committed)", tp, registry=r
        )
        self.lag = Gauge("lakehouse_kafka_lag_records", "Latest offset - committed", tp, registry=r)
        self.newest_timestamp = Gauge(
            "lakehouse_newest_committed_kafka_timestamp_seconds",
            "Newest Kafka timestamp committed by the query (unix seconds)",
            q,
            registry=r,
        )
        self.freshness = Gauge(
            "lakehouse_freshness_seconds",
            "now - newest Kafka timestamp committed by the query",
            q,
            registry=r,
        )
        e = ["entity", "outcome"]
        self.silver_rows = Counter(
            "lakehouse_silver_rows",
            "Bronze rows by Silver outcome (valid, duplicate, decode, schema, rule, late)",
            e,
            registry=r,
        )
        self.rule_failures = Counter(
            "lakehouse_quality_rule_failures",
            "Rows failing an expectation (quarantined or warned)",
            ["entity", "rule"],
            registry=r,
        )
        g = ["table"]
        self.gold_keys = Counter(
            "lakehouse_gold_keys", "Gold keys written, by action (upserted, deleted, extended)",
            ["table", "action"], registry=r,
        )  # fmt: skip
        self.gold_merge_seconds = Histogram(
            "lakehouse_gold_batch_seconds",
            "Wall time to rebuild and MERGE one Gold micro-batch",
            g,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120),
            registry=r,
        )
        self._newest: dict[str, float] = {}
        self._lock = threading.Lock()

    def serve(self, port: int) -> None:
        """Serve /metrics on the port (0 = do not serve)."""
        if port:
            start_http_server(port, registry=self.registry)
            log.info("metrics on http://0.0.0.0:%d/metrics", port)

    def record(self, progress: Any) -> None:
        """Update every family from one StreamingQueryProgress."""
        name = progress.name or str(progress.id)
        self.batches.labels(name).inc()
        self.rows_in.labels(name).inc(max(progress.numInputRows, 0))
        sink_rows = progress.sink.numOutputRows if progress.sink is not None else -1
        self.rows_out.labels(name).inc(sink_rows if sink_rows >= 0 else progress.numInputRows)
        self.batch_seconds.labels(name).observe(progress.batchDuration / 1000.0)
        self.input_rate.labels(name).set(_finite(progress.inputRowsPerSecond))
        self.processing_rate.labels(name).set(_finite(progress.processedRowsPerSecond))
        for source in progress.sources:
            for (topic, partition), (committed, lag) in kafka_positions(source).items():
                self.committed_offset.labels(name, topic, partition).set(committed)
                self.lag.labels(name, topic, partition).set(lag)
        observed = (progress.observedMetrics or {}).get(name)
        newest = observed["max_kafka_timestamp"] if observed is not None else None
        if newest is not None:
            self._mark_newest(name, newest.timestamp())

    def record_batch(self, report: BatchReport) -> None:
        """Called by the pipeline after each batch with what every layer did."""
        for entity, newest in report.newest_kafka.items():
            if entity in report.bronze_written and newest is not None:
                self._mark_newest(f"bronze.{entity}", newest.timestamp())
        for entity, counts in report.silver.items():
            self.record_silver(entity, counts)
            if counts.valid and report.newest_kafka.get(entity) is not None:
                self._mark_newest(f"silver.{entity}", report.newest_kafka[entity].timestamp())
        for table, summary in report.gold.items():
            self.record_gold(table, summary)

    def record_silver(self, entity: str, counts: SilverBooks) -> None:
        """One entity's books for one batch."""
        self.silver_rows.labels(entity, "valid").inc(counts.valid)
        self.silver_rows.labels(entity, "duplicate").inc(counts.duplicate)
        for stage, count in counts.stages.items():
            self.silver_rows.labels(entity, stage).inc(count)
        for rule, count in counts.rules.items():
            self.rule_failures.labels(entity, rule).inc(count)
        log.debug(
            "silver.%s: %d rows -> %d valid, %d duplicate, quarantined %s",
            entity,
            counts.bronze,
            counts.valid,
            counts.duplicate,
            counts.stages or "none",
        )

    def record_gold(self, table: str, summary: GoldSummary) -> None:
        """One Gold table's MERGE; its freshness is by newest event time."""
        self.gold_keys.labels(table, "upserted").inc(summary.upserted)
        self.gold_keys.labels(table, "deleted").inc(summary.deleted)
        self.gold_keys.labels(table, "extended").inc(summary.extended)
        self.gold_merge_seconds.labels(table).observe(summary.seconds)
        if summary.newest is not None:
            self._mark_newest(f"gold.{table}", summary.newest.timestamp())
        log.debug(
            "gold.%s: %d rows upserted (%d of them extended), %d deleted in %.1f s",
            table,
            summary.upserted,
            summary.extended,
            summary.deleted,
            summary.seconds,
        )

    def _mark_newest(self, name: str, newest: float) -> None:
        with self._lock:
            if newest > self._newest.get(name, 0.0):
                self._newest[name] = newest
                self.newest_timestamp.labels(name).set(newest)
                self.freshness.labels(name).set_function(self._freshness_of(name))

    def _freshness_of(self, name: str) -> Any:
        return lambda: time.time() - self._newest.get(name, math.nan)


def kafka_positions(source: Any) -> dict[tuple[str, str], tuple[int, int]]:
    """{(topic, partition): (committed offset, lag)} from a Kafka SourceProgress."""
    committed = _offsets(source.endOffset)
    latest = _offsets(source.latestOffset)
    return {
        key: (offset, max(latest.get(key, offset) - offset, 0)) for key, offset in committed.items()
    }


def _offsets(raw: str | None) -> dict[tuple[str, str], int]:
    try:
        parsed = json.loads(raw) if raw else {}
    except json.JSONDecodeError:  # not a Kafka source (e.g. a Delta source): no offsets
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        (topic, str(partition)): int(offset)
        for topic, partitions in parsed.items()
        if isinstance(partitions, dict)
        for partition, offset in partitions.items()
    }


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else 0.0


class ProgressListener(StreamingQueryListener):
    """Feeds PipelineMetrics and writes one progress line per non-empty batch."""

    def __init__(self, metrics: PipelineMetrics) -> None:
        self.metrics = metrics

    def onQueryStarted(self, event: Any) -> None:
        log.info("query %s started (id %s)", event.name, event.id)

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        self.metrics.record(progress)
        if progress.numInputRows > 0:
            lag = sum(lag for s in progress.sources for _, lag in kafka_positions(s).values())
            log.debug(
                "%s batch %d: %d rows in %.1f s (%.0f rows/s), lag %d",
                progress.name,
                progress.batchId,
                progress.numInputRows,
                progress.batchDuration / 1000.0,
                _finite(progress.processedRowsPerSecond),
                lag,
            )

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        if event.exception:
            log.error("query %s failed: %s", event.id, event.exception.splitlines()[0])
