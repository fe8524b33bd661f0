"""Publishes simulator messages to Kafka at a steady rate and accounts for every delivery.

Messages are generated in chunks and paced against a monotonic schedule, so the long-run rate
does not drift however long a chunk takes. Every message is either acknowledged or counted as
failed; a full local queue makes the producer wait, never drop. The optional ledger records each
acknowledged message's (topic, partition, offset, kind) so a verifier can reconcile the lakehouse
against exactly what reached the broker.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Producer

from streaming.config import Config
from streaming.errors import ConfigError
from streaming.kafka.admin import require_topics
from streaming.simulator import SIMULATED
from streaming.simulator.stream import FORMATS, Message, MessageStream

PROGRESS_EVERY_S = 2.0
MAX_CHUNK = 5_000
CHUNKS_PER_SECOND = 20
CONTENT_TYPE = {"json": b"application/json", "avro": b"avro/binary"}
LEDGER_HEADER = "topic,partition,offset,kind\n"


@dataclass(frozen=True)
class ProduceOptions:
    """What to send. `count` 0 means until interrupted; `rate` may be `math.inf` (no cap)."""

    rate: float
    count: int
    format: str = "json"  # json | avro
    duplicates: float = 0.0
    malformed: float = 0.0
    late: float = 0.0
    seed: int = 42
    ledger: Path | None = None
    vehicles: int = 50_000
    lateness: dict[str, tuple[float, float]] | None = None  # per entity, seconds (low, high)
    malformed_turns: dict[str, int] | None = None  # per entity, where the kinds' rotation starts


@dataclass(frozen=True)
class ProduceReport:
    """Outcome of a run; `per_kind` counts acknowledged messages by kind."""

    sent: int
    acked: int
    failed: int
    per_kind: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    rate: float = 0.0  # acknowledged messages per second
    first_error: str | None = None
    malformed_turns: dict[str, int] = field(default_factory=dict)  # where the rotation stopped


def validate_options(entity: str, options: ProduceOptions) -> None:
    """Refuse impossible settings before anything touches the broker."""
    if entity != "all" and entity not in SIMULATED:
        raise ConfigError(f"unknown topic '{entity}'", hint="choose all or " + ", ".join(SIMULATED))
    if not options.rate > 0:
        raise ConfigError(f"--rate must be > 0 messages per second, got {options.rate}")
    if options.count < 0:
        raise ConfigError(f"--count must be >= 0 (0 = until Ctrl-C), got {options.count}")
    if options.format not in FORMATS:
        raise ConfigError(f"--format must be json or avro, got {options.format!r}")
    if options.vehicles < 1:
        raise ConfigError(f"--vehicles must be >= 1, got {options.vehicles}")
    shares = {
        "duplicates": options.duplicates,
        "malformed": options.malformed,
        "late": options.late,
    }
    for name, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name} must be a fraction between 0 and 1, got {value}")
    if sum(shares.values()) > 1.0 + 1e-9:
        raise ConfigError("--duplicates + --malformed + --late must not exceed 1")


def run_producer(
    config: Config,
    entity: str,
    options: ProduceOptions,
    progress: TextIO = sys.stderr,
    enough: Callable[[int], bool] | None = None,
) -> ProduceReport:
    """Send `options.count` messages (all topics mixed for entity "all") and report; with
    `enough`, stop sooner once it says so of the count sent."""
    validate_options(entity, options)
    entities = list(SIMULATED) if entity == "all" else [entity]
    require_topics(config, entities)
    topics = {e: config.topic(e).name for e in entities}
    producer = Producer(_producer_options(config))
    stream = MessageStream(
        entity,
        options.format,
        duplicates=options.duplicates,
        malformed=options.malformed,
        late=options.late,
        seed=options.seed,
        vehicles=options.vehicles,
        lateness=options.lateness,
        malformed_turns=options.malformed_turns,
    )
    tracker = _Tracker(options.ledger)
    sender = _Sender(producer, topics, CONTENT_TYPE[options.format], tracker)
    try:
        _pump(stream, sender, options, progress, entity, enough)
    except KeyboardInterrupt:
        progress.write("interrupted: flushing what was already sent\n")
    finally:
        _drain(producer)
        tracker.close()
    report = replace(tracker.report(), malformed_turns=stream.malformed_turns)
    progress.write(_summary(entity, report) + "\n")
    return report


def _producer_options(config: Config) -> dict[str, Any]:
    return {
        **config.kafka.client_options(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.max.bytes": 16_000_000,  # a 10 MB malformed string; it compresses to KBs
    }


class _Tracker:
    """Delivery accounting shared by the callbacks; one bound callback per kind, made once."""

    def __init__(self, ledger: Path | None) -> None:
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.per_kind: Counter[str] = Counter()
        self.first_error: str | None = None
        self.started = time.monotonic()
        self._ledger_path = ledger
        self._rows: list[str] = []
        self.callbacks: dict[str, Any] = {}

    def callback(self, kind: str) -> Any:
        if kind not in self.callbacks:

            def delivered(err: Any, msg: Any) -> None:
                if err is not None:
                    self.failed += 1
                    self.first_error = self.first_error or str(err)
                    return
                self.acked += 1
                self.per_kind[kind] += 1
                if self._ledger_path is not None:
                    self._rows.append(f"{msg.topic()},{msg.partition()},{msg.offset()},{kind}\n")

            self.callbacks[kind] = delivered
        return self.callbacks[kind]

    def close(self) -> None:
        if self._ledger_path is None:
            return
        self._ledger_path.parent.mkdir(parents=True, exist_ok=True)
        with self._ledger_path.open("w", encoding="utf-8") as handle:
            handle.write(LEDGER_HEADER)
            handle.writelines(self._rows)

    def report(self) -> ProduceReport:
        elapsed = time.monotonic() - self.started
        return ProduceReport(
            sent=self.sent,
            acked=self.acked,
            failed=self.failed,
            per_kind=dict(sorted(self.per_kind.items())),
            elapsed_s=round(elapsed, 3),
            rate=round(self.acked / elapsed, 1) if elapsed > 0 else 0.0,
            first_error=self.first_error,
        )


class _Sender:
    """`produce` with back-pressure: on a full queue serve callbacks and retry, never drop."""

    def __init__(
        self, producer: Producer, topics: dict[str, str], content_type: bytes, tracker: _Tracker
    ) -> None:
        self.producer = producer
        self.topics = topics
        self.headers: list[tuple[str, str | bytes | None]] = [("content-type", content_type)]
        self.tracker = tracker

    def send(self, messages: list[Message]) -> None:
        produce, topics, headers = self.producer.produce, self.topics, self.headers
        callbacks = self.tracker.callbacks
        for entity, key, value, kind in messages:
            callback = callbacks.get(kind) or self.tracker.callback(kind)
            while True:
                try:
                    produce(topics[entity], value, key, headers=headers, on_delivery=callback)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.tracker.sent += 1
        self.producer.poll(0)


def _pump(
    stream: MessageStream,
    sender: _Sender,
    options: ProduceOptions,
    progress: TextIO,
    entity: str,
    enough: Callable[[int], bool] | None = None,
) -> None:
    """Generate and send chunk after chunk, sleeping to the schedule start + sent / rate."""
    chunk = _chunk_size(options.rate)
    start = time.monotonic()
    next_report = start + PROGRESS_EVERY_S
    sent = 0
    while (options.count == 0 or sent < options.count) and not (enough and enough(sent)):
        n = chunk if options.count == 0 else min(chunk, options.count - sent)
        sender.send(stream.next_chunk(n))
        sent += n
        if math.isfinite(options.rate):
            _wait_until(sender.producer, start + sent / options.rate)
        now = time.monotonic()
        if now >= next_report:
            progress.write(
                _progress_line(entity, sender.tracker, options.count, now - start) + "\n"
            )
            progress.flush()
            next_report = now + PROGRESS_EVERY_S


def _chunk_size(rate: float) -> int:
    if not math.isfinite(rate):
        return MAX_CHUNK
    return max(1, min(MAX_CHUNK, int(rate / CHUNKS_PER_SECOND)))


def _wait_until(producer: Producer, deadline: float) -> None:
    """Sleep until `deadline` while still serving delivery callbacks."""
    while (left := deadline - time.monotonic()) > 0:
        producer.poll(min(left, 0.1))


def _drain(producer: Producer) -> None:
    """Flush until the local queue is empty so every message ends acked or failed."""
    while producer.flush(1.0) > 0:
        pass


def _progress_line(entity: str, tracker: _Tracker, count: int, elapsed: float) -> str:
    target = f"/{count}" if count else ""
    rate = tracker.acked / elapsed if elapsed > 0 else 0.0
    return (
        f"{entity}: {tracker.sent}{target} sent, {tracker.acked} acked, "
        f"{_spaced(rate)} msg/s" + (f", {tracker.failed} failed" if tracker.failed else "")
    )


def _summary(entity: str, report: ProduceReport) -> str:
    kinds = ", ".join(f"{k}={v}" for k, v in report.per_kind.items())
    error = f"; first failure: {report.first_error}" if report.first_error else ""
    return (
        f"{entity}: done, {report.sent} sent, {report.acked} acked, {report.failed} failed "
        f"in {report.elapsed_s:.1f} s ({_spaced(report.rate)} msg/s) [{kinds}]{error}"
    )


def _spaced(value: float) -> str:
    return f"{value:,.0f}".replace(",", " ")
