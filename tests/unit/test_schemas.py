"""The Avro contracts load, and every valid simulator event honours them in both wire formats."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from streaming.errors import ConfigError
from streaming.schemas import (
    MessageSchema,
    decode_avro,
    encode_avro,
    encode_json,
    load_schemas,
    schemas_by_id,
)
from streaming.simulator import SIMULATED
from streaming.simulator.events import EventFactory, telemetry_json

EXPECTED_IDS = {"telemetry": 1, "bookings": 2, "user_events": 3, "external": 4, "feedback": 5}
ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
NOW = datetime(2026, 11, 28, 8, 15, 2, 123_000, tzinfo=UTC)


@pytest.fixture(scope="module")
def schemas() -> dict[str, MessageSchema]:
    return load_schemas()


@pytest.fixture(scope="module")
def events() -> dict[str, list[dict]]:
    factory = EventFactory(seed=7, vehicles=2_000)
    factory.bookings(50, NOW)  # so feedback refers to real bookings
    return {entity: factory.render(entity, 200, NOW) for entity in SIMULATED}


def test_every_topic_has_a_contract_with_its_id(schemas: dict[str, MessageSchema]) -> None:
    assert {e: s.schema_id for e, s in schemas.items()} == EXPECTED_IDS
    for schema in schemas.values():
        assert all(f.get("doc") for f in schema.raw["fields"]), schema.entity


def test_timestamps_are_timestamp_millis(schemas: dict[str, MessageSchema]) -> None:
    for schema in schemas.values():
        assert len(schema.timestamp_fields()) == 1, schema.entity


@pytest.mark.parametrize("entity", SIMULATED)
def test_valid_events_round_trip_through_avro(
    entity: str, schemas: dict[str, MessageSchema], events: dict[str, list[dict]]
) -> None:
    by_id = schemas_by_id(schemas)
    for record in events[entity]:
        assert list(record) == list(schemas[entity].field_names)
        assert validate(record, schemas[entity].parsed, raise_errors=True)
        payload = encode_avro(schemas[entity], record)
        assert payload[0] == 0
        assert int.from_bytes(payload[1:5], "big") == EXPECTED_IDS[entity]
        assert decode_avro(by_id, payload) == record


@pytest.mark.parametrize("entity", SIMULATED)
def test_json_timestamps_carry_an_offset(
    entity: str, schemas: dict[str, MessageSchema], events: dict[str, list[dict]]
) -> None:
    (ts_field,) = schemas[entity].timestamp_fields()
    for record in events[entity][:20]:
        decoded = json.loads(encode_json(record))
        assert ISO_WITH_OFFSET.match(decoded[ts_field]), decoded[ts_field]
        assert datetime.fromisoformat(decoded[ts_field]) == record[ts_field]


def test_fast_telemetry_json_matches_generic_encoder(events: dict[str, list[dict]]) -> None:
    for record in events["telemetry"]:
        assert telemetry_json(record) == encode_json(record)
    sample = json.loads(telemetry_json(events["telemetry"][0]))
    assert sample["timestamp"] == "2026-11-28T08:15:02.123+00:00"


def test_wrong_magic_byte_is_refused(schemas: dict[str, MessageSchema], events: dict) -> None:
    payload = encode_avro(schemas["telemetry"], events["telemetry"][0])
    with pytest.raises(ValueError, match="magic byte"):
        decode_avro(schemas_by_id(schemas), b"\x01" + payload[1:])


def test_unknown_schema_id_is_refused(schemas: dict[str, MessageSchema], events: dict) -> None:
    payload = encode_avro(schemas["telemetry"], events["telemetry"][0])
    with pytest.raises(ValueError, match="unknown schema id 999"):
        decode_avro(schemas_by_id(schemas), b"\x00" + (999).to_bytes(4, "big") + payload[5:])


def test_short_and_trailing_payloads_are_refused(
    schemas: dict[str, MessageSchema], events: dict
) -> None:
    by_id = schemas_by_id(schemas)
    payload = encode_avro(schemas["telemetry"], events["telemetry"][0])
    for broken in (b"", b"\x00\x00", payload + b"\x00", payload[:-3]):
        with pytest.raises(ValueError):
            decode_avro(by_id, broken)


def test_missing_or_bad_schema_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Avro schemas"):
        load_schemas(tmp_path)
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "X", "fields": []}')
    with pytest.raises(ConfigError, match="schema_id"):
        load_schemas(tmp_path)


def test_parsed_schema_is_usable_by_fastavro(schemas: dict[str, MessageSchema]) -> None:
    for schema in schemas.values():
        parsed: Any = fastavro.parse_schema(schema.raw)
        assert parsed["name"].startswith("lakehouse.mobility.")
