"""Configuration: values that reach the JVM keep their meaning."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from streaming import settings
from streaming.config import load_config
from streaming.errors import ConfigError


def test_a_sasl_password_with_quotes_and_backslashes_stays_one_jaas_value() -> None:
    password = 'p"w\\d; username="admin'
    config = load_config(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "lakehouse",
            "KAFKA_SASL_PASSWORD": password,
        }
    )
    jaas = config.kafka.spark_options()["kafka.sasl.jaas.config"]
    # Kafka's JAAS parser: key=value pairs, a quoted value ends at the first unescaped quote.
    pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', jaas)
    values = {key: re.sub(r"\\(.)", r"\1", value) for key, value in pairs}
    assert values == {"username": "lakehouse", "password": password}
    assert jaas.endswith(";") and jaas.count(" required ") == 1


def test_the_settings_table_in_the_docs_is_the_declared_one() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert settings.markdown() in docs, "regenerate it: lakehouse settings --markdown"


def test_every_declared_setting_is_read_from_the_environment_and_from_the_file(
    tmp_path: Path,
) -> None:
    """Each setting, set to a value other than its default, changes the configuration; the
    same value under its TOML key changes it the same way."""
    base = load_config({})
    contracts = tmp_path / "contracts"
    shutil.copytree(settings.BY_ENV["LAKEHOUSE_CONTRACTS"].default, contracts)
    for s in settings.SETTINGS:
        value = str(contracts) if s.env == "LAKEHOUSE_CONTRACTS" else _another_value(s)
        from_env = load_config({s.env: value, **_needed(s)})
        assert from_env != base, s.env
        toml = tmp_path / f"{s.env}.toml"
        *tables, key = s.key.split(".")
        header = f"[{'.'.join(tables)}]\n" if tables else ""
        literal = value if s.kind in ("int", "float", "bool") else f'"{value}"'
        toml.write_text(f"{header}{key} = {literal}\n")
        assert load_config(_needed(s), toml) == from_env, s.env


def test_a_bad_value_is_one_clear_error_naming_the_setting() -> None:
    cases = {
        "LAKEHOUSE_METRICS_PORT": ("ninety", "must be a whole number"),
        "LAKEHOUSE_VACUUM_HOURS": ("3", "must be at least 168"),
        "LAKEHOUSE_SERVE_PORT": ("70000", "between 0 and 65535"),
        "LAKEHOUSE_FAIL_ON_DATA_LOSS": ("maybe", "true or false"),
        "KAFKA_SECURITY_PROTOCOL": ("tls", "is not one of"),
        "LAKEHOUSE_ROOT": ("hdfs://x/y", "uses the scheme hdfs://"),
    }
    for env, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as raised:
            load_config({env: value})
        assert env in str(raised.value)


def _another_value(s: settings.Setting) -> str:
    if s.choices:
        return next(c for c in s.choices if c and c != s.default)
    if s.kind == "bool":
        return "false" if s.default else "true"
    if s.kind in ("int", "float"):
        return str(int(max(s.default, s.minimum or 0)) + 1)
    if s.kind in ("path", "location"):
        return "/tmp/elsewhere"
    if s.env.endswith("_URL") or s.env.endswith("_ENDPOINT"):
        return "http://elsewhere:9000"
    return "other-value"


def _needed(s: settings.Setting) -> dict[str, str]:
    """What a setting needs beside it to be accepted (SASL needs its three settings)."""
    if s.env == "KAFKA_SECURITY_PROTOCOL":
        return {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p"}  # fmt: skip
    return {}
