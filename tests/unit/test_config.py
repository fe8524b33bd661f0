"""Configuration: values that reach the JVM keep their meaning."""

from __future__ import annotations

import re

from streaming.config import load_config


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
