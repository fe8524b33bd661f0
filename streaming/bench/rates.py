"""One rung of the rate ladder: a running pipeline fed at a fixed rate for a fixed time.

The payloads are rendered first. One second of them is sent at once as a warm-up and the
pipeline is given time to take it through its last layer, so first-batch costs stay out of
the figures. Then the paced sender runs for the step while a monitor samples the pipeline's
Kafka lag on the telemetry topic every second (the broker's end offsets minus the committed
offsets the pipeline's query exports on its metrics endpoint: a batch's offsets are committed
once every layer has written it). After the sender stops the pipeline gets time to drain (see
`_drain_allowance`), and freshness is read from the Delta history (commit timestamps) of the
telemetry tables of the layers it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streaming.bench import freshness, memory
from streaming.bench.corpus import ENTITY, Schedule, Sent, render_schedule, send_chunks
from streaming.bench.pipeline import READY_TIMEOUT_S, Pipeline, fetch
from streaming.bench.report import lag_word
from streaming.config import Config

log = logging.getLogger(__name__)
SAMPLE_EVERY_S = 1.0
MIN_DRAIN_S = 60.0
MAX_DRAIN_S = 300.0


def telemetry_gold_tables(layers: tuple[str, ...]) -> list[str]:
    """The metric labels (`gold.<table>`) of the Gold tables that telemetry feeds, if Gold is
    among `layers`: the ones the rate ladder can move."""
    from streaming.gold.aggregates import TABLES

    if "gold" not in layers:
        return []
    return [f"gold.{name}" for name, table in TABLES.items() if ENTITY in table.sources]


def run_rate(pipeline: Pipeline, rate: int, seconds: int, seed: int) -> dict[str, Any]:
    """Offer `rate` events/s for `seconds` to a ready pipeline; report lag and freshness."""
    config = pipeline.config
    schedule = render_schedule(rate, seconds, seed)
    log.info("rate %d/s: %d events rendered in %.1f s", rate, schedule.events, schedule.render_s)
    monitor = _LagMonitor(config, pipeline.metrics_url, pipeline.query).start()
    try:
        warm = send_chunks(config, schedule, 0, schedule.warmup, paced=False)
        warmup_s = _wait_drained(monitor, pipeline, schedule, warm, READY_TIMEOUT_S)
        assert pipeline.sampler is not None
        pipeline.sampler.mark()
        memory_monitor = memory.MemoryMonitor(pipeline.process.pid, seconds).start()
        sent = send_chunks(config, schedule, schedule.warmup, schedule.total, paced=True)
        usage = pipeline.sampler.mark()
        memory_samples = memory_monitor.stop()
        allowance = _drain_allowance(seconds, warmup_s)
        drain_s = _wait_drained(monitor, pipeline, schedule, sent, allowance)
    finally:
        monitor.stop()
    until = time.time()
    lag = freshness.lag_trend(monitor.samples, rate, sent.started, sent.ended)
    log.info(
        "rate %d/s: sent %d at %.0f/s, lag %s (growth %s), drained after %s s",
        rate, sent.acked, sent.rate, lag_word(lag["flat"]), lag.get("growth"),
        "-" if drain_s is None else f"{drain_s:.0f}",
    )  # fmt: skip
    return {
        "rate": rate,
        "seconds": seconds,
        "events": schedule.events,
        "acked": sent.acked,
        "failed": sent.failed,
        "achieved_rate": round(sent.rate, 1),
        "sender_max_slip_s": sent.max_slip_s,
        "render_s": schedule.render_s,
        "pipeline_ready_s": None if pipeline.ready_s is None else round(pipeline.ready_s, 1),
        "warmup_events": warm.acked,
        "warmup_s": None if warmup_s is None else round(warmup_s, 1),
        "drain_s": None if drain_s is None else round(drain_s, 1),
        "caught_up": drain_s is not None,
        "kafka_lag": lag,
        "lag_flat": lag["flat"],
        "pipeline": pipeline.kind,
        "freshness": _freshness(config, pipeline.layers, schedule, sent, until),
        # While sending: how much of the machine the pipeline took at this rate.
        "pipeline_cpu_cores": round(usage.cpu_s / usage.wall_s, 2) if usage.wall_s else None,
        "pipeline_cpu_s": usage.cpu_s,
        "pipeline_peak_rss_mb": usage.peak_rss_mb,
        "memory": memory.summary(memory_samples, sent.started),
        "lag_samples": [
            [round(s.at - sent.started, 1), s.end_offsets - s.committed]
            for s in monitor.samples
            if s.at >= warm.ended
        ],
    }


def _drain_allowance(seconds: int, warmup_s: float | None) -> float:
    """How long the pipeline gets after the sender stops: the step's length (at most 5 minutes:
    a long step's backlog is measured by its lag, not waited out), or three times what the
    one-second warm-up took through Gold (its per-batch latency), at least 60 s."""
    step = min(float(seconds), MAX_DRAIN_S)
    return max(MIN_DRAIN_S, step, 3 * (warmup_s or READY_TIMEOUT_S / 3))


def _wait_drained(
    monitor: _LagMonitor, pipeline: Pipeline, schedule: Schedule, sent: Sent, timeout_s: float
) -> float | None:
    """Seconds after `sent` ended until the pipeline has no lag and every telemetry-fed Gold
    table it runs holds the last event time sent; None if that takes longer than `timeout_s`."""
    last_event = schedule.event_time(sent.first + len(sent.chunk_times) - 1)
    wanted = telemetry_gold_tables(pipeline.layers)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipeline.check_alive()
        sample, gold = monitor.latest(after=sent.ended)
        if (
            sample is not None
            and sample.committed >= sample.end_offsets
            and all(gold.get(q, 0.0) >= last_event - 0.001 for q in wanted)
        ):
            return time.time() - sent.ended
        time.sleep(0.5)
    log.info("rate %d/s: not drained within %.0f s after sending", schedule.rate, timeout_s)
    return None


def _freshness(
    config: Config, layers: tuple[str, ...], schedule: Schedule, sent: Sent, until: float
) -> dict[str, Any]:
    """Per layer the pipeline runs (the others: no commits)."""
    from streaming.gold.aggregates import TABLES

    since = sent.started

    def kafka_commits(layer: str) -> list[freshness.Commit]:
        if layer not in layers:
            return []
        path = config.table_path(layer, ENTITY)
        return freshness.data_commits(path, "_kafka_timestamp", since, until)

    bronze, silver = kafka_commits("bronze"), kafka_commits("silver")

    def sent_at(event_time: float) -> float:
        return sent.time_of(schedule.chunk_of(event_time))

    gold: dict[str, list[float]] = {}
    for name in TABLES if "gold" in layers else ():
        path = config.table_path("gold", name)
        commits = freshness.data_commits(path, "last_event_time", since, until)
        if commits:
            gold[name] = freshness.freshness(commits, sent_at)
    pooled = [value for values in gold.values() for value in values]
    return {
        "bronze": freshness.summary(freshness.freshness(bronze)),
        "silver": freshness.summary(freshness.freshness(silver)),
        "gold": freshness.summary(pooled),
        "gold_tables": {name: freshness.summary(values) for name, values in gold.items()},
    }


class _LagMonitor:
    """Samples the pipeline's telemetry lag and Gold's newest event times every second."""

    def __init__(self, config: Config, metrics_url: str, query: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.metrics_url, self.query = metrics_url, query
        self.topic = config.topic(ENTITY).name
        self.consumer = Consumer(
            {**config.kafka.client_options(), "group.id": "lakehouse-bench-lag"}
        )
        metadata = self.consumer.list_topics(self.topic, timeout=10)
        self.partitions = [
            TopicPartition(self.topic, p) for p in sorted(metadata.topics[self.topic].partitions)
        ]
        self.samples: list[freshness.LagSample] = []
        self.gold: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-lag", daemon=True)

    def start(self) -> _LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.consumer.close()

    def latest(self, after: float) -> tuple[freshness.LagSample | None, dict[str, float]]:
        """The newest sample if it was taken after `after`, and Gold's newest event times."""
        with self._lock:
            last = self.samples[-1] if self.samples else None
            return (last if last is not None and last.at > after else None), dict(self.gold)

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(SAMPLE_EVERY_S):
                return

    def _sample(self) -> None:
        at = time.time()
        ends = sum(
            self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            for tp in self.partitions
        )
        text = fetch(self.metrics_url)
        if text is None:
            return
        committed, gold = parse_metrics(text, self.topic, self.query)
        with self._lock:
            self.gold = gold
            if committed is not None:  # None until the query's first batch in this application
                self.samples.append(freshness.LagSample(at, ends, committed))


def parse_metrics(text: str, topic: str, query: str) -> tuple[int | None, dict[str, float]]:
    """(the committed offsets of `query` on `topic`, summed over partitions, or None if not
    exported yet; {`gold.<table>`: newest event time committed})."""
    from prometheus_client.parser import text_string_to_metric_families

    committed: int | None = None
    gold: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            label = labels.get("query", "")
            if (
                sample.name == "lakehouse_kafka_committed_offset"
                and label == query
                and labels.get("topic") == topic
            ):
                committed = (committed or 0) + int(sample.value)
            elif sample.name == "lakehouse_newest_committed_kafka_timestamp_seconds" and (
                label.startswith("gold.")
            ):
                gold[label] = float(sample.value)
    return committed, gold
