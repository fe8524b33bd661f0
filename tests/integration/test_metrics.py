"""Metrics: a running stream serves Prometheus figures; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from types import SimpleNamespace

from streaming.metrics import PipelineMetrics, kafka_positions
from tests.builders import LAKEHOUSE, lakehouse, publish, stderr_of
from tests.conftest import _free_ports


def test_kafka_positions_give_committed_offset_and_lag() -> None:
    source = SimpleNamespace(
        endOffset='{"t.telemetry": {"0": 120, "1": 80}}',
        latestOffset='{"t.telemetry": {"0": 150, "1": 80}}',
    )
    assert kafka_positions(source) == {
        ("t.telemetry", "0"): (120, 30),
        ("t.telemetry", "1"): (80, 0),
    }
    delta_source = SimpleNamespace(
        endOffset='{"sourceVersion": 1, "reservoirVersion": 3}', latestOffset=None
    )
    assert kafka_positions(delta_source) == {}


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_running_stream_serves_metrics_and_stops_on_sigterm(lake) -> None:
    publish(lake.config, "telemetry", [(b"AB%06d" % i, b"{}", []) for i in range(300)])
    (port,) = _free_ports(1)
    env = lake.process_env(LAKEHOUSE_METRICS_PORT=str(port), LAKEHOUSE_TRIGGER_INTERVAL="1 second")
    stream = subprocess.Popen(
        [*LAKEHOUSE, "run", "bronze"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    query = 'query="pipeline.bronze"'
    try:
        deadline = time.monotonic() + 180
        metrics: dict[str, float] = {}
        while metrics.get(f"lakehouse_input_rows_total{{{query}}}", 0) < 300:
            assert stream.poll() is None, stderr_of(stream)[-3000:]
            assert time.monotonic() < deadline, "no metrics within 180 s"
            time.sleep(0.5)
            try:
                metrics = _scrape(port)
            except OSError:
                continue
        topic = lake.config.topic("telemetry").name
        committed = sum(
            v
            for k, v in metrics.items()
            if k.startswith("lakehouse_kafka_committed_offset") and topic in k
        )
        lag = sum(
            v
            for k, v in metrics.items()
            if k.startswith("lakehouse_kafka_lag_records") and topic in k
        )
        assert committed == 300 and lag == 0
        assert metrics[f"lakehouse_output_rows_total{{{query}}}"] == 300
        assert 0 < metrics['lakehouse_freshness_seconds{query="bronze.telemetry"}'] < 600
        assert metrics[f"lakehouse_batch_duration_seconds_count{{{query}}}"] >= 1
        # `status` names the running writer: it holds the Bronze layer's lease
        status = lakehouse("status", "--json", "--no-kafka", env=env)
        writers = json.loads(status.stdout)["writers"]
        assert list(writers) == ["bronze"] and f"pid {stream.pid} " in writers["bronze"]["holder"]
    finally:
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(timeout=60) == 0, stderr_of(stream)[-3000:]


def test_freshness_is_absent_until_a_row_is_committed() -> None:
    metrics = PipelineMetrics()
    assert metrics.registry.get_sample_value("lakehouse_freshness_seconds", {"query": "x"}) is None
