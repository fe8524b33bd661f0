"""Shared fixtures: one real Kafka broker and one real SparkSession for the whole run.

The broker is a testcontainers Kafka container where a Docker daemon answers (a laptop) and the
project's own local KRaft broker otherwise (CI here). Both paths yield a bootstrap address, and
every test gets its own topic prefix and folders, so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streaming.config import Config, load_config
from streaming.kafka import broker
from streaming.kafka.admin import create_topics
from streaming.spark import SHORT_RUN_JVM

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PROJECT = Path(__file__).resolve().parent.parent
LONG_TEST_S = 30.0  # an end-to-end or slow test without a `seconds` mark
# pandas-on-Spark asks for this before any Spark session starts (pyarrow timestamps).
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()  # type: ignore[attr-defined]
        return True
    except Exception:  # no daemon, no socket, no client: use the local broker
        return False


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    port, controller_port = _free_ports(2)
    local = load_config(
        {
            "LAKEHOUSE_KAFKA_PORT": str(port),
            "LAKEHOUSE_KAFKA_CONTROLLER_PORT": str(controller_port),
            "LAKEHOUSE_KAFKA_DIR": str(tmp_path_factory.mktemp("kafka")),
        }
    )
    broker.start(local.broker, local.jars_dir)
    try:
        yield local.kafka.bootstrap_servers
    finally:
        broker.stop(local.broker)


def lake_env(root: Path, bootstrap: str, prefix: str) -> dict[str, str]:
    """The environment a `lakehouse` process of one test runs with."""
    return {
        "LAKEHOUSE_ROOT": str(root / "lakehouse"),
        "LAKEHOUSE_CHECKPOINTS": str(root / "checkpoints"),
        "LAKEHOUSE_TOPIC_PREFIX": prefix,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LAKEHOUSE_METRICS_PORT": "0",
        "LAKEHOUSE_DRIVER_MEMORY": "2g",
        "LAKEHOUSE_SHUFFLE_PARTITIONS": "2",
        # Each test's JVM lives for a few batches: the JIT's optimising tier would compile
        # code the run is over before it pays off (a first 1,500-event batch: 41 s -> 28 s).
        "LAKEHOUSE_JVM_OPTIONS": SHORT_RUN_JVM,
        # Nor does Spark's code generation (a cold 300-message batch: 52.9 s -> 36.9 s). The
        # generated code still runs in the suite: `bench --quick` keeps the service's defaults.
        "LAKEHOUSE_SPARK_CODEGEN": "false",
    }


class Lake:
    """One test's isolated lakehouse: its topics, its tables, its checkpoints."""

    def __init__(self, root: Path, bootstrap: str) -> None:
        self.root = root
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.env = lake_env(root, bootstrap, self.prefix)
        self.config: Config = load_config(self.env)

    def process_env(self, **overrides: str) -> dict[str, str]:
        return {**os.environ, **self.env, **overrides}


@pytest.fixture
def lake(tmp_path: Path, kafka_bootstrap: str) -> Lake:
    created = Lake(tmp_path, kafka_bootstrap)
    create_topics(created.config)
    return created


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    from streaming.spark import build_spark

    base = tmp_path_factory.mktemp("spark")
    config = load_config(lake_env(base, "127.0.0.1:1", "unused."))
    session = build_spark(config, app_name="lakehouse-tests")
    yield session
    session.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run for minutes first (end-to-end, then `slow`), dealt out to the workers:
    xdist's work-stealing scheduler gives each worker a contiguous block of this order and
    steals from a block's end, so each block must start with its share of the long tests (else
    one worker runs them all, one after another, while the other runs the short ones). A test
    counts as long when it or its module is marked `e2e` or `slow`."""

    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("seconds")
        return float(marker.args[0]) if marker else LONG_TEST_S if weight(item) < 2 else 2.0

    items.sort(key=weight)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    # Dealt a module at a time, so each module's tests run in one block and its module-scoped
    # fixtures (the dashboard's lake, Gold's late corpus, the SCRAM broker) are built once: the
    # modules with long tests first, the longest to the least loaded worker, then the others.
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def order(module: list[pytest.Item]) -> tuple[int, float]:
        return min(map(weight, module)), -sum(map(seconds, module))

    blocks: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for module in sorted(modules.values(), key=order):
        n = load.index(min(load))
        blocks[n] += module
        load[n] += sum(map(seconds, module))
    items[:] = [item for block in blocks for item in block]
