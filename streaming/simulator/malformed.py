"""Deliberately broken payloads, one stable kind name per way a real producer goes wrong.

The ingestion pipeline must quarantine every one of these without stopping, so each kind is
unambiguously broken: bytes that are not JSON, a wrong Avro frame, a type or a value that
violates the contract. Kinds that cannot be expressed in Avro (a string where a double belongs)
are written with a mutated writer schema under the real schema id, as a misconfigured producer
would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import fastavro
import numpy as np

from streaming.schemas import MAGIC_BYTE, MessageSchema, encode_avro, encode_json
from streaming.simulator.events import TIMESTAMP_FIELD, Record

UNKNOWN_SCHEMA_ID = 999
OVERSIZED_PADDING = 200_000
HUGE_STRING = 10 * 1024 * 1024  # a 10 MB string (it compresses to kilobytes on the wire)
NESTING = 10_000  # arrays nested this deep
_COMMON = (
    "truncated_json",
    "not_json_object",
    "wrong_type",
    "null_required",
    "missing_field",
    "bad_timestamp",
    "future_timestamp",
    "non_utf8",
    "wrong_magic_byte",
    "unknown_schema_id",
    "empty_value",
    "oversized_value",
    "bad_enum",
    # the text is not JSON, though a lenient parser might take it
    "nan_literal",
    "infinity_literal",
    "single_quotes",
    "trailing_garbage",
    "bom_prefix",
    "control_char",
    "duplicate_keys",
    "deeply_nested",
    "lone_surrogate",
    "huge_string",
)
_EXTRA: dict[str, tuple[str, ...]] = {
    "telemetry": ("out_of_range", "bad_vehicle_id", "invalid_coordinates", "number_overflow"),
    "bookings": (
        "number_overflow",
        "out_of_range",
        "bad_vehicle_id",
        "invalid_coordinates",
        "negative_duration",
        "negative_revenue",
    ),
    "user_events": (),
    "external": ("out_of_range", "invalid_coordinates", "number_overflow"),
    "feedback": ("out_of_range", "bad_vehicle_id"),
}
MALFORMED_KINDS: tuple[str, ...] = (
    *_COMMON,
    "out_of_range",
    "bad_vehicle_id",
    "invalid_coordinates",
    "negative_duration",
    "negative_revenue",
    "number_overflow",
)
PRIMARY_ID = {
    "telemetry": "vehicle_id",
    "bookings": "booking_id",
    "user_events": "event_id",
    "external": "event_id",
    "feedback": "event_id",
}
# (field, bad value) per entity for the value-level kinds.
_TARGETS: dict[str, dict[str, tuple[str, Any]]] = {
    "telemetry": {
        "wrong_type": ("battery_level", "high"),
        "out_of_range": ("battery_level", 150.0),
        "bad_enum": ("vehicle_type", "rocket"),
        "invalid_coordinates": ("latitude", 123.4),
        "missing_field": ("latitude", None),
        "number_overflow": ("battery_level", None),
    },
    "bookings": {
        "wrong_type": ("revenue", "lots"),
        "out_of_range": ("distance_km", 25_000.0),
        "bad_enum": ("status", "teleported"),
        "invalid_coordinates": ("pickup_latitude", 123.4),
        "negative_duration": ("trip_duration_minutes", -5.0),
        "negative_revenue": ("revenue", -12.5),
        "missing_field": ("vehicle_id", None),
        "number_overflow": ("revenue", None),
    },
    "user_events": {
        "wrong_type": ("session_id", 12345),
        "bad_enum": ("event_type", "teleport"),
        "missing_field": ("user_id", None),
    },
    "external": {
        "wrong_type": ("measurements", "sunny"),
        "out_of_range": ("zone_id", 999),
        "bad_enum": ("source", "rumour"),
        "invalid_coordinates": ("latitude", 123.4),
        "missing_field": ("source", None),
        "number_overflow": ("latitude", None),
    },
    "feedback": {
        "wrong_type": ("rating", "five"),
        "out_of_range": ("rating", 9),
        "bad_enum": ("content_type", "application/x-rocket"),
        "missing_field": ("booking_id", None),
    },
}
_NOT_OBJECTS = (b"[1,2]", b"42", b'"event"', b"null", b"true")


def kinds_for(entity: str) -> tuple[str, ...]:
    """The malformed kinds that make sense for a topic, in a stable order."""
    return (*_COMMON, *_EXTRA[entity])


def corrupt(
    kind: str,
    entity: str,
    record: Record,
    schema: MessageSchema,
    fmt: str,
    rng: np.random.Generator,
) -> bytes:
    """The broken payload of `kind`, derived from a valid `record` of `entity`."""
    if kind not in kinds_for(entity):
        raise ValueError(f"malformed kind {kind!r} does not apply to {entity}")
    if kind == "empty_value":
        return b""
    if kind == "not_json_object":
        return _NOT_OBJECTS[int(rng.integers(len(_NOT_OBJECTS)))]
    if kind == "truncated_json":
        body = encode_json(record)
        return body[: int(rng.integers(1, len(body) - 1))]
    if kind == "non_utf8":
        body = encode_json(record)
        cut = body.index(b'":"') + 3
        return body[:cut] + b"\xff\xfe\xc3\x28" + body[cut:]
    if kind in ("wrong_magic_byte", "unknown_schema_id"):
        framed = encode_avro(schema, record)
        if kind == "wrong_magic_byte":
            return bytes([MAGIC_BYTE + 1]) + framed[1:]
        return bytes([MAGIC_BYTE]) + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + framed[5:]
    if kind in _TEXT_KINDS:  # JSON text whatever the stream's format: a producer's bug
        return _TEXT_KINDS[kind](encode_json(record), PRIMARY_ID[entity])
    if kind == "number_overflow":  # a double past the largest one: 1e400
        field = _TARGETS[entity]["number_overflow"][0]
        return _with_field(encode_json({k: v for k, v in record.items() if k != field}),
                           f'"{field}":1e400')  # fmt: skip
    if kind == "oversized_value":
        if fmt == "avro":
            return encode_avro(schema, record) + b"\x00" * OVERSIZED_PADDING
        return encode_json({**record, "padding": "x" * OVERSIZED_PADDING})
    return _field_level(kind, entity, record, schema, fmt)


def _with_field(body: bytes, field: str | bytes) -> bytes:
    """A JSON object's text with one more member at its end."""
    member = field.encode() if isinstance(field, str) else field
    return body.rstrip()[:-1] + b"," + member + b"}"


def _inside_first_string(body: bytes, insert: bytes) -> bytes:
    cut = body.index(b'":"') + 3
    return body[:cut] + insert + body[cut:]


_NESTED = b'"nested":' + b"[" * NESTING + b"]" * NESTING
_TEXT_KINDS: dict[str, Callable[[bytes, str], bytes]] = {
    "nan_literal": lambda body, _: _with_field(body, '"reading":NaN'),
    "infinity_literal": lambda body, _: _with_field(body, '"reading":-Infinity'),
    "single_quotes": lambda body, _: body.replace(b'"', b"'"),
    "trailing_garbage": lambda body, _: body + b' {"and":"more"}',
    "bom_prefix": lambda body, _: b"\xef\xbb\xbf" + body,
    "control_char": lambda body, _: _inside_first_string(body, b"\x01\x07"),
    "duplicate_keys": lambda body, primary: _with_field(body, f'"{primary}":"someone-else"'),
    "deeply_nested": lambda body, _: _with_field(body, _NESTED),
    "lone_surrogate": lambda body, _: _inside_first_string(body, b"\\ud800"),
    "huge_string": lambda body, _: _with_field(body, b'"notes":"' + b"x" * HUGE_STRING + b'"'),
}


def _field_level(kind: str, entity: str, record: Record, schema: MessageSchema, fmt: str) -> bytes:
    """Kinds that keep the payload well-formed but break one field of the contract."""
    broken = dict(record)
    ts_field = TIMESTAMP_FIELD[entity]
    retyped: tuple[str, Any] | None = None  # field whose Avro type must change, and to what
    if kind == "null_required":
        field = PRIMARY_ID[entity]
        broken[field] = None
        retyped = (field, "null")
    elif kind == "missing_field":
        field = _TARGETS[entity]["missing_field"][0]
        del broken[field]
        retyped = (field, None)
    elif kind == "bad_timestamp":
        broken[ts_field] = "yesterday"
        retyped = (ts_field, "string")
    elif kind == "future_timestamp":
        broken[ts_field] = record[ts_field] + timedelta(days=2)
    elif kind == "bad_vehicle_id":
        broken["vehicle_id"] = "abc-1"
    else:
        field, value = _TARGETS[entity][kind]
        broken[field] = value
        if kind == "wrong_type":
            retyped = (field, "string" if isinstance(value, str) else "long")
    if fmt == "json":
        return encode_json(broken)
    if retyped is None:
        return encode_avro(schema, broken)
    writer = _mutated_schema(schema, *retyped)
    return encode_avro(writer, broken)


_MUTATED: dict[tuple[str, int, str, str | None], MessageSchema] = {}


def _mutated_schema(schema: MessageSchema, field: str, avro_type: str | None) -> MessageSchema:
    """A writer schema that differs from the contract in one field (None: field removed)."""
    key = (schema.entity, schema.schema_id, field, avro_type)
    if key not in _MUTATED:
        _MUTATED[key] = _build_mutated(schema, field, avro_type)
    return _MUTATED[key]


def _build_mutated(schema: MessageSchema, field: str, avro_type: str | None) -> MessageSchema:
    raw = copy.deepcopy(schema.raw)
    fields = [f for f in raw["fields"] if f["name"] != field or avro_type is not None]
    for f in fields:
        if f["name"] == field:
            f["type"] = avro_type
            f.pop("default", None)
    raw["fields"] = fields
    raw["name"] = raw["name"] + "Broken"
    parsed = fastavro.parse_schema(raw, named_schemas={})
    return MessageSchema(
        schema.entity, schema.schema_id, raw, parsed, tuple(f["name"] for f in fields)
    )
