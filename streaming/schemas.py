"""The message contracts (`schemas/*.avsc`) and the two wire formats that carry them.

Every producer and consumer loads the contracts through `load_schemas` so there is exactly one
definition of each topic's payload. Avro payloads use the Confluent wire format (magic byte 0,
4-byte big-endian schema id, schemaless Avro body) so they stay readable by standard tooling even
though the ids come from the `schema_id` attribute of each file rather than from a registry.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro

from streaming.errors import ConfigError
from streaming.settings import BY_ENV

SCHEMA_DIR: Path = BY_ENV["LAKEHOUSE_SCHEMAS"].default
MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


@dataclass(frozen=True)
class MessageSchema:
    """One topic's contract: the raw `.avsc` document and its fastavro-parsed form."""

    entity: str
    schema_id: int
    raw: dict[str, Any]
    parsed: Any
    field_names: tuple[str, ...]

    def timestamp_fields(self) -> tuple[str, ...]:
        """Fields carrying `timestamp-millis` (rendered as ISO-8601 strings in JSON)."""
        return tuple(
            f["name"]
            for f in self.raw["fields"]
            if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"
        )


def load_schemas(folder: Path | None = None) -> dict[str, MessageSchema]:
    """Read every `<entity>.avsc` in `folder` (default: the repository's `schemas/`)."""
    folder = folder or SCHEMA_DIR
    files = sorted(folder.glob("*.avsc"))
    if not files:
        raise ConfigError(f"no Avro schemas (*.avsc) found in {folder}")
    schemas = {path.stem: _load_one(path) for path in files}
    ids = [s.schema_id for s in schemas.values()]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"schema ids in {folder} are not unique: {sorted(ids)}")
    return schemas


def _load_one(path: Path) -> MessageSchema:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        parsed = fastavro.parse_schema(dict(raw))
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ConfigError(f"schema {path} cannot be loaded: {exc}") from None
    schema_id = raw.get("schema_id")
    if not isinstance(schema_id, int) or schema_id < 0:
        raise ConfigError(f"schema {path} needs a non-negative integer 'schema_id' attribute")
    names = tuple(f["name"] for f in raw["fields"])
    # `telemetry.v2.avsc` is a later version of the `telemetry` contract.
    return MessageSchema(path.stem.split(".")[0], schema_id, raw, parsed, names)


def version_of(stem: str) -> int:
    """`telemetry` -> 1, `telemetry.v2` -> 2."""
    _, _, suffix = stem.partition(".v")
    return int(suffix) if suffix.isdigit() else 1


def schemas_by_id(schemas: Mapping[str, MessageSchema]) -> dict[int, MessageSchema]:
    """Index contracts by their wire id, the lookup `decode_avro` needs."""
    return {s.schema_id: s for s in schemas.values()}


def encode_avro(schema: MessageSchema, record: Mapping[str, Any]) -> bytes:
    """Confluent framing + schemaless Avro body. Datetimes become timestamp-millis."""
    buffer = io.BytesIO()
    buffer.write(_HEADER.pack(MAGIC_BYTE, schema.schema_id))
    fastavro.schemaless_writer(buffer, schema.parsed, record)
    return buffer.getvalue()


def decode_avro(by_id: Mapping[int, MessageSchema], payload: bytes) -> dict[str, Any]:
    """Inverse of `encode_avro`; a payload that is not exactly one framed record is refused."""
    if len(payload) < _HEADER.size:
        raise ValueError(f"Avro payload too short ({len(payload)} bytes) for the 5-byte header")
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != MAGIC_BYTE:
        raise ValueError(f"wrong magic byte {magic} (expected {MAGIC_BYTE})")
    schema = by_id.get(schema_id)
    if schema is None:
        raise ValueError(f"unknown schema id {schema_id} (known: {sorted(by_id)})")
    buffer = io.BytesIO(payload)
    buffer.seek(_HEADER.size)
    try:
        record = fastavro.schemaless_reader(buffer, schema.parsed, None)
    except (
        EOFError,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        OverflowError,
        struct.error,
    ) as exc:
        raise ValueError(f"Avro body does not match schema {schema.entity}: {exc}") from None
    if buffer.tell() != len(payload):
        raise ValueError(f"{len(payload) - buffer.tell()} trailing bytes after the Avro record")
    if not isinstance(record, dict):
        raise ValueError("Avro body is not a record")
    return record


def format_timestamp(value: datetime) -> str:
    """ISO-8601 with milliseconds and an explicit offset, e.g. 2026-11-28T08:15:02.123+00:00."""
    return value.isoformat(timespec="milliseconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_json(record: Mapping[str, Any]) -> bytes:
    """Compact JSON; timestamps (aware datetimes) as ISO-8601 strings carrying their offset."""
    return json.dumps(record, separators=(",", ":"), default=_json_default).encode("utf-8")


def spark_fields(schema: MessageSchema) -> dict[str, tuple[Any, bool]]:
    """{field: (Spark data type, nullable)} derived from the Avro contract.

    Silver's typed columns come from here, so the `.avsc` stays the one source of truth.
    """
    return {f["name"]: _spark_type(f["type"]) for f in schema.raw["fields"]}


def _spark_type(avro: Any) -> tuple[Any, bool]:
    from pyspark.sql import types as T

    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if len(branches) != 1:
            raise ConfigError(f'union {avro} is not supported: use ["null", <type>]')
        return _spark_type(branches[0])[0], True
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-millis":
            return T.TimestampType(), False
        if avro.get("type") == "map":
            return T.MapType(T.StringType(), _spark_type(avro["values"])[0]), False
        return _spark_type(avro["type"])
    primitives = {
        "string": T.StringType(),
        "double": T.DoubleType(),
        "float": T.FloatType(),
        "int": T.IntegerType(),
        "long": T.LongType(),
        "boolean": T.BooleanType(),
        "bytes": T.BinaryType(),
    }
    if avro not in primitives:
        raise ConfigError(f"Avro type {avro!r} is not supported in a contract")
    return primitives[avro], False
