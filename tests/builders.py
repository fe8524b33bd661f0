"""Small builders for test data: hand-made Kafka payloads and helpers to run the CLI."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from pyspark.sql import SparkSession

import streaming
from streaming.config import Config

LAKEHOUSE = [sys.executable, "-m", "streaming.cli"]
PII_KEY = "test-only-pii-key-0123456789abcdef"  # the one key of every test lake


TRACE_MARKERS = ("Traceback", "\tat org.", "\tat java.", "py4j.protocol", "Exception in thread")


def one_clear_line(result: subprocess.CompletedProcess[str], exit_code: int, *phrases: str) -> None:
    """The command failed with `exit_code` and exactly one `error:` line saying every phrase,
    and printed no Python or JVM trace."""
    assert result.returncode == exit_code, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    for marker in TRACE_MARKERS:
        assert marker not in result.stderr


def package_zip(folder: Path) -> Path:
    """The `streaming` package as a zip, the form --py-files ships to every executor."""
    source = Path(streaming.__file__).resolve().parent
    staging = folder / "staging"
    shutil.copytree(source, staging / "streaming", ignore=shutil.ignore_patterns("__pycache__"))
    return Path(shutil.make_archive(str(folder / "streaming"), "zip", staging))


def lakehouse(
    *args: str, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the `lakehouse` command as a user would, capturing its output. Past `timeout` it gets
    SIGTERM (a command stops the processes it started), SIGKILL a minute later, and the test
    fails with the end of its output."""
    with subprocess.Popen(
        [*LAKEHOUSE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise AssertionError(
                f"lakehouse {' '.join(args)} ran over {timeout:.0f} s:\n{out[-3000:]}{err[-3000:]}"
            ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def broken_payloads() -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) triples that Bronze must store byte for byte."""
    oversized = json.dumps({"vehicle_id": "AB123456", "pad": "x" * 200_000}).encode()
    return [
        (b"AB123456", b'{"vehicle_id": "AB123456", "battery_le', []),
        (b"AB123456", b"\xff\xfe\x00not utf-8 \xc3\x28", [("content-type", b"application/json")]),
        (b"AB123456", b"", []),
        (None, b'{"event_id": null}', []),
        (b"AB123456", None, []),
        (b"\x00\x01", b"\x01\x00\x00\x00\x01garbage-avro", [("content-type", b"avro/binary")]),
        (b"AB123456", b"\x00\x00\x00\x03\xe7\x02\x04", []),
        (b"AB123456", oversized, [("trace", b"\x00\xff"), ("trace", b"dup-header-key")]),
        (b"AB123456", b"[1, 2, 3]", []),
    ]


Acked = tuple[str, int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def publish(
    config: Config, entity: str, messages: list[tuple[bytes | None, bytes | None, list]]
) -> list[Acked]:
    """Publish raw messages; return (topic, partition, offset, key, value, headers) as acked.

    Taken from the delivery reports themselves: reports of different partitions interleave, so
    the order of `messages` says nothing about which offset each one got.
    """
    producer = Producer({**config.kafka.client_options(), "enable.idempotence": True})
    acked: list[Acked] = []

    def on_delivery(headers, error, message):
        # Delivery reports carry no headers: the sent ones travel with the callback.
        assert error is None, error
        acked.append(
            (
                message.topic(),
                message.partition(),
                message.offset(),
                message.key(),
                message.value(),
                headers,
            )
        )

    for key, value, headers in messages:
        producer.produce(
            config.topic(entity).name,
            key=key,
            value=value,
            headers=headers,
            on_delivery=functools.partial(on_delivery, headers),
        )
    assert producer.flush(30) == 0
    return acked


def write_ledger(path: Path, acked: list[Acked], kind: str = "valid") -> Path:
    lines = ["topic,partition,offset,kind", *(f"{a[0]},{a[1]},{a[2]},{kind}" for a in acked)]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(
    condition: Callable[[], bool], process: subprocess.Popen[str], timeout_s: float
) -> None:
    """Poll an external stream's progress (a separate process has no callback into the test)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"stream exited early: {stderr_of(process)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the stream made no progress within {timeout_s:.0f} s")
        time.sleep(0.2)


def kill_9_mid_run(
    layer: str, env: dict[str, str], log: Path, commits: int, timeout_s: float, jitter_s: float
) -> None:
    """Start `lakehouse run <layer>`, wait until the Delta log `log` has `commits` commits, wait
    a random moment more, then kill -9 the whole process group (the JVM with it)."""
    stream = subprocess.Popen(
        [*LAKEHOUSE, "run", layer], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(list(log.glob("*.json"))) >= commits, stream, timeout_s)
        time.sleep(random.Random(os.getpid()).uniform(0.0, jitter_s))
        assert stream.poll() is None, "the stream ended before it could be killed"
        os.killpg(stream.pid, signal.SIGKILL)
        stream.wait(timeout=30)
    finally:
        if stream.poll() is None:
            os.killpg(stream.pid, signal.SIGKILL)


def kafka_frame(spark: SparkSession, messages, offsets: dict[str, int], at, prefix: str = "c."):
    """A Kafka source batch (the Kafka source's schema) of simulator messages, one partition per
    topic; `offsets` (per entity) advances, so successive frames continue each topic."""
    from streaming import bronze

    rows: list[tuple[Any, ...]] = []
    for m in messages:
        rows.append((m.key, m.value, f"{prefix}{m.entity}", 0, offsets[m.entity], at, 0, []))
        offsets[m.entity] += 1
    return spark.createDataFrame(rows, bronze.KAFKA_SCHEMA).localCheckpoint()


def stderr_of(process: subprocess.Popen[str]) -> str:
    """What a finished (or failing) child process wrote to its piped stderr."""
    return process.stderr.read() if process.stderr is not None else ""
