"""Kafka with SASL/SCRAM on the local broker: the right credentials stream, wrong ones fail fast
with one clear line, and the password never shows up in any output or file the service writes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import lakehouse, one_clear_line
from tests.conftest import _free_ports

pytestmark = [pytest.mark.slow, pytest.mark.seconds(60)]  # a SCRAM/TLS broker of its own

CANARY = "canary-Zq8#scram-password-4f1d"
USER = "lakehouse-stream"


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A broker with PLAINTEXT, SASL_PLAINTEXT and SASL_SSL (SCRAM) listeners; env for SCRAM
    clients over SASL_PLAINTEXT."""
    port, controller, scram, tls = _free_ports(4)
    root = tmp_path_factory.mktemp("scram")
    env = {
        **os.environ,
        "LAKEHOUSE_KAFKA_PORT": str(port),
        "LAKEHOUSE_KAFKA_CONTROLLER_PORT": str(controller),
        "LAKEHOUSE_KAFKA_SCRAM_PORT": str(scram),
        "LAKEHOUSE_KAFKA_TLS_PORT": str(tls),
        "LAKEHOUSE_KAFKA_DIR": str(root / "kafka"),
        "LAKEHOUSE_ROOT": str(root / "lakehouse"),
        "LAKEHOUSE_CHECKPOINTS": str(root / "checkpoints"),
        "LAKEHOUSE_TOPIC_PREFIX": "auth.",
        "LAKEHOUSE_METRICS_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{scram}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": CANARY,
    }
    started = lakehouse("kafka", "start", env=env)
    assert started.returncode == 0, started.stderr
    assert CANARY not in started.stdout + started.stderr
    try:
        yield env
    finally:
        lakehouse("kafka", "stop", env=env)


def test_the_right_credentials_stream_and_the_secret_never_leaks(
    scram_broker: dict[str, str],
) -> None:
    outputs = []
    for args in (
        ("topics", "create", "--partitions", "2"),
        ("produce", "telemetry", "--rate", "inf", "--count", "500", "--vehicles", "50"),
        ("run", "bronze", "--once"),
        ("show", "bronze.telemetry", "--limit", "1"),
        ("-v", "kafka", "status"),
    ):
        result = lakehouse(*args, env=scram_broker)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        outputs.append(result.stdout + result.stderr)
    assert "(1 of 500 rows)" in outputs[3]
    assert not [text for text in outputs if CANARY in text]
    root = Path(scram_broker["LAKEHOUSE_ROOT"]).parent
    leaked = [
        path
        for path in root.rglob("*")
        if path.is_file() and "kafka" not in path.parts and CANARY.encode() in path.read_bytes()
    ]
    assert leaked == []  # tables, checkpoints, logs: none holds the password


def test_a_wrong_password_fails_fast_with_one_clear_line(scram_broker: dict[str, str]) -> None:
    wrong = {**scram_broker, "KAFKA_SASL_PASSWORD": "not-the-password"}
    for output in _fails_fast_at_start_up(wrong, "refused the credentials"):
        assert "not-the-password" not in output


def _fails_fast_at_start_up(env: dict[str, str], phrase: str) -> list[str]:
    """`topics create` and `run bronze --once` exit 4 within 60 s with one `error:` line that
    says `phrase`, and no trace; returns their outputs."""
    outputs = []
    for args in (("topics", "create"), ("run", "bronze", "--once")):
        started = time.monotonic()
        result = lakehouse(*args, env=env)
        one_clear_line(result, 4, phrase)
        assert "\tat " not in result.stderr
        assert time.monotonic() - started < 60
        outputs.append(result.stdout + result.stderr)
    return outputs


def test_scram_over_tls_streams_and_an_untrusted_certificate_fails_fast(
    scram_broker: dict[str, str], tmp_path: Path
) -> None:
    from streaming.kafka.tls import ensure_certificate

    kafka_dir = Path(scram_broker["LAKEHOUSE_KAFKA_DIR"])
    env = {
        **scram_broker,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{scram_broker['LAKEHOUSE_KAFKA_TLS_PORT']}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_LOCATION": str(kafka_dir / "tls" / "ca.pem"),
        "LAKEHOUSE_TOPIC_PREFIX": "tls.",
        "LAKEHOUSE_ROOT": str(tmp_path / "lakehouse"),
        "LAKEHOUSE_CHECKPOINTS": str(tmp_path / "checkpoints"),
    }
    for args in (
        ("topics", "create", "--partitions", "2"),
        ("produce", "telemetry", "--rate", "inf", "--count", "300", "--vehicles", "30"),
        ("run", "bronze", "--once"),  # Spark's Java Kafka client, PEM truststore
        ("show", "bronze.telemetry", "--limit", "1"),
    ):
        result = lakehouse(*args, env=env)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert CANARY not in result.stdout + result.stderr
    assert "(1 of 300 rows)" in result.stdout

    # A client that trusts some other certificate refuses the broker's: one line, exit 4.
    stranger = ensure_certificate(tmp_path / "stranger", name="someone-else")
    _fails_fast_at_start_up({**env, "KAFKA_SSL_CA_LOCATION": str(stranger)}, "TLS with Kafka")
