"""The processes and files a chaos scenario breaks: its broker, its pipeline, its checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from streaming.checkpoints import Checkpoint
from streaming.errors import LakehouseError
from streaming.kafka import broker
from streaming.kafka.admin import admin_client, watermarks
from streaming.pipeline import query_name
from streaming.processes import alive
from streaming.s3 import server as s3_server
from streaming.tables import open_table

if TYPE_CHECKING:
    from streaming.config import Config

log = logging.getLogger(__name__)
LAKEHOUSE = [sys.executable, "-m", "streaming.cli"]
POLL_S = 0.05


class ChaosError(LakehouseError):
    """A scenario could not do what it meant to (a process that would not start, a wait that
    never ended): the run stops with this line."""

    exit_code = 8


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float,
               alive_check: Callable[[], None] | None = None) -> float:  # fmt: skip
    """Poll `condition` every 50 ms; the seconds it took. `alive_check` raises when a process
    the wait depends on has died."""
    start = time.monotonic()
    while not condition():
        if alive_check is not None:
            alive_check()
        if time.monotonic() - start > timeout_s:
            raise ChaosError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - start


class Broker:
    """The run's own broker: the local broker's code in the work folder, on its own ports."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def start(self) -> None:
        broker.start(self.config.broker, self.config.jars_dir)

    def pid(self) -> int:
        pid = broker.running_pid(self.config.broker)
        if pid is None:
            raise ChaosError("the chaos broker is not running")
        return pid

    def kill_9(self) -> None:
        pid = self.pid()
        os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), "the killed broker to go", 30)

    def pause(self) -> None:
        os.killpg(self.pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid(), signal.SIGCONT)

    def stop(self) -> None:
        broker.stop(self.config.broker)

    def add_partitions(self, topic: str, total: int) -> None:
        from confluent_kafka.admin import NewPartitions

        admin = admin_client(self.config.kafka)  # held until the futures resolve
        futures = admin.create_partitions([NewPartitions(topic, total)], operation_timeout=30)
        for future in futures.values():
            future.result()

    def delete_before(self, topic: str, offsets: dict[int, int]) -> None:
        """Delete each partition's records before its offset (retention, by hand)."""
        from confluent_kafka import TopicPartition

        marks = watermarks(self.config.kafka, [(topic, p) for p in offsets])
        targets = [
            TopicPartition(topic, p, o) for p, o in offsets.items() if o > marks[topic, p][0]
        ]
        if targets:
            admin = admin_client(self.config.kafka)  # held until the futures resolve
            for future in admin.delete_records(targets).values():
                future.result()


class S3Server:
    """The run's own S3 server (the local one's code in the work folder, on its own port)."""

    def __init__(self, config: Config, bucket: str) -> None:
        self.config = config
        self.bucket = bucket

    def start(self) -> None:
        s3_server.start(self.config.s3_server, self.config.s3, self.config.jars_dir, [self.bucket])

    def kill_9(self) -> None:
        pid = s3_server.running_pid(self.config.s3_server)
        if pid is None:
            raise ChaosError("the chaos S3 server is not running")
        os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), "the killed S3 server to go", 30)

    def stop(self) -> None:
        s3_server.stop(self.config.s3_server)


class Pipeline:
    """`lakehouse run all` of the chaos lake as a child process group, its output in a log."""

    def __init__(self, config: Config, env: dict[str, str], logs: Path) -> None:
        self.config = config
        self.env = env
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.checkpoint = Checkpoint(config, config.checkpoint_path(query_name("all")))

    @property
    def log_file(self) -> Path:
        return self.logs / f"run-all-{self.starts}.log"

    def start(self, **overrides: str) -> None:
        if self.running():
            raise ChaosError("the pipeline runs already")
        self.starts += 1
        log.info("pipeline start %d (log %s)", self.starts, self.log_file.name)
        with self.log_file.open("wb") as out:
            self.process = subprocess.Popen(
                [*LAKEHOUSE, "run", "all"], env={**self.env, **overrides}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def require_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ChaosError(f"the pipeline ended (exit {self.process.returncode}): "
                             + self.tail())  # fmt: skip

    def tail(self, lines: int = 3) -> str:
        text = self.log_file.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def commits(self) -> int:
        batches = self.checkpoint.batches("commits")
        return batches[-1] if batches else -1

    def offsets(self) -> int:
        batches = self.checkpoint.batches("offsets")
        return batches[-1] if batches else -1

    def wait_commit(self, after: int, timeout_s: float = 300) -> float:
        """Seconds until the checkpoint commits a batch newer than `after`."""
        return wait_until(lambda: self.commits() > after, "a committed batch", timeout_s,
                          self.require_running)  # fmt: skip

    def pause(self) -> None:
        """SIGSTOP the process group: it stays where it is until `resume` (or a kill)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill_9(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # it died on its own
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
        log.info("pipeline killed -9 (last committed batch %d)", self.commits())

    def kill_9_at_random(self, rng: random.Random, jitter_s: float) -> float:
        """Wait for a committed batch after the start, then a random moment; kill -9. The
        seconds from the start to that first batch (the recovery time)."""
        before = self.commits()
        started = time.monotonic()
        self.wait_commit(before)
        recovery = time.monotonic() - started
        time.sleep(rng.uniform(0.0, jitter_s))
        self.require_running()
        self.kill_9()
        return recovery

    def stop(self, timeout_s: float = 120) -> int:
        """SIGTERM and wait: the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_9()
            raise ChaosError("the pipeline did not stop within its grace period") from None

    def wait_exit(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)


def table_version(config: Config, path: str) -> int:
    """The table's newest version, from its log (-1 before the table exists)."""
    table = open_table(config, path)
    return -1 if table is None else table.version()
