"""`lakehouse status`: what an operator on call asks first, from the tables alone (a running
pipeline and a stopped one alike): each pipeline's last batch and rate (run history), Kafka lag
per topic (the broker's end offsets against Bronze), freshness per Gold table and quarantine per
rule over the last hour. Exits non-zero when a Gold table is staler than the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streaming.catalog import RUN_HISTORY, TableRef, all_tables
from streaming.config import Config
from streaming.errors import LakehouseError
from streaming.tables import open_table

if TYPE_CHECKING:
    import pyarrow.dataset as ds

RECENT_BATCHES = 10  # a pipeline's rate: rows over the span of its last batches
QUARANTINE_WINDOW = timedelta(hours=1)


class Stale(LakehouseError):
    """A Gold table's newest event is older than the threshold (for alerting scripts)."""

    exit_code = 7


@dataclass(frozen=True)
class Freshness:
    version: int | None
    newest_event: datetime | None
    age_seconds: float | None
    stale: bool


def dataset(config: Config, ref: TableRef) -> tuple[int, ds.Dataset] | None:
    """(version, Arrow dataset) of a table; None if it has not been written."""
    table = open_table(config, ref.path(config))
    return None if table is None else (table.version(), table.to_pyarrow_dataset())


def _query(
    data: ds.Dataset, sql: str, parameters: list[Any] | None = None
) -> list[tuple[Any, ...]]:
    import duckdb

    connection = duckdb.connect()
    try:
        connection.register("t", data)
        return connection.execute(sql, parameters or []).fetchall()
    finally:
        connection.close()


def freshness(version: int | None, data: ds.Dataset | None, stale_seconds: float) -> Freshness:
    """A Gold table's newest event time and whether it is older than `stale_seconds`."""
    newest = _query(data, "SELECT max(last_event_time) FROM t")[0][0] if data else None
    age = (datetime.now(UTC) - newest).total_seconds() if newest else None
    return Freshness(version, newest, round(age, 1) if age is not None else None,
                     age is None or age > stale_seconds)  # fmt: skip


def quarantine_counts(data: ds.Dataset, since: datetime) -> list[tuple[str, str, int]]:
    """(stage, rule, rows) quarantined since `since`, most first."""
    return _query(
        data,
        "SELECT stage, rule, count(*) FROM (SELECT stage, unnest(CASE WHEN len(rule_ids) = 0 "
        "THEN ['(none)'] ELSE rule_ids END) AS rule FROM t WHERE _quarantined_at >= ?) "
        "GROUP BY stage, rule ORDER BY 3 DESC, 1, 2",
        [since],
    )


def pipelines(config: Config) -> dict[str, dict[str, Any]]:
    """Per pipeline: its last batch (newest attempt) and its rate over the recent batches."""
    found = dataset(config, TableRef(*RUN_HISTORY))
    if found is None:
        return {}
    rows = _query(
        found[1],
        "SELECT pipeline, batch_id, started_at, ended_at, "
        "list_sum(map_values(rows_in)), layer_seconds FROM ("
        " SELECT *, row_number() OVER (PARTITION BY pipeline, batch_id ORDER BY ended_at DESC) AS n"
        " FROM t) WHERE n = 1 ORDER BY pipeline, batch_id DESC",
    )
    status: dict[str, dict[str, Any]] = {}
    for pipeline, batch_id, started, ended, rows_in, seconds in rows:
        entry = status.setdefault(pipeline, {"recent": []})
        if len(entry["recent"]) < RECENT_BATCHES:
            entry["recent"].append((started, ended, rows_in or 0))
        if "last_batch" not in entry:
            entry.update(last_batch=batch_id, last_batch_ended=ended, layer_seconds=dict(seconds))
    for entry in status.values():
        recent = entry.pop("recent")
        span = (max(e for _, e, _ in recent) - min(s for s, _, _ in recent)).total_seconds()
        entry["rows_per_second"] = round(sum(n for _, _, n in recent) / span, 1) if span else None
        entry["since_last_batch_seconds"] = round(
            (datetime.now(UTC) - entry["last_batch_ended"]).total_seconds(), 1
        )
    return status


def kafka_lag(config: Config) -> dict[str, Any]:
    """Per topic: records the broker holds that Bronze does not, and how old Bronze's newest is.
    A broker that cannot be reached gives its reason instead."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**config.kafka.client_options(), "group.id": "lakehouse-status"})
    lag: dict[str, Any] = {}
    try:
        for entity in config.entities:
            topic = config.topic(entity).name
            metadata = consumer.list_topics(topic, timeout=5)
            partitions = sorted(metadata.topics[topic].partitions)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                    for p in partitions}  # fmt: skip
            found = dataset(config, TableRef("bronze", entity))
            stored: dict[int, int] = {}
            newest = None
            if found is not None:
                for partition, top, last in _query(
                    found[1],
                    "SELECT _kafka_partition, max(_kafka_offset), max(_kafka_timestamp) FROM t "
                    "GROUP BY 1",
                ):
                    stored[partition] = top + 1
                    newest = max(newest, last) if newest else last
            records = sum(max(0, end - stored.get(p, 0)) for p, end in ends.items())
            age = (datetime.now(UTC) - newest).total_seconds() if newest else None
            behind = round(age, 1) if records and age is not None else 0.0
            lag[topic] = {"records": records, "seconds": behind}
    except KafkaException as exc:
        return {"error": f"Kafka at {config.kafka.bootstrap_servers}: {exc.args[0].str()}"}
    finally:
        consumer.close()
    return lag


def writers(config: Config) -> dict[str, dict[str, Any]]:
    """Per layer, the process holding its writer lease (a running pipeline, re-drive, replay)."""
    from streaming import lease

    return {
        layer: {"holder": holder.describe(), "refreshed_seconds_ago": round(age)}
        for layer, (holder, age) in lease.holders(config).items()
    }


def status(config: Config, stale_seconds: float, kafka: bool = True) -> dict[str, Any]:
    since = datetime.now(UTC) - QUARANTINE_WINDOW
    gold = {}
    for ref in (t for t in all_tables(config) if t.layer == "gold"):
        found = dataset(config, ref)
        version, data = found if found else (None, None)
        gold[str(ref)] = freshness(version, data, stale_seconds).__dict__
    quarantine = []
    for entity in config.entities:
        found = dataset(config, TableRef("quarantine", entity))
        if found is not None:
            quarantine += [{"entity": entity, "stage": s, "rule": r, "rows": n}
                           for s, r, n in quarantine_counts(found[1], since)]  # fmt: skip
    return {
        "pipelines": pipelines(config),
        "writers": writers(config),
        "kafka_lag": kafka_lag(config) if kafka else {},
        "gold": gold,
        "quarantine_last_hour": quarantine,
        "stale_seconds": stale_seconds,
        "stale": sorted(t for t, f in gold.items() if f["stale"]),
    }


def render(report: dict[str, Any]) -> str:
    lines = ["pipelines:"]
    for name, p in report["pipelines"].items() or [("(none)", None)]:
        if p is None:
            lines.append("  no batch recorded yet (ops.runs is empty)")
            continue
        layers = " ".join(f"{k} {v:.1f}s" for k, v in p["layer_seconds"].items())
        lines.append(
            f"  {name}: batch {p['last_batch']} ended {p['since_last_batch_seconds']} s ago, "
            f"{p['rows_per_second']} rows/s over recent batches, layers {layers}"
        )
    lines.append("writers:")
    for layer, w in report["writers"].items() or [("(none)", None)]:
        if w is None:
            lines.append("  no layer has a writer now")
            continue
        lines.append(
            f"  {layer}: {w['holder']}, lease refreshed {w['refreshed_seconds_ago']} s ago"
        )
    lines.append("kafka lag:")
    lag = report["kafka_lag"]
    if not lag:
        lines.append("  not asked (--no-kafka)")
    if "error" in lag:
        lines.append(f"  unknown: {lag['error']}")
    for topic, t in ((k, v) for k, v in lag.items() if k != "error"):
        lines.append(f"  {topic}: {t['records']} records, {t['seconds']} s")
    lines.append(f"gold freshness (stale after {report['stale_seconds']:.0f} s):")
    for table, f in report["gold"].items():
        state = "STALE" if f["stale"] else "fresh"
        lines.append(f"  {table}: {state}, newest event {f['newest_event']} "
                     f"({f['age_seconds']} s ago), version {f['version']}")  # fmt: skip
    lines.append("quarantined in the last hour, by rule:")
    for q in report["quarantine_last_hour"] or [{"entity": "(none)", "stage": "", "rule": "",
                                                  "rows": 0}]:  # fmt: skip
        lines.append(f"  {q['entity']} {q['stage']} {q['rule']}: {q['rows']}")
    return "\n".join(lines)
