"""Every read through the API, allowed or denied, as a row of the `audit.reads` Delta table.

Rows are buffered and appended in one commit every `FLUSH_SECONDS` (and when the server stops):
a commit per request would write a file per request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from streaming.catalog import AUDIT_READS, TableRef, append_rows

if TYPE_CHECKING:
    import pyarrow as pa

    from streaming.config import Config

log = logging.getLogger(__name__)
FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class AuditRow:
    read_at: datetime
    token_id: str
    role: str
    table: str
    version: int | None
    columns: list[str]
    filters: str
    order: str
    output: str
    rows: int
    status: int
    reason: str


def audit_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("read_at", pa.timestamp("us", tz="UTC")),
            ("date", pa.date32()),
            ("token_id", pa.string()),
            ("role", pa.string()),
            ("table", pa.string()),
            ("version", pa.int64()),
            ("columns", pa.list_(pa.string())),
            ("filters", pa.string()),
            ("order", pa.string()),
            ("output", pa.string()),
            ("rows", pa.int64()),
            ("status", pa.int32()),
            ("reason", pa.string()),
        ]
    )


class AuditLog:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = TableRef(*AUDIT_READS)
        self._rows: list[AuditRow] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit", daemon=True)
        self.written = 0

    def start(self) -> AuditLog:
        self._thread.start()
        return self

    def record(self, row: AuditRow) -> None:
        with self._lock:
            self._rows.append(row)

    def flush(self) -> int:
        """Append what is buffered (one commit); how many rows."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        records = [{**asdict(r), "date": r.read_at.date()} for r in rows]
        try:
            append_rows(self.config, self.table, records, audit_schema())
        except Exception:
            with self._lock:  # kept for the next flush: an audit row is never dropped quietly
                self._rows[:0] = rows
            raise
        self.written += len(rows)
        return len(rows)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                self.flush()
            except Exception as exc:  # the next flush retries; the reads keep being served
                log.error("audit: appending to %s failed: %s", self.table, exc)


def now() -> datetime:
    return datetime.now(UTC)
