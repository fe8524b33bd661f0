"""Table contracts: one declarative TOML file per entity in `contracts/`.

A contract names the Avro schema its payloads decode with, the event-time column and watermark,
the dedup keys, the expectations (each with an action), PII fields, derivations, geofence
enrichments, partition columns and retention. A new rule or a new entity is a change to a
contract, never to the engine. Everything is checked at start-up, before any stream starts:
an unknown column, rule, action or key is one clear error naming the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError
from streaming.quality import ACTIONS, RULES
from streaming.schemas import MessageSchema, load_schemas, spark_fields, version_of
from streaming.settings import BY_ENV

CONTRACT_DIR: Path = BY_ENV["LAKEHOUSE_CONTRACTS"].default
DERIVED_TIME_COLUMNS = ("event_timestamp", "date", "hour")
_TOP_LEVEL = {
    "entity", "partitions", "schema", "event_time", "watermark", "dedup_keys", "partition_by",
    "retention_days", "max_message_bytes", "pii", "expectations", "derive", "geofence",
}  # fmt: skip
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Expectation:
    id: str
    rule: str
    column: str
    action: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Derivation:
    """`bucket`: label a numeric column by ascending bounds (value < bound -> that label)."""

    name: str
    column: str
    bounds: tuple[float, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class GeofenceSpec:
    latitude: str
    longitude: str
    prefix: str


@dataclass(frozen=True)
class Contract:
    entity: str
    source: Path
    schema: MessageSchema
    event_time: str
    watermark: str
    watermark_seconds: int
    versions: tuple[MessageSchema, ...]
    dedup_keys: tuple[tuple[str, ...], ...]
    partition_by: tuple[str, ...]
    retention_days: int
    max_message_bytes: int
    pii: tuple[str, ...]
    expectations: tuple[Expectation, ...]
    derive: tuple[Derivation, ...]
    geofence: tuple[GeofenceSpec, ...]

    @property
    def fields(self) -> dict[str, tuple[Any, bool]]:
        return spark_fields(self.schema)


def load_contracts(
    folder: Path | None = None, schemas: Mapping[str, MessageSchema] | None = None
) -> dict[str, Contract]:
    folder = folder or CONTRACT_DIR
    schemas = schemas if schemas is not None else load_schemas()
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ConfigError(f"no contracts (*.toml) in {folder}")
    contracts = [load_contract(path, schemas) for path in files]
    return {c.entity: c for c in contracts}


def load_contract(path: Path, schemas: Mapping[str, MessageSchema]) -> Contract:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"contract {path} cannot be read: {exc}") from None
    return _Checker(path, raw, schemas).contract()


class _Checker:
    """Validates one raw contract; every complaint names the file and what to change."""

    def __init__(self, path: Path, raw: dict[str, Any], schemas: Mapping[str, MessageSchema]):
        self.path, self.raw, self.schemas = path, raw, schemas

    def fail(self, what: str, hint: str) -> ConfigError:
        return ConfigError(f"contract {self.path}: {what}", hint=hint)

    def contract(self) -> Contract:
        unknown = set(self.raw) - _TOP_LEVEL
        if unknown:
            raise self.fail(f"unknown key(s) {sorted(unknown)}", f"use only {sorted(_TOP_LEVEL)}")
        schema_name = self._required("schema")
        versions = self._versions(schema_name)
        schema = versions[-1]
        fields = spark_fields(schema)
        derive = tuple(self._derivation(d, fields) for d in self.raw.get("derive", []))
        columns = {*fields, *DERIVED_TIME_COLUMNS, *(d.name for d in derive)}
        event_time = self._column(self._required("event_time"), set(fields), "event_time")
        watermark = str(self._required("watermark"))
        return Contract(
            entity=self._required("entity"),
            source=self.path,
            schema=schema,
            versions=versions,
            event_time=event_time,
            watermark=watermark,
            watermark_seconds=self._duration(watermark, "watermark"),
            dedup_keys=tuple(
                tuple(self._column(c, set(fields), "dedup_keys") for c in key)
                for key in self._required("dedup_keys")
            ),
            partition_by=tuple(
                self._column(c, columns, "partition_by") for c in self.raw.get("partition_by", [])
            ),
            retention_days=int(self.raw.get("retention_days", 730)),
            max_message_bytes=int(self.raw.get("max_message_bytes", 1_048_576)),
            pii=tuple(self._column(c, set(fields), "pii") for c in self.raw.get("pii", [])),
            expectations=self._expectations(fields, columns),
            derive=derive,
            geofence=tuple(self._geofence(g, fields) for g in self.raw.get("geofence", [])),
        )

    def _versions(self, name: str) -> tuple[MessageSchema, ...]:
        """Every version of the schema, oldest first; each later one may only add optional
        fields (a backward-compatible change), so the newest one reads every older payload."""
        stems = sorted(
            (stem for stem, s in self.schemas.items() if s.entity == name), key=version_of
        )
        if not stems:
            raise self.fail(f"schema '{name}' not found", f"add schemas/{name}.avsc")
        versions = tuple(self.schemas[stem] for stem in stems)
        latest = spark_fields(versions[-1])
        for older in versions[:-1]:
            for field, (data_type, _) in spark_fields(older).items():
                if field not in latest or latest[field][0] != data_type:
                    raise self.fail(
                        f"schema version {older.schema_id} -> {versions[-1].schema_id} of '{name}' "
                        f"removes or retypes field '{field}'",
                        "only add optional fields; an incompatible change needs a new topic",
                    )
            added = set(latest) - set(spark_fields(older))
            if any(not latest[field][1] for field in added):
                raise self.fail(
                    f"schema '{name}' adds a required field",
                    'new fields must be optional: ["null", <type>] with "default": null',
                )
        return versions

    def _required(self, key: str) -> Any:
        if key not in self.raw:
            raise self.fail(f"'{key}' is missing", f"add {key} = ... to the contract")
        return self.raw[key]

    def _column(self, name: str, known: set[str], where: str) -> str:
        if name not in known:
            raise self.fail(f"{where} names unknown column '{name}'", f"use one of {sorted(known)}")
        return name

    def _duration(self, text: str, where: str) -> int:
        match = re.fullmatch(r"\s*(\d+)\s*(second|minute|hour|day)s?\s*", text)
        if not match:
            raise self.fail(f"{where} '{text}' is not a duration", "write e.g. '10 minutes'")
        return int(match.group(1)) * _UNITS[match.group(2)]

    def _expectations(
        self, fields: Mapping[str, Any], columns: set[str]
    ) -> tuple[Expectation, ...]:
        explicit = [self._expectation(e, columns) for e in self.raw.get("expectations", [])]
        ids = [e.id for e in explicit]
        if len(set(ids)) != len(ids):
            raise self.fail(f"expectation ids are not unique: {ids}", "give each rule its own id")
        checked = {e.column for e in explicit if e.rule == "expect_column_values_to_not_be_null"}
        # Every field the Avro contract marks as required is checked for presence, even where
        # the TOML does not say so: a missing or null required value never reaches Silver.
        implicit = [
            Expectation(f"{name}_not_null", "expect_column_values_to_not_be_null", name,
                        "quarantine", {})
            for name, (_, nullable) in fields.items()
            if not nullable and name not in checked
        ]  # fmt: skip
        return (*explicit, *implicit)

    def _expectation(self, raw: Mapping[str, Any], columns: set[str]) -> Expectation:
        missing = {"id", "rule", "column", "action"} - set(raw)
        if missing:
            raise self.fail(f"an expectation lacks {sorted(missing)}", "see contracts/*.toml")
        rule, action = raw["rule"], raw["action"]
        if rule not in RULES:
            raise self.fail(f"unknown rule '{rule}' in {raw['id']}", f"use one of {sorted(RULES)}")
        if action not in ACTIONS:
            raise self.fail(f"unknown action '{action}' in {raw['id']}", f"use one of {ACTIONS}")
        params = {k: v for k, v in raw.items() if k not in {"id", "rule", "column", "action"}}
        try:
            RULES[rule].check(params)
        except ValueError as exc:
            raise self.fail(f"expectation {raw['id']}: {exc}", "fix its parameters") from None
        column = self._column(raw["column"], columns, f"expectation {raw['id']}")
        for other in params.get("when", {}):
            self._column(other, columns, f"expectation {raw['id']} (when)")
        return Expectation(raw["id"], rule, column, action, params)

    def _derivation(self, raw: Mapping[str, Any], fields: Mapping[str, Any]) -> Derivation:
        if raw.get("kind") != "bucket":
            raise self.fail(f"unknown derivation kind {raw.get('kind')!r}", "use kind = 'bucket'")
        bounds, labels = tuple(raw["bounds"]), tuple(raw["labels"])
        if len(labels) != len(bounds) + 1 or list(bounds) != sorted(bounds):
            raise self.fail(
                f"derivation {raw['name']}: needs ascending bounds and one label more than bounds",
                "e.g. bounds = [10, 30], labels = ['low', 'mid', 'high']",
            )
        column = self._column(raw["column"], set(fields), f"derivation {raw['name']}")
        return Derivation(raw["name"], column, bounds, labels)

    def _geofence(self, raw: Mapping[str, Any], fields: Mapping[str, Any]) -> GeofenceSpec:
        return GeofenceSpec(
            latitude=self._column(raw["latitude"], set(fields), "geofence"),
            longitude=self._column(raw["longitude"], set(fields), "geofence"),
            prefix=str(raw.get("prefix", "")),
        )
