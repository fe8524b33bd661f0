"""One writing process per layer: `lakehouse run`, `redrive` and `replay` hold a lease per layer.

Each layer's tables have one writer. The pipeline relies on it (Silver's dedup reads the Silver
it appends to; vehicle_state is rewritten from the state it read; commit marks are read once at
start), and on S3 with Delta's `S3SingleDriverLogStore` so does Delta itself: S3A gives Delta no
put-if-absent, so two drivers can both commit version N and one commit is silently lost.

A writer holds the object (or, for a local root, the file) `<root>/_writers/<layer>.lease`
(host, pid, start time, a random token) and refreshes it every 30 s from a background thread.
A start that finds a lease refreshed less than 2 minutes ago by a live process refuses, naming
the holder; a lease left by a dead process of this machine is taken at once.

Limits: the lease is written with plain writes (pyarrow has no conditional put). Two starts in
the same moment are told apart by write, wait, read back: the last writer wins and the other backs
off, so only a start that stalls for longer than that wait between its check and its write can
still slip through. A holder that cannot refresh for 2 minutes (a partition, a long pause) loses
the lease to the next start; its heartbeat notices and stops it. On S3, staleness compares the
object's Last-Modified (the S3 server's clock) with this host's clock. With
LAKEHOUSE_DELTA_LOG_STORE=dynamodb Delta's commits are safe from many drivers; the lease still
keeps one writer per layer, which the pipeline itself relies on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from streaming.config import Config
from streaming.errors import ConfigError
from streaming.processes import alive
from streaming.s3.storage import is_s3, location_filesystem, s3_error

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0
SETTLE_S = 2.0
LOCAL_SETTLE_S = 0.2  # a local file is seen by every process as soon as it is written


@dataclass(frozen=True)
class Holder:
    """Who holds a lease. `pid_ns` tells a pid of this machine's process table apart from the
    same number in another container that shares the host name."""

    host: str
    pid: int
    pid_ns: str
    started_at: str
    token: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_ns=_pid_namespace(),
            started_at=_now(),
            token=uuid.uuid4().hex,
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (started {self.started_at})"

    def encode(self) -> bytes:
        return json.dumps({**asdict(self), "heartbeat_at": _now()}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holder:
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):  # unreadable: treat it as a foreign holder
            return cls("unknown host", 0, "", "unknown", "")


class WriterLeases:
    """The leases this process holds, refreshed by a daemon thread until `release`."""

    def __init__(
        self,
        fs: FileSystem,
        paths: list[str],
        holder: Holder,
        on_lost: Callable[[], None],
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.paths = paths
        self.holder = holder
        self.lost = threading.Event()
        self._fs = fs
        self._on_lost = on_lost
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="writer-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refresh(self) -> None:
        """Rewrite each lease (a fresh Last-Modified); give up the run if another took one."""
        for path in self.paths:
            try:
                current = _read(self._fs, path)
                if current is not None and current[0].token != self.holder.token:
                    log.error(
                        "lost the writer lease %s to %s: stopping", path, current[0].describe()
                    )
                    self.lost.set()
                    self._on_lost()
                    return
                _write(self._fs, path, self.holder)
            except OSError as exc:  # transient: the next beat tries again
                log.warning("could not refresh the writer lease %s: %s", path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for path in self.paths:
            try:
                current = _read(self._fs, path)
                if current is not None and current[0].token == self.holder.token:
                    self._fs.delete_file(path)
            except OSError as exc:
                log.warning("could not remove the writer lease %s: %s", path, exc)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            self.refresh()


def lease_path(config: Config, layer: str) -> str:
    """`<root>/_writers/<layer>.lease`, as a path on the root's file system."""
    return _lease_path(location_filesystem(config, config.root)[1], layer)


def _lease_path(root: str, layer: str) -> str:
    return f"{root}/_writers/{layer}.lease"


def acquire(
    config: Config,
    layers: list[str],
    holder: Holder | None = None,
    on_lost: Callable[[], None] | None = None,
    settle_s: float = SETTLE_S,
) -> WriterLeases:
    """Take the lease of every layer or none: a ConfigError names a live holder."""
    fs, root = location_filesystem(config, config.root)
    holder = holder or Holder.this_process()
    leases = WriterLeases(
        fs, [_lease_path(root, layer) for layer in layers], holder, on_lost or _stop_this_process
    )
    try:
        for layer, path in zip(layers, leases.paths, strict=True):
            current = _read(fs, path)
            if current is not None and not _may_take(current[0], current[1], holder):
                raise _refused(config, layer, *current)
            _write(fs, path, holder)
        time.sleep(settle_s)  # a simultaneous start has written by now: the last write wins
        for layer, path in zip(layers, leases.paths, strict=True):
            current = _read(fs, path)
            if current is not None and current[0].token != holder.token:
                raise _refused(config, layer, *current)
    except ConfigError:
        leases.release()
        raise
    except OSError as exc:
        leases.release()
        if not is_s3(config.root):
            raise ConfigError(
                f"cannot write the writer lease under {config.root}: {exc}",
                hint="the lake's folder must be writable",
            ) from None
        raise s3_error(config, f"the writer lease under {config.root}", exc) from None
    leases.start()
    log.info("writer lease held for %s under %s", ", ".join(layers), config.root)
    return leases


def take(config: Config, layers: list[str]) -> WriterLeases:
    """`acquire` with the settling time the root's storage needs; `release()` when done."""
    return acquire(config, layers, settle_s=SETTLE_S if is_s3(config.root) else LOCAL_SETTLE_S)


@contextmanager
def writer_leases(config: Config, layers: list[str]) -> Iterator[WriterLeases | None]:
    """Hold the layers' leases for the body."""
    leases = take(config, layers)
    try:
        yield leases
    finally:
        leases.release()
    if leases.lost.is_set():
        raise ConfigError(
            f"this run lost its writer lease under {config.root} and stopped",
            hint="another `lakehouse run` took over after this one missed its heartbeats; "
            "run one writer per layer",
        )


def _may_take(current: Holder, age_s: float, holder: Holder) -> bool:
    """A stale lease, or one left by a dead process (or an earlier life of this pid) here."""
    if current.token == holder.token or age_s >= STALE_AFTER_S:
        return True
    if (current.host, current.pid_ns) != (holder.host, holder.pid_ns) or not current.pid_ns:
        return False
    return current.pid == holder.pid or not alive(current.pid)


def _refused(config: Config, layer: str, current: Holder, age_s: float) -> ConfigError:
    return ConfigError(
        f"another process writes the {layer} tables under {config.root}: {current.describe()}, "
        f"lease refreshed {age_s:.0f} s ago",
        hint="stop it first: each layer has one writer (a crashed writer's lease is taken at "
        f"once on its own machine, elsewhere {STALE_AFTER_S:.0f} s after its last refresh)",
    )


def holders(config: Config) -> dict[str, tuple[Holder, float]]:
    """Per layer, the lease's holder and the seconds since its refresh (for `status`)."""
    from streaming.catalog import LAYERS

    fs, root = location_filesystem(config, config.root)
    found = {}
    for layer in LAYERS:
        try:
            current = _read(fs, _lease_path(root, layer))
        except OSError:
            continue
        if current is not None:
            found[layer] = current
    return found


def _read(fs: FileSystem, path: str) -> tuple[Holder, float] | None:
    """(holder, seconds since its last refresh), or None when there is no lease."""
    from pyarrow.fs import FileType

    info = fs.get_file_info(path)
    if info.type == FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        holder = Holder.decode(stream.read())
    modified = info.mtime.timestamp() if info.mtime is not None else 0.0
    return holder, max(0.0, time.time() - modified)


def _write(fs: FileSystem, path: str, holder: Holder) -> None:
    from pyarrow.fs import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(holder.encode())


def _stop_this_process() -> None:
    """Ask the runner for its clean stop (its SIGTERM handler), or end a `--once` run."""
    os.kill(os.getpid(), signal.SIGTERM)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
