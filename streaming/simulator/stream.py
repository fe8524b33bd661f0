"""Turns rendered events into Kafka-ready messages: topic mix, encoding and injected faults.

Kept free of Kafka so generation speed and fault injection can be measured and tested alone;
`producer.py` only moves these messages to the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np

from streaming.schemas import MessageSchema, encode_avro, encode_json, load_schemas
from streaming.simulator import SIMULATED
from streaming.simulator.events import (
    TIMESTAMP_FIELD,
    EventFactory,
    Record,
    hourly_demand,
    telemetry_json,
)
from streaming.simulator.malformed import corrupt, kinds_for

# Share of each topic when producing "all"; bookings follow the hour-of-day demand curve.
TOPIC_MIX: dict[str, float] = {
    "telemetry": 0.80,
    "bookings": 0.06,
    "user_events": 0.07,
    "external": 0.03,
    "feedback": 0.04,
}
KEY_FIELD = {
    "telemetry": "vehicle_id",
    "bookings": "vehicle_id",
    "user_events": "user_id",
    "external": "event_id",
    "feedback": "vehicle_id",
}
FORMATS = ("json", "avro")
RECENT_SIZE = 512
LATE_MIN_S = 3_600
LATE_MAX_S = 48 * 3_600


class Message(NamedTuple):
    """One Kafka record to send; `kind` is valid, duplicate, late or a malformed kind name."""

    entity: str
    key: bytes | None
    value: bytes
    kind: str


class MessageStream:
    """Endless, seeded source of messages for one topic or for all topics mixed."""

    def __init__(
        self,
        entity: str,
        fmt: str = "json",
        *,
        duplicates: float = 0.0,
        malformed: float = 0.0,
        late: float = 0.0,
        seed: int = 42,
        vehicles: int = 50_000,
        schemas: dict[str, MessageSchema] | None = None,
        lateness: dict[str, tuple[float, float]] | None = None,
        malformed_turns: dict[str, int] | None = None,
    ) -> None:
        """`lateness`: per entity, how far (seconds, low and high) a late event's time moves
        back; 1 to 48 hours where not given. `malformed_turns`: per entity, where the rotation
        through its malformed kinds starts (another stream's `malformed_turns`, to go on where
        it stopped)."""
        self.entities: tuple[str, ...] = SIMULATED if entity == "all" else (entity,)
        self.fmt = fmt
        self.thresholds = (duplicates, duplicates + malformed, duplicates + malformed + late)
        self.factory = EventFactory(seed=seed, vehicles=vehicles)
        self.rng = np.random.default_rng([seed, 1])
        self.schemas = schemas or load_schemas()
        self._recent: dict[str, list[Message]] = {e: [] for e in self.entities}
        self.malformed_turns: dict[str, int] = {
            e: (malformed_turns or {}).get(e, 0) for e in self.entities
        }
        self._encoders = {e: self._encoder(e) for e in self.entities}
        self.lateness = lateness or {}

    def _encoder(self, entity: str) -> Callable[[Record], bytes]:
        if self.fmt == "json":
            return telemetry_json if entity == "telemetry" else encode_json
        schema = self.schemas[entity]
        return lambda record: encode_avro(schema, record)

    def next_chunk(self, n: int, now: datetime | None = None) -> list[Message]:
        """`n` messages stamped `now` (wall clock, millisecond precision, by default)."""
        now = now or _now()
        if len(self.entities) == 1:
            return self._entity_chunk(self.entities[0], n, now)
        counts = self.rng.multinomial(n, self._mix(now.hour))
        per_entity = [
            iter(self._entity_chunk(entity, count, now)) if count else iter(())
            for entity, count in zip(self.entities, counts.tolist(), strict=True)
        ]
        # Interleave topics at random but keep each topic's own order: a duplicate must follow
        # the message it copies, as a producer retry does.
        labels = self.rng.permutation(np.repeat(np.arange(len(self.entities)), counts))
        return [next(per_entity[label]) for label in labels.tolist()]

    def _mix(self, hour: int) -> np.ndarray:
        weights = np.array([TOPIC_MIX[e] for e in self.entities])
        weights[self.entities.index("bookings")] *= hourly_demand(hour)
        return weights / weights.sum()

    def _entity_chunk(self, entity: str, n: int, now: datetime) -> list[Message]:
        records = self.factory.render(entity, n, now)
        draws = self.rng.random(n).tolist()
        dup, mal, late = self.thresholds
        encode = self._encoders[entity]
        key_field = KEY_FIELD[entity]
        recent = self._recent[entity]
        out: list[Message] = []
        for record, u in zip(records, draws, strict=True):
            key = record[key_field].encode()
            if u < dup and recent:
                out.append(_relabel(recent[int(self.rng.integers(len(recent)))]))
                continue
            if u < dup or u >= late:  # nothing to duplicate yet: send a valid one instead
                message = Message(entity, key, encode(record), "valid")
            elif u < mal:
                out.append(self._malformed(entity, key, record))
                continue
            else:
                message = Message(entity, key, encode(self._make_late(entity, record)), "late")
            out.append(message)
            self._remember(recent, message)
        return out

    def _make_late(self, entity: str, record: Record) -> Record:
        field = TIMESTAMP_FIELD[entity]
        low, high = self.lateness.get(entity, (LATE_MIN_S, LATE_MAX_S))
        delay_ms = int(self.rng.integers(int(low * 1000), int(high * 1000)))
        return {**record, field: record[field] - timedelta(milliseconds=delay_ms)}

    def _malformed(self, entity: str, key: bytes, record: Record) -> Message:
        """Kinds are taken round-robin so every kind shows up even in short runs."""
        kinds = kinds_for(entity)
        kind = kinds[self.malformed_turns[entity] % len(kinds)]
        self.malformed_turns[entity] += 1
        value = corrupt(kind, entity, record, self.schemas[entity], self.fmt, self.rng)
        return Message(entity, key, value, kind)

    def _remember(self, recent: list[Message], message: Message) -> None:
        if len(recent) < RECENT_SIZE:
            recent.append(message)
        else:
            recent[int(self.rng.integers(RECENT_SIZE))] = message


def _relabel(message: Message) -> Message:
    return message._replace(kind="duplicate")


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
