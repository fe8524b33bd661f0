"""A running streaming pipeline the rate ladder can feed: a process serving Prometheus metrics.

`Run` is `python -m streaming.cli run all` (or `run bronze`) on a fresh lake; the chained drain
step is the other kind (see ladder.py). Both are
started in a session of their own, metered from outside with a TreeSampler once ready, and
stopped with SIGTERM (the runner stops its query cleanly), then SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from streaming.bench.procfs import TreeSampler
from streaming.bench.workspace import Lake, log_tail
from streaming.errors import LakehouseError

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 60.0


class Pipeline:
    """A process under its own session; subclasses say when it is ready and what it runs."""

    what = "pipeline"
    kind = "all"  # what `lakehouse run` runs: all (Bronze, Silver, Gold) or bronze alone

    @property
    def layers(self) -> tuple[str, ...]:
        from streaming.pipeline import LAYERS

        return LAYERS[self.kind]

    @property
    def query(self) -> str:
        """The name of the pipeline's one query: the label of its metrics."""
        from streaming.pipeline import query_name

        return query_name(self.kind)

    def __init__(self, lake: Lake, command: list[str], log_file: Path) -> None:
        self.lake = lake
        self.config = lake.config
        self.port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.port}/metrics"
        self.log_file = log_file
        env = {**lake.env, "LAKEHOUSE_METRICS_PORT": str(self.port)}
        with log_file.open("ab") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.started = time.monotonic()
        self.sampler: TreeSampler | None = None
        self.ready_s: float | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, since: float | None = None) -> float:
        """Seconds (from `since`, default the process start) until ready; then metered."""
        begin = self.started if since is None else since
        while not (self.ready() and fetch(self.metrics_url) is not None):
            self.check_alive()
            if time.monotonic() - begin > READY_TIMEOUT_S:
                raise LakehouseError(
                    f"{self.what} was not ready within {READY_TIMEOUT_S:.0f} s",
                    hint=f"see {self.log_file}",
                )
            time.sleep(0.5)
        if self.sampler is None:
            self.sampler = TreeSampler(self.process.pid).start()
        self.ready_s = time.monotonic() - begin
        return self.ready_s

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise LakehouseError(
                f"{self.what} exited with {self.process.returncode}: {log_tail(self.log_file)}",
                hint=f"see {self.log_file}",
            )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", self.what, STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its JVM and workers, if left behind
        self.process.wait()
        if self.sampler is not None:
            self.sampler.stop()


class Run(Pipeline):
    """`lakehouse run all` or `lakehouse run bronze` (streaming) on a fresh lake; ready once
    its query has written its checkpoint (every table exists by then). Bronze alone is how it
    runs in production, in a container of its own."""

    def __init__(self, lake: Lake, log_file: Path, kind: str = "all") -> None:
        command = [sys.executable, "-m", "streaming.cli", "run", kind]
        super().__init__(lake, command, log_file)
        self.what, self.kind = f"`lakehouse run {kind}`", kind
        self._marker = Path(self.config.checkpoint_path(self.query)) / "metadata"

    def ready(self) -> bool:
        return self._marker.exists()


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
