"""Table contracts: the real ones load and agree with the Avro schemas; every mistake is one
clear ConfigError naming the file; `lakehouse run silver` refuses bad inputs before Spark starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streaming.contracts import DERIVED_TIME_COLUMNS, load_contract, load_contracts
from streaming.errors import ConfigError
from streaming.schemas import load_schemas, spark_fields
from tests.builders import lakehouse
from tests.conftest import lake_env

ENTITIES = {"telemetry", "bookings", "user_events", "external", "feedback"}
NOT_NULL = "expect_column_values_to_not_be_null"

VALID = """\
entity = "telemetry"
schema = "telemetry"
event_time = "timestamp"
watermark = "10 minutes"
dedup_keys = [["event_id"]]
partition_by = ["date"]

[[expectations]]
id = "battery_level_range"
rule = "expect_column_values_to_be_between"
column = "battery_level"
min_value = 0
max_value = 100
action = "quarantine"

[[derive]]
name = "battery_status"
kind = "bucket"
column = "battery_level"
bounds = [10, 30, 70]
labels = ["critical", "low", "medium", "good"]
"""


@pytest.fixture(scope="module")
def schemas():
    return load_schemas()


@pytest.fixture(scope="module")
def contracts():
    return load_contracts()


def test_the_five_real_contracts_load(contracts) -> None:
    assert set(contracts) == ENTITIES
    for entity, contract in contracts.items():
        assert contract.schema.entity == entity
        assert contract.source.name == f"{entity}.toml"


def test_typed_fields_come_from_the_avro_schema(contracts, schemas) -> None:
    for entity, contract in contracts.items():
        assert contract.fields == spark_fields(schemas[entity]), entity
        assert list(contract.fields) == list(schemas[entity].field_names), entity


def test_every_required_avro_field_is_checked_for_presence(contracts) -> None:
    for entity, contract in contracts.items():
        present = {e.column for e in contract.expectations if e.rule == NOT_NULL}
        required = {name for name, (_, nullable) in contract.fields.items() if not nullable}
        nullable = {name for name, (_, nullable) in contract.fields.items() if nullable}
        assert required <= present, (entity, required - present)
        assert not (nullable & present), entity
        for expectation in contract.expectations:
            if expectation.rule == NOT_NULL:
                assert expectation.action == "quarantine", expectation


def test_expectation_ids_are_unique_and_columns_known(contracts) -> None:
    for entity, contract in contracts.items():
        ids = [e.id for e in contract.expectations]
        assert len(ids) == len(set(ids)), entity
        columns = {*contract.fields, *DERIVED_TIME_COLUMNS, *(d.name for d in contract.derive)}
        assert {e.column for e in contract.expectations} <= columns, entity
        assert contract.event_time in contract.fields
        assert set(contract.partition_by) <= columns


def test_real_contract_settings(contracts) -> None:
    telemetry = contracts["telemetry"]
    assert telemetry.watermark_seconds == 600
    assert telemetry.dedup_keys == (("event_id",), ("vehicle_id", "timestamp"))
    assert telemetry.partition_by == ("date", "vehicle_type")
    assert contracts["bookings"].watermark_seconds == 7 * 86400
    assert contracts["bookings"].pii == ("email", "phone")
    assert contracts["user_events"].pii == ("email", "phone")
    assert contracts["external"].watermark_seconds == 3600
    assert [g.prefix for g in contracts["bookings"].geofence] == ["pickup_", "dropoff_"]


def test_a_small_valid_contract_loads(tmp_path: Path, schemas) -> None:
    path = tmp_path / "telemetry.toml"
    path.write_text(VALID)
    contract = load_contract(path, schemas)
    assert contract.retention_days == 730
    assert contract.max_message_bytes == 1_048_576
    assert contract.derive[0].bounds == (10, 30, 70)
    explicit = [e.id for e in contract.expectations if e.rule != NOT_NULL]
    assert explicit == ["battery_level_range"]


def _replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


BROKEN = [
    pytest.param(
        _replace('column = "battery_level"\nmin', 'column = "battery_levle"\nmin'),
        ["expectation battery_level_range", "unknown column 'battery_levle'"],
        id="unknown-expectation-column",
    ),
    pytest.param(
        _replace("expect_column_values_to_be_between", "expect_column_values_to_be_nice"),
        ["unknown rule 'expect_column_values_to_be_nice'"],
        id="unknown-rule",
    ),
    pytest.param(
        _replace('action = "quarantine"', 'action = "drop"'),
        ["unknown action 'drop'", "battery_level_range"],
        id="unknown-action",
    ),
    pytest.param(
        _replace('"10 minutes"', '"soon"'),
        ["watermark 'soon' is not a duration"],
        id="bad-watermark",
    ),
    pytest.param(
        "retention = 30\n" + VALID,
        ["unknown key(s) ['retention']"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        _replace('[["event_id"]]', '[["event_id"], ["vehicle", "timestamp"]]'),
        ["dedup_keys names unknown column 'vehicle'"],
        id="dedup-key-unknown-column",
    ),
    pytest.param(
        _replace('labels = ["critical", "low", "medium", "good"]', 'labels = ["low", "high"]'),
        ["derivation battery_status", "one label more than bounds"],
        id="derivation-wrong-label-count",
    ),
    pytest.param(
        _replace("bounds = [10, 30, 70]", "bounds = [30, 10, 70]"),
        ["derivation battery_status", "ascending bounds"],
        id="derivation-unsorted-bounds",
    ),
    pytest.param(
        _replace('event_time = "timestamp"\n', ""),
        ["'event_time' is missing"],
        id="missing-event-time",
    ),
    pytest.param(
        _replace('schema = "telemetry"', 'schema = "telemetri"'),
        ["schema 'telemetri' not found"],
        id="unknown-schema",
    ),
    pytest.param(
        _replace("min_value = 0\n", "minimum = 0\n"),
        ["expectation battery_level_range", "unknown parameter(s) ['minimum']"],
        id="unknown-rule-parameter",
    ),
    pytest.param(
        _replace('rule = "expect_column_values_to_be_between"\n', ""),
        ["an expectation lacks ['rule']"],
        id="expectation-without-rule",
    ),
    pytest.param(
        _replace('event_time = "timestamp"', 'event_time = "date"'),
        ["event_time names unknown column 'date'"],
        id="event-time-not-a-field",
    ),
    pytest.param(
        _replace('partition_by = ["date"]', 'partition_by = ["day"]'),
        ["partition_by names unknown column 'day'"],
        id="unknown-partition-column",
    ),
    pytest.param(
        _replace('kind = "bucket"', 'kind = "log"'),
        ["unknown derivation kind 'log'"],
        id="unknown-derivation-kind",
    ),
    pytest.param(
        VALID + '\n[[expectations]]\nid = "battery_level_range"\nrule = '
        '"expect_column_values_to_not_be_null"\ncolumn = "event_id"\naction = "fail"\n',
        ["expectation ids are not unique"],
        id="duplicate-expectation-id",
    ),
    pytest.param(
        VALID + "\nentity = [",
        ["cannot be read"],
        id="not-toml",
    ),
]


@pytest.mark.parametrize(("text", "phrases"), BROKEN)
def test_a_broken_contract_is_one_clear_error(
    tmp_path: Path,
    schemas,
    text: str,
    phrases: list[str],
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_contract(path, schemas)
    message = str(caught.value)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message, message
    assert caught.value.exit_code == 2


def test_load_contracts_names_the_broken_file(tmp_path: Path, schemas) -> None:
    (tmp_path / "a.toml").write_text(VALID)
    (tmp_path / "b.toml").write_text(_replace('action = "quarantine"', 'action = "ignore"'))
    with pytest.raises(ConfigError, match=r"b\.toml.*unknown action 'ignore'"):
        load_contracts(tmp_path, schemas)


def test_an_empty_contract_folder_is_an_error(tmp_path: Path, schemas) -> None:
    with pytest.raises(ConfigError, match="no contracts"):
        load_contracts(tmp_path, schemas)


def test_a_bad_tolerance_is_caught_at_load(tmp_path: Path, schemas) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        VALID + '\n[[expectations]]\nid = "ts"\nrule = "expect_column_values_to_not_be_in_future"'
        '\ncolumn = "timestamp"\ntolerance = "soon"\naction = "quarantine"\n'
    )
    with pytest.raises(ConfigError, match="tolerance"):
        load_contract(path, schemas)


def _silver_once(tmp_path: Path, **overrides: str):
    env = {
        **lake_env(tmp_path, "127.0.0.1:1", "x."),
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        **overrides,
    }
    started = time.monotonic()
    result = lakehouse("run", "refine", "--once", env=env, timeout=60)
    return result, time.monotonic() - started


def _one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Exception" not in result.stderr
    return errors[0]


def test_run_refine_without_a_pii_key_fails_before_spark(tmp_path: Path) -> None:
    result, seconds = _silver_once(tmp_path)
    assert "LAKEHOUSE_PII_KEY" in _one_error_line(result)
    assert seconds < 15, seconds  # no JVM was started


def test_run_silver_with_a_short_pii_key_fails_before_spark(tmp_path: Path) -> None:
    result, _ = _silver_once(tmp_path, LAKEHOUSE_PII_KEY="Tiny-Key")
    assert "LAKEHOUSE_PII_KEY" in _one_error_line(result)
    assert "Tiny-Key" not in result.stderr


def test_run_silver_with_a_missing_geofence_file_fails_before_spark(tmp_path: Path) -> None:
    result, seconds = _silver_once(
        tmp_path,
        LAKEHOUSE_PII_KEY="a-long-enough-test-key-0123456789",
        LAKEHOUSE_GEOFENCES="/nonexistent/zones.geojson",
    )
    line = _one_error_line(result)
    assert "/nonexistent/zones.geojson" in line
    assert "a-long-enough-test-key" not in result.stderr
    assert seconds < 15, seconds


def test_a_new_entity_is_one_contract_file_and_its_schema(tmp_path: Path) -> None:
    """A contract file (and the schema it names) is all a new entity needs: the configuration
    gets its topic and partitions, the catalog its Bronze, Silver and quarantine tables, and the
    contracts load. A partition count for an entity without a contract is refused."""
    import shutil

    from streaming.catalog import TableRef, all_tables
    from streaming.config import load_config
    from streaming.contracts import CONTRACT_DIR

    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACT_DIR, folder)
    text = (folder / "feedback.toml").read_text()
    text = text.replace('entity = "feedback"', 'entity = "ratings"').replace(
        "partitions = 1 ", "partitions = 2 "
    )
    (folder / "ratings.toml").write_text(text)
    config = load_config({"LAKEHOUSE_CONTRACTS": str(folder), "LAKEHOUSE_TOPIC_PREFIX": "p."})
    assert set(config.entities) == {*ENTITIES, "ratings"}
    assert (config.topic("ratings").name, config.topic("ratings").partitions) == ("p.ratings", 2)
    tables = set(all_tables(config))
    assert {TableRef(layer, "ratings") for layer in ("bronze", "silver", "quarantine")} <= tables
    assert "ratings" in load_contracts(folder, load_schemas())

    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[topics.partitions]\nrides = 4\n")
    with pytest.raises(ConfigError, match="names \\['rides'\\]"):
        load_config({"LAKEHOUSE_CONTRACTS": str(folder)}, wrong)
