"""The fleet simulator: real geography, plausible vehicle behaviour, honest fault injection."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from streaming.config import load_config
from streaming.errors import BrokerError, ConfigError
from streaming.kafka.admin import require_topics
from streaming.schemas import MessageSchema, decode_avro, load_schemas, schemas_by_id
from streaming.simulator.events import EventFactory, Record
from streaming.simulator.fleet import AVAILABLE, CHARGING, IN_USE, Fleet
from streaming.simulator.malformed import MALFORMED_KINDS, corrupt, kinds_for
from streaming.simulator.producer import ProduceOptions, validate_options
from streaming.simulator.stream import MessageStream
from streaming.simulator.zones import ZoneIndex, load_zones

VEHICLE_ID = re.compile(r"^[A-Z]{2}\d{6}$")
NOW = datetime(2026, 11, 28, 8, 15, 2, 123_000, tzinfo=UTC)


@pytest.fixture(scope="module")
def zones() -> ZoneIndex:
    return load_zones()


@pytest.fixture(scope="module")
def schemas() -> dict[str, MessageSchema]:
    return load_schemas()


@pytest.fixture(scope="module")
def factory() -> EventFactory:
    return EventFactory(seed=3, vehicles=5_000)


@pytest.fixture(scope="module")
def telemetry(factory: EventFactory) -> Record:
    return factory.telemetry(1, NOW)[0]


def test_zones_are_real_nyc(zones: ZoneIndex) -> None:
    assert len(zones.location_ids) == 263
    assert zones.weights.sum() == pytest.approx(1.0)
    lat, lon = zones.pool_lat, zones.pool_lon
    assert 40.4 < lat.min() < lat.max() < 41.0
    assert -74.3 < lon.min() < lon.max() < -73.6


def test_vehicle_ids_match_the_contract(factory: EventFactory) -> None:
    assert all(VEHICLE_ID.match(v) for v in factory.fleet.ids)
    assert len(set(factory.fleet.ids)) == len(factory.fleet.ids)
    prefixes = {v[:2] for v in factory.fleet.ids}
    assert prefixes == {"SC", "EB", "CA", "VA"}


def test_available_vehicles_stand_inside_nyc_zones(zones: ZoneIndex) -> None:
    fleet = Fleet(3_000, zones, np.random.default_rng(1))
    everyone = np.arange(len(fleet))
    for _ in range(30):
        fleet.step(everyone, 60.0)
    parked = np.flatnonzero(fleet.status == AVAILABLE)
    assert len(parked) > 300
    inside = zones.locate(fleet.lat[parked], fleet.lon[parked]) > 0
    assert inside.mean() > 0.95


def test_battery_drains_in_use_and_recharges_when_charging(zones: ZoneIndex) -> None:
    fleet = Fleet(2_000, zones, np.random.default_rng(2))
    riding = np.flatnonzero(fleet.status == IN_USE)
    before = fleet.battery[riding].copy()
    fleet.step(riding, 60.0)
    assert (fleet.battery[riding] <= before).all() and (fleet.battery[riding] < before).mean() > 0.9
    fleet.status[:100], fleet.battery[:100] = CHARGING, 20.0
    fleet.step(np.arange(100), 600.0)
    assert (fleet.battery[:100] > 20.0).all()


def test_empty_batteries_go_charging_and_come_back(zones: ZoneIndex) -> None:
    fleet = Fleet(500, zones, np.random.default_rng(4))
    fleet.status[:], fleet.battery[:] = AVAILABLE, 5.0
    idx = np.arange(500)
    fleet.step(idx, 10.0)
    assert (fleet.status == CHARGING).all()
    fleet.step(idx, 4 * 3_600.0)
    assert (fleet.battery == 100.0).all() and (fleet.status == AVAILABLE).all()


def test_pickups_follow_real_demand(zones: ZoneIndex) -> None:
    factory = EventFactory(seed=5, vehicles=1_000)
    bookings = factory.bookings(20_000, NOW)
    lat = np.array([b["pickup_latitude"] for b in bookings])
    lon = np.array([b["pickup_longitude"] for b in bookings])
    found = zones.locate(lat, lon)
    counts = Counter(found.tolist())
    top = int(zones.location_ids[np.argmax(zones.weights)])
    assert counts[top] / len(bookings) == pytest.approx(zones.weights.max(), rel=0.2)
    observed = np.array([counts[int(z)] for z in zones.location_ids], dtype=float)
    assert np.corrcoef(observed, zones.weights)[0, 1] > 0.95


def test_bookings_are_priced_and_measured(factory: EventFactory) -> None:
    for booking in factory.bookings(500, NOW):
        assert booking["currency"] == "USD"
        assert booking["distance_km"] >= 0 and booking["trip_duration_minutes"] >= 0
        if booking["status"] == "completed":
            assert booking["revenue"] > 0
        assert "@" in booking["email"]


def test_sessions_follow_the_funnel(factory: EventFactory) -> None:
    funnel = ["app_open", "search", "view_vehicle", "start_booking", "payment", "end_trip"]
    types = Counter(e["event_type"] for e in factory.user_events(5_000, NOW))
    shares = [types[t] for t in funnel]
    assert shares == sorted(shares, reverse=True) and types["rating"] > 0


def test_telemetry_has_at_least_15_malformed_kinds() -> None:
    assert len(set(kinds_for("telemetry"))) >= 15
    assert set(kinds_for("bookings")) >= {"negative_duration", "negative_revenue"}
    assert set(MALFORMED_KINDS) == set().union(*(kinds_for(e) for e in load_schemas()))


def _broken(kind: str, telemetry: Record, schemas: dict[str, MessageSchema]) -> bytes:
    rng = np.random.default_rng(0)
    return corrupt(kind, "telemetry", telemetry, schemas["telemetry"], "json", rng)


def test_byte_level_kinds_are_really_broken(
    telemetry: Record, schemas: dict[str, MessageSchema]
) -> None:
    with pytest.raises(UnicodeDecodeError):
        _broken("non_utf8", telemetry, schemas).decode("utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(_broken("truncated_json", telemetry, schemas))
    assert not isinstance(json.loads(_broken("not_json_object", telemetry, schemas)), dict)
    assert _broken("empty_value", telemetry, schemas) == b""
    unknown = _broken("unknown_schema_id", telemetry, schemas)
    assert unknown[0] == 0 and int.from_bytes(unknown[1:5], "big") == 999
    assert _broken("wrong_magic_byte", telemetry, schemas)[0] == 1
    oversized = _broken("oversized_value", telemetry, schemas)
    assert len(oversized) > 190_000 and isinstance(json.loads(oversized), dict)


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("wrong_type", lambda r: isinstance(r["battery_level"], str)),
        ("null_required", lambda r: r["vehicle_id"] is None),
        ("missing_field", lambda r: "latitude" not in r),
        ("out_of_range", lambda r: r["battery_level"] > 100),
        ("bad_vehicle_id", lambda r: not VEHICLE_ID.match(r["vehicle_id"])),
        ("bad_enum", lambda r: r["vehicle_type"] not in {"scooter", "ebike", "car", "van"}),
        ("invalid_coordinates", lambda r: abs(r["latitude"]) > 90),
        ("bad_timestamp", lambda r: r["timestamp"] == "yesterday"),
        ("future_timestamp", lambda r: datetime.fromisoformat(r["timestamp"]) > NOW),
    ],
)
def test_field_level_kinds_break_their_field(
    kind: str, check: object, telemetry: Record, schemas: dict[str, MessageSchema]
) -> None:
    record = json.loads(_broken(kind, telemetry, schemas))
    assert callable(check) and check(record)


def test_negative_booking_values(factory: EventFactory, schemas: dict) -> None:
    booking = factory.bookings(1, NOW)[0]
    rng = np.random.default_rng(0)
    for kind, field in (
        ("negative_duration", "trip_duration_minutes"),
        ("negative_revenue", "revenue"),
    ):
        payload = corrupt(kind, "bookings", booking, schemas["bookings"], "json", rng)
        assert json.loads(payload)[field] < 0


def test_avro_type_breaking_kinds_fail_to_decode(
    telemetry: Record, schemas: dict[str, MessageSchema]
) -> None:
    rng = np.random.default_rng(0)
    by_id = schemas_by_id(schemas)
    for kind in ("wrong_type", "null_required", "missing_field", "bad_timestamp", "empty_value"):
        payload = corrupt(kind, "telemetry", telemetry, schemas["telemetry"], "avro", rng)
        with pytest.raises(ValueError):
            decode_avro(by_id, payload)


def test_fault_mix_duplicates_and_late(schemas: dict[str, MessageSchema]) -> None:
    stream = MessageStream(
        "telemetry", duplicates=0.1, malformed=0.1, late=0.1, seed=9, vehicles=2_000
    )
    messages = [m for _ in range(5) for m in stream.next_chunk(1_000, NOW)]
    kinds = Counter(m.kind for m in messages)
    for name, share in (("duplicate", 0.1), ("late", 0.1), ("valid", 0.7)):
        assert kinds[name] / len(messages) == pytest.approx(share, abs=0.03)
    assert len(set(kinds) & set(kinds_for("telemetry"))) == len(kinds_for("telemetry"))
    originals = {(m.key, m.value) for m in messages if m.kind in ("valid", "late")}
    assert all((m.key, m.value) in originals for m in messages if m.kind == "duplicate")
    for m in messages:
        if m.kind == "late":
            age = NOW - datetime.fromisoformat(json.loads(m.value)["timestamp"])
            assert 3_600 <= age.total_seconds() <= 48 * 3_600


def test_all_topics_mix_and_seed_determinism() -> None:
    first = MessageStream("all", seed=11, vehicles=1_000).next_chunk(4_000, NOW)
    again = MessageStream("all", seed=11, vehicles=1_000).next_chunk(4_000, NOW)
    assert [m.value for m in first] == [m.value for m in again]
    shares = Counter(m.entity for m in first)
    assert len(first) == 4_000
    assert all(shares[e] / 4_000 >= 0.02 for e in shares) and len(shares) == 5


def test_avro_stream_decodes(schemas: dict[str, MessageSchema]) -> None:
    stream = MessageStream("all", "avro", seed=1, vehicles=1_000)
    by_id = schemas_by_id(schemas)
    for message in stream.next_chunk(500, NOW):
        assert decode_avro(by_id, message.value)


@pytest.mark.parametrize(
    "options",
    [
        ProduceOptions(rate=0, count=10),
        ProduceOptions(rate=10, count=-1),
        ProduceOptions(rate=10, count=10, format="xml"),
        ProduceOptions(rate=10, count=10, duplicates=1.5),
        ProduceOptions(rate=10, count=10, late=-0.1),
        ProduceOptions(rate=10, count=10, duplicates=0.5, malformed=0.4, late=0.2),
    ],
)
def test_invalid_options_are_config_errors(options: ProduceOptions) -> None:
    with pytest.raises(ConfigError):
        validate_options("telemetry", options)


def test_unknown_topic_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown topic"):
        validate_options("planes", ProduceOptions(rate=1, count=1))


def test_unreachable_broker_is_a_broker_error() -> None:
    config = load_config(env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(BrokerError, match="lakehouse kafka start"):
        require_topics(config, ["telemetry"], timeout_s=1.0)


def test_every_duplicate_follows_the_message_it_copies_in_its_topic() -> None:
    from streaming.simulator.stream import MessageStream

    stream = MessageStream("all", duplicates=0.2, malformed=0.05, late=0.05, seed=3)
    seen: dict[str, set[bytes]] = {}
    duplicates = 0
    for _ in range(5):
        for message in stream.next_chunk(2_000):
            earlier = seen.setdefault(message.entity, set())
            if message.kind == "duplicate":
                duplicates += 1
                assert message.value in earlier, message.entity
            earlier.add(message.value)
    assert duplicates > 1_000


def test_a_stream_goes_on_with_the_malformed_kinds_where_the_last_one_stopped() -> None:
    first = MessageStream("bookings", malformed=1.0, seed=1)
    kinds = [m.kind for m in first.next_chunk(10, datetime.now(UTC))]
    second = MessageStream("bookings", malformed=1.0, seed=2, malformed_turns=first.malformed_turns)
    kinds += [m.kind for m in second.next_chunk(len(kinds_for("bookings")) - 10, datetime.now(UTC))]
    assert kinds == list(kinds_for("bookings"))
