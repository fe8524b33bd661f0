"""Exactly-once writes for a pipeline: which batch each table already holds, read once.

`foreachBatch` replays a batch only after a restart (a failed batch stops the query), so the
check "did this table already commit batch N?" is needed only for the first batches after a
start. Each commit carries the pipeline's name and the batch id in Delta's `userMetadata`; when
the pipeline starts, `CommitGuard` reads each table's recent history once to learn the last
batch it holds. From then on a write is skipped if its table already holds the batch, and
nothing is looked up per commit (Delta's own `txnAppId`/`txnVersion` looks the id up in the
table's state at every commit: a Spark job per write).

The crash-point tests kill a batch after each table's commit in turn and prove the scheme.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from streaming.errors import RetryableError
from streaming.tables import open_table

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import SparkSession

    from streaming.config import Config

log = logging.getLogger(__name__)
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
# How many commits back a table's history is read at start. Between two batches of one
# pipeline a table can only take maintenance commits (OPTIMIZE, VACUUM, erasure); a deeper
# read is made when none of these holds the pipeline's mark.
_RECENT = 20
# A write that conflicts with another writer's commit (maintenance's compaction or retention
# beside the stream) is tried again this many times, after 1, 2, 4, ... seconds.
RETRIES = 5
BACKOFF_SECONDS = 1.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class Committed:
    """The newest batch of a pipeline that a table holds, the Delta version holding it, and
    what else its writer put in the commit's mark (Silver: the batch's books)."""

    batch_id: int
    version: int
    details: dict[str, Any] = field(default_factory=dict)


class Mark(NamedTuple):
    pipeline: str
    batch_id: int
    details: dict[str, Any]


def commit_mark(pipeline: str, batch_id: int, **details: Any) -> str:
    """The commit's `userMetadata`: the pipeline, the batch, and any details of the write."""
    return json.dumps({"pipeline": pipeline, "batch": batch_id, **details}, separators=(",", ":"))


def parse_mark(raw: str | None) -> Mark | None:
    """A commit's mark, or None for a commit by someone else."""
    if not raw:
        return None
    try:
        mark = json.loads(raw)
        details = {k: v for k, v in mark.items() if k not in ("pipeline", "batch")}
        return Mark(str(mark["pipeline"]), int(mark["batch"]), details)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # not ours


class CommitGuard:
    """Per table, the newest batch this pipeline committed; read from history on first use."""

    def __init__(self, config: Config, pipeline: str) -> None:
        self.config = config
        self.pipeline = pipeline
        self._known: dict[str, Committed | None] = {}
        self._written: dict[int, list[str]] = {}  # per batch: the tables written, for the audit
        self._lock = threading.Lock()

    def committed(self, path: str, batch_id: int) -> Committed | None:
        """The commit of `batch_id` (or a later batch) that `path` already holds, else None."""
        with self._lock:
            if path not in self._known:
                self._known[path] = self._newest_mark(path)
            known = self._known[path]
        return known if known is not None and known.batch_id >= batch_id else None

    def write(self, path: str, batch_id: int, write: Callable[[], None]) -> bool:
        """Run `write` (one Delta commit to `path`) unless the table holds the batch already.

        The commit's mark comes from the session's userMetadata, which `BatchScope` sets for
        the whole batch. Returns whether it wrote.
        """
        if self.committed(path, batch_id) is not None:
            log.info("%s already holds batch %d of %s: skipped", path, batch_id, self.pipeline)
            return False
        retrying(write, f"the write of batch {batch_id} to {path}")
        with self._lock:
            self._known[path] = Committed(batch_id, -1)  # the version is read only on a restart
            self._written.setdefault(batch_id, []).append(path)
        return True

    def take_written(self, batch_id: int) -> list[str]:
        """The tables written for `batch_id` since the last call (the audit's to record)."""
        with self._lock:
            return self._written.pop(batch_id, [])

    def holding(self, path: str, batch_id: int) -> int:
        """The version of `path` that holds the batch's commit (the newest version when the
        commit was made by this process: its version is not read back)."""
        own = self.committed(path, batch_id)
        if own is not None and own.version >= 0:
            return own.version
        return self.newest(path)

    def newest(self, path: str) -> int:
        """The table's newest version."""
        table = self._open(path)
        assert table is not None, path
        return table.version()

    def _open(self, path: str) -> DeltaTable | None:
        """The table's log, read by delta-rs (no Spark job: milliseconds a table)."""
        return open_table(self.config, path)

    def _newest_mark(self, path: str) -> Committed | None:
        table = self._open(path)
        if table is None:
            return None
        for limit in (_RECENT, None):
            commits = table.history(limit)
            for commit in sorted(commits, key=lambda c: -int(c["version"])):
                mark = parse_mark(commit.get("userMetadata"))
                if mark is not None and mark.pipeline == self.pipeline:
                    return Committed(mark.batch_id, int(commit["version"]), mark.details)
            if limit is None or len(commits) < limit:
                return None
        return None


class BatchScope:
    """Every Delta commit made inside carries the pipeline's mark for the batch."""

    def __init__(self, spark: SparkSession, pipeline: str, batch_id: int) -> None:
        self.spark = spark
        self.mark = commit_mark(pipeline, batch_id)

    def __enter__(self) -> BatchScope:
        self.spark.conf.set(USER_METADATA, self.mark)
        return self

    def __exit__(self, *_: object) -> None:
        self.spark.conf.unset(USER_METADATA)


def retrying(work: Callable[[], _T], what: str) -> _T:
    """`work`, again after a Delta write conflict, with backoff.

    Safe for every write here: a conflict means another writer committed first, and the ones
    that run beside the stream (compaction, expiry of old partitions) change no row a batch's
    write depends on; Delta re-checks the retried commit against the new table."""
    for attempt in range(RETRIES):
        try:
            return work()
        except _conflicts() as exc:
            if attempt == RETRIES - 1:
                raise RetryableError(f"{what} kept conflicting with other writers: {exc}") from None
            pause = BACKOFF_SECONDS * 2**attempt
            log.warning("%s conflicted with another writer (%s); again in %.0f s", what,
                        type(exc).__name__, pause)  # fmt: skip
            time.sleep(pause)
    raise AssertionError("unreachable")


def _conflicts() -> tuple[type[Exception], ...]:
    """Delta's commit-conflict exceptions as PySpark raises them (`delta.exceptions` exports
    exactly these). They share no Python base class: `ConcurrentAppendException` is not a
    `DeltaConcurrentModificationException`."""
    import delta.exceptions

    return tuple(getattr(delta.exceptions, name) for name in delta.exceptions.__all__)
