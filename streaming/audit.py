"""The audit trail of writes: `audit.writes`, one row per Delta commit the service made to a table.

Every guarded write (a pipeline's batch, a re-drive, a replay, an erasure) is recorded after
the fact, from the table's own log: who (user, host, pid), which query and batch, which table,
the Delta version and operation, the rows the batch brought in for that table's entity, the
rows the commit wrote, and the rules the entity's rows failed. The commit is found by the mark
every such commit carries in Delta's `userMetadata` (`commits.commit_mark`), so the audit and
the table cannot disagree. Maintenance, retention and erasure actions have their own tables
(`audit.maintenance`, `audit.erasures`); the serving edge's reads go to `audit.reads`.

Appending is best effort, as for the run history: a failure is logged and never fails a batch
whose data is committed.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streaming.catalog import AUDIT_WRITES, TableRef, append_rows
from streaming.commits import parse_mark
from streaming.tables import open_table

if TYPE_CHECKING:
    import pyarrow as pa

    from streaming.commits import CommitGuard
    from streaming.config import Config

log = logging.getLogger(__name__)
# Metrics Delta writes per operation: the rows a commit wrote, whichever it was.
_WRITTEN = ("numOutputRows", "numTargetRowsInserted", "numTargetRowsUpdated",
            "numTargetRowsDeleted", "numDeletedRows")  # fmt: skip


def actor() -> str:
    """Who writes: the operating-system user, the host and the process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def writes_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("at", pa.timestamp("us", tz="UTC")),
            ("date", pa.date32()),
            ("by", pa.string()),
            ("query", pa.string()),
            ("batch_id", pa.int64()),
            ("table", pa.string()),
            ("version", pa.int64()),
            ("operation", pa.string()),
            ("rows_in", pa.int64()),  # the batch's rows of the table's entity (None: n/a)
            ("rows_written", pa.int64()),
            ("rules_failed", pa.map_(pa.string(), pa.int64())),
            ("metrics", pa.string()),  # Delta's operation metrics, JSON
        ]
    )


def record_writes(
    config: Config,
    guard: CommitGuard,
    batch_id: int,
    rows_in: Mapping[str, int] | None = None,
    rules: Mapping[str, Mapping[str, int]] | None = None,
    paths: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Append one row per table the guard wrote for `batch_id` (then forgets them), or per
    table of `paths` that holds the batch's commit, and return the rows. `rows_in` and `rules`
    are per entity; `<layer>.<entity>` takes its entity's."""
    written = guard.take_written(batch_id)
    paths = written if paths is None else paths
    if not paths:
        return []
    mark = (guard.pipeline, batch_id)
    now = datetime.now(UTC)
    by = actor()
    rows = []
    try:
        for path in paths:
            ref = _ref(config, path)
            commit = _commit(config, path, mark)
            if commit is None:
                continue
            metrics = commit.get("operationMetrics") or {}
            entity = ref.name
            rows.append(
                {
                    "at": now,
                    "date": now.date(),
                    "by": by,
                    "query": guard.pipeline,
                    "batch_id": batch_id,
                    "table": str(ref),
                    "version": int(commit["version"]),
                    "operation": commit.get("operation"),
                    "rows_in": (rows_in or {}).get(entity),
                    "rows_written": sum(int(metrics.get(m, 0)) for m in _WRITTEN),
                    "rules_failed": dict((rules or {}).get(entity, {}))
                    if ref.layer in ("silver", "quarantine") else None,
                    "metrics": json.dumps(metrics, sort_keys=True),
                }
            )  # fmt: skip
        append_rows(config, TableRef(*AUDIT_WRITES), rows, writes_schema())
    except Exception as exc:  # the data is committed: the audit row is not worth failing it
        log.error("audit: the writes of %s batch %d not recorded: %s", guard.pipeline, batch_id,
                  exc)  # fmt: skip
    return rows


def _ref(config: Config, path: str) -> TableRef:
    layer, name = path.rstrip("/").rsplit("/", 2)[-2:]
    return TableRef(layer, name)


def _commit(config: Config, path: str, mark: tuple[str, int]) -> dict[str, Any] | None:
    """The newest commit of the table whose mark names `mark`'s pipeline and batch."""
    table = open_table(config, path)
    if table is None:
        return None
    for entry in sorted(table.history(10), key=lambda e: -int(e["version"])):
        found = parse_mark(entry.get("userMetadata"))
        if found is not None and found[:2] == mark:
            return entry
    return None
