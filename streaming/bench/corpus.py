"""The benchmark's input: simulator telemetry rendered once, then moved to Kafka.

The drain corpus is written as fast as the broker acknowledges, before anything is measured, so
the producer never limits a drain step. Rate-ladder payloads are rendered before their step
starts, in chunks of 1/20 s, each stamped with an event time on a schedule (anchor + chunk / 20 s);
the paced sender then only hands pre-rendered bytes to librdkafka and records when each chunk
went out, which maps any event time back to the moment its record reached Kafka.

At most `CYCLE_SECONDS` of a step are rendered, so a 30-minute step fits in memory: later chunks
send those bytes again with a new event id prefix per cycle and the chunk's own event time,
two byte replacements per message instead of a render.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from streaming.config import Config
from streaming.errors import BrokerError
from streaming.simulator.producer import CONTENT_TYPE, _producer_options
from streaming.simulator.stream import MessageStream

log = logging.getLogger(__name__)
ENTITY = "telemetry"
FORMAT = "json"
CHUNKS_PER_SECOND = 20
PRELOAD_CHUNK = 5_000
CYCLE_SECONDS = 60
# Every rendered telemetry payload opens with its event id, a UUID of 36 characters.
_ID_OPEN = b'{"event_id":"'
_ID_PREFIX = 8
Payload = tuple[bytes | None, bytes]


@dataclass(frozen=True)
class Preloaded:
    """The drain corpus as it reached the broker."""

    topic: str
    events: int
    payload_bytes: int
    render_s: float
    produce_s: float


@dataclass(frozen=True)
class Schedule:
    """A rate step in chunks; chunk j carries event time anchor + j / 20 s.

    The first `warmup` chunks (one second of the rate) are sent at once before the measured part,
    so the pipeline's first-batch costs (code generation, caches) fall outside the measurement.
    `rendered` holds the warm-up and at most `CYCLE_SECONDS` of chunks; `total` counts the step's
    chunks, warm-up included, and `chunk(j)` gives any of them.
    """

    rate: int
    rendered: list[list[Payload]]
    total: int
    anchor: datetime
    warmup: int
    render_s: float

    @property
    def events(self) -> int:
        return sum(len(self.rendered[self._source(j)[0]]) for j in range(self.warmup, self.total))

    def chunk(self, j: int) -> list[Payload]:
        """Chunk j's messages: rendered, or a rendered chunk renewed for cycle 1, 2, ..."""
        index, cycle = self._source(j)
        payloads = self.rendered[index]
        if cycle == 0:
            return payloads
        return renew(payloads, cycle, _stamp(self.anchor, index), _stamp(self.anchor, j))

    def _source(self, j: int) -> tuple[int, int]:
        """(the rendered chunk that chunk j sends, its cycle: 0 for the rendered chunks)."""
        if j < len(self.rendered):
            return j, 0
        cycle, offset = divmod(j - self.warmup, len(self.rendered) - self.warmup)
        return self.warmup + offset, cycle

    def chunk_of(self, event_time: float) -> int:
        """The chunk an event time (unix seconds) was rendered in, clamped to the schedule."""
        offset = (event_time - self.anchor.timestamp()) * CHUNKS_PER_SECOND
        return min(max(round(offset), 0), self.total - 1)

    def event_time(self, chunk: int) -> float:
        """The event time (unix seconds) of every message of a chunk."""
        return self.anchor.timestamp() + chunk / CHUNKS_PER_SECOND


def renew(payloads: list[Payload], cycle: int, old_time: bytes, new_time: bytes) -> list[Payload]:
    """Payloads sent again in `cycle` (>= 1): the first 8 hex digits of each event id become the
    cycle's number (ids stay UUID-shaped and unique per cycle) and the event time moves on."""
    prefix = _ID_OPEN + b"%08x" % cycle
    cut = len(_ID_OPEN) + _ID_PREFIX
    if payloads and not (payloads[0][1].startswith(_ID_OPEN) and old_time in payloads[0][1]):
        raise ValueError("a rendered payload does not open with its event id and time")
    return [(key, prefix + value[cut:].replace(old_time, new_time, 1)) for key, value in payloads]


def _stamp(anchor: datetime, chunk: int) -> bytes:
    """A chunk's event time as the simulator writes it into a telemetry payload."""
    moment = anchor + timedelta(seconds=chunk / CHUNKS_PER_SECOND)
    return b'"timestamp":"' + moment.isoformat(timespec="milliseconds").encode() + b'"'


@dataclass(frozen=True)
class Sent:
    """How chunks [first, first + len(chunk_times)) went out: send time of each, acks."""

    first: int
    chunk_times: list[float]
    acked: int
    failed: int
    payload_bytes: int
    started: float
    ended: float
    max_slip_s: float  # how far the sender fell behind its schedule at worst
    first_error: str | None = None

    @property
    def rate(self) -> float:
        elapsed = self.ended - self.started
        return self.acked / elapsed if elapsed > 0 else 0.0

    def time_of(self, chunk: int) -> float:
        """When a chunk was handed to the producer (unix seconds), clamped to those sent."""
        index = min(max(chunk - self.first, 0), len(self.chunk_times) - 1)
        return self.chunk_times[index]


def render(stream: MessageStream, n: int, now: datetime | None = None) -> list[Payload]:
    if n == 0:
        return []
    return [(message.key, message.value) for message in stream.next_chunk(n, now)]


def preload(config: Config, events: int, seed: int) -> Preloaded:
    """Render `events` telemetry messages and write them to the telemetry topic, then flush."""
    stream = MessageStream(ENTITY, FORMAT, seed=seed)
    topic = config.topic(ENTITY).name
    sender = _Sender(config)
    render_s = 0.0
    started = time.monotonic()
    for n in _chunk_sizes(events, PRELOAD_CHUNK):
        tick = time.monotonic()
        payloads = render(stream, n)
        render_s += time.monotonic() - tick
        sender.send(topic, payloads)
    sender.flush()
    sender.raise_on_failure(events)
    return Preloaded(
        topic=topic,
        events=events,
        payload_bytes=sender.payload_bytes,
        render_s=round(render_s, 2),
        produce_s=round(time.monotonic() - started - render_s, 2),
    )


def render_schedule(rate: int, seconds: int, seed: int) -> Schedule:
    """One second of warm-up, then `rate * seconds` messages, in chunks of 1/20 s with event
    times on the send schedule (at most `CYCLE_SECONDS` of them rendered, see `Schedule`)."""
    stream = MessageStream(ENTITY, FORMAT, seed=seed)
    anchor = _millis(datetime.now(UTC))
    started = time.monotonic()
    sizes = _paced_sizes(rate, 1) + _paced_sizes(rate, min(seconds, CYCLE_SECONDS))
    chunks = [
        render(stream, n, anchor + timedelta(seconds=j / CHUNKS_PER_SECOND))
        for j, n in enumerate(sizes)
    ]
    total = (1 + seconds) * CHUNKS_PER_SECOND
    render_s = round(time.monotonic() - started, 2)
    return Schedule(rate, chunks, total, anchor, CHUNKS_PER_SECOND, render_s)


def send_chunks(config: Config, schedule: Schedule, first: int, end: int, paced: bool) -> Sent:
    """Send chunks [first, end): paced, chunk j at start + (j - first) / 20 s (never earlier;
    a late chunk goes out at once), else all at once. Returns once every message is acked."""
    topic = config.topic(ENTITY).name
    sender = _Sender(config)
    times: list[float] = []
    slip = 0.0
    start = time.monotonic()
    started_wall = time.time()
    for j in range(first, end):
        if paced:
            due = start + (j - first) / CHUNKS_PER_SECOND
            sender.wait_until(due)
            slip = max(slip, time.monotonic() - due)
        times.append(time.time())
        sender.send(topic, schedule.chunk(j))
    ended = time.time()
    sender.flush()
    return Sent(
        first=first,
        chunk_times=times,
        acked=sender.acked,
        failed=sender.failed,
        payload_bytes=sender.payload_bytes,
        started=started_wall,
        ended=ended,
        max_slip_s=round(slip, 3),
        first_error=sender.first_error,
    )


class _Sender:
    """A producer with the simulator's client settings; waits on a full queue, never drops."""

    def __init__(self, config: Config) -> None:
        self.producer = Producer(_producer_options(config))
        self.headers: list[tuple[str, str | bytes | None]] = [
            ("content-type", CONTENT_TYPE[FORMAT])
        ]
        self.acked = 0
        self.failed = 0
        self.payload_bytes = 0
        self.first_error: str | None = None

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failed += 1
            self.first_error = self.first_error or str(error)
        else:
            self.acked += 1

    def send(self, topic: str, payloads: list[Payload]) -> None:
        produce, headers, delivered = self.producer.produce, self.headers, self._delivered
        for key, value in payloads:
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.payload_bytes += len(value)
        self.producer.poll(0)

    def wait_until(self, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            self.producer.poll(min(left, 0.05))

    def flush(self) -> None:
        while self.producer.flush(1.0) > 0:
            pass

    def raise_on_failure(self, expected: int) -> None:
        if self.failed or self.acked != expected:
            raise BrokerError(
                f"Kafka acknowledged {self.acked} of {expected} corpus messages "
                f"({self.failed} failed{': ' + self.first_error if self.first_error else ''})"
            )


def _chunk_sizes(total: int, size: int) -> Iterator[int]:
    done = 0
    while done < total:
        n = min(size, total - done)
        yield n
        done += n


def _paced_sizes(rate: int, seconds: int) -> list[int]:
    """Chunk sizes whose running total is exactly rate * t at every chunk boundary."""
    chunks = seconds * CHUNKS_PER_SECOND
    return [
        (j + 1) * rate // CHUNKS_PER_SECOND - j * rate // CHUNKS_PER_SECOND for j in range(chunks)
    ]


def _millis(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
