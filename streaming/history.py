"""Run history: one row per micro-batch of every pipeline, appended to `ops/runs` (delta-rs, from
the driver's Python: no Spark job, a few milliseconds).

What `lakehouse status` and the benchmark read. A batch replayed after a crash appends a second
row with the same batch id (an attempt); readers take the newest row per (pipeline, batch).
Appending is best effort: a failure is logged and never fails the batch, whose data is already
committed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from streaming.catalog import RUN_HISTORY, TableRef, append_rows

if TYPE_CHECKING:
    import pyarrow as pa

    from streaming.config import Config
    from streaming.pipeline import BatchReport

log = logging.getLogger(__name__)


def history_schema() -> pa.Schema:
    import pyarrow as pa

    counts = pa.map_(pa.string(), pa.int64())
    return pa.schema(
        [
            ("pipeline", pa.string()),
            ("batch_id", pa.int64()),
            ("date", pa.date32()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("ended_at", pa.timestamp("us", tz="UTC")),
            ("rows_in", counts),  # per topic's entity
            ("newest_kafka", pa.map_(pa.string(), pa.timestamp("us", tz="UTC"))),
            ("bronze_written", pa.list_(pa.string())),
            ("silver_valid", counts),  # per entity
            ("silver_duplicate", counts),
            ("quarantined", counts),  # per "<entity>.<stage>"
            ("rule_failures", counts),  # per "<entity>.<rule id>"
            ("gold_upserted", counts),  # per Gold table
            ("gold_deleted", counts),
            ("watermarks", pa.map_(pa.string(), pa.timestamp("us", tz="UTC"))),
            ("layer_seconds", pa.map_(pa.string(), pa.float64())),
            ("delta_versions", counts),  # per table written: the version the batch committed
        ]
    )


def history_row(pipeline: str, report: BatchReport) -> dict[str, Any]:
    silver = report.silver
    return {
        "pipeline": pipeline,
        "batch_id": report.batch_id,
        "date": report.started_at.date(),
        "started_at": report.started_at,
        "ended_at": report.ended_at,
        "rows_in": report.rows_in,
        "newest_kafka": report.newest_kafka,
        "bronze_written": report.bronze_written,
        "silver_valid": {e: c.valid for e, c in silver.items()},
        "silver_duplicate": {e: c.duplicate for e, c in silver.items()},
        "quarantined": {f"{e}.{s}": n for e, c in silver.items() for s, n in c.stages.items()},
        "rule_failures": {f"{e}.{r}": n for e, c in silver.items() for r, n in c.rules.items()},
        "gold_upserted": {t: s.upserted for t, s in report.gold.items()},
        "gold_deleted": {t: s.deleted for t, s in report.gold.items()},
        "watermarks": report.watermarks,
        "layer_seconds": {k: round(v, 3) for k, v in report.seconds.items()},
        "delta_versions": report.versions,
    }


class RunHistory:
    """Appends each batch's report of one pipeline (the pipeline's observer)."""

    def __init__(self, config: Config, pipeline: str) -> None:
        self.pipeline = pipeline
        self.config = config

    def append(self, report: BatchReport) -> None:
        row = history_row(self.pipeline, report)
        try:
            append_rows(self.config, TableRef(*RUN_HISTORY), [row], history_schema())
        except Exception as exc:  # the batch's data is committed: history is not worth failing it
            log.error("run history: batch %d not recorded: %s", report.batch_id, exc)
