"""Lineage: where a row came from, and OpenLineage run events for every batch.

Every Silver and quarantine row carries its Kafka coordinates (`_kafka_topic`,
`_kafka_partition`, `_kafka_offset`, `_kafka_timestamp`) and the batch that wrote it
(`_batch_id`); every Gold row is an aggregate of the Silver rows whose key (the Gold table's
`keys`, derived from a Silver row by the table's own definition) equals its key. So
`lakehouse lineage <table> --where <SQL>` walks rows back: Gold -> the Silver rows behind them
-> their Bronze rows -> Kafka topic, partition and offset.

`OpenLineageEmitter` sends one START and one COMPLETE run event per batch (the Kafka topics or
Bronze tables read, the Delta tables written with their new version and rows written) through
the OpenLineage Python client, to a JSON-lines file (`LAKEHOUSE_OPENLINEAGE_FILE`) or an
OpenLineage HTTP endpoint such as Marquez (`LAKEHOUSE_OPENLINEAGE_URL`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming import bronze
from streaming.catalog import TableRef, parse
from streaming.config import Config
from streaming.errors import ConfigError
from streaming.redrive import COORDINATES
from streaming.s3.storage import is_s3, split
from streaming.tables import exists

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from streaming.pipeline import BatchReport

log = logging.getLogger(__name__)
PRODUCER = "https://github.com/lakehouse/lakehouse"
NAMESPACE = "lakehouse"


# --- walking a row back -----------------------------------------------------------------------


def lineage(
    spark: SparkSession, config: Config, name: str, where: str, limit: int = 20
) -> dict[str, Any]:
    """The rows of `name` that `where` selects, the Silver rows behind them (for Gold), their
    Bronze rows and Kafka coordinates (up to `limit` listed, all counted)."""
    ref = parse(config, name)
    if ref is None or ref.layer not in ("bronze", "silver", "quarantine", "gold"):
        raise ConfigError(
            f"unknown table {name!r}",
            hint="a Bronze, Silver, quarantine or Gold table, e.g. gold.demand_by_zone_hour",
        )
    if not exists(config, ref.path(config)):
        raise ConfigError(f"{name} does not exist under {config.root} yet")
    table = spark.read.format("delta").load(ref.path(config))
    selected = _where(table, where).localCheckpoint()
    report: dict[str, Any] = {"table": name, "where": where, "rows": selected.count()}
    if ref.layer == "gold":
        behind = _silver_behind(spark, config, ref.name, selected)
        report["silver"] = {e: rows.count() for e, rows in behind.items()}
        report["batches"] = {
            e: sorted(r[0] for r in rows.select("_batch_id").distinct().collect())
            for e, rows in behind.items()
        }
        sources = {e: rows.select(*COORDINATES) for e, rows in behind.items()}
    else:
        sources = {ref.name: selected.select(*COORDINATES)}
    if ref.layer in ("silver", "quarantine"):
        report["batches"] = {
            ref.name: sorted(r[0] for r in selected.select("_batch_id").distinct().collect())
        }
    report["bronze"] = {}
    kafka: list[dict[str, Any]] = []
    for entity, coordinates in sources.items():
        found = (
            spark.read.format("delta").load(config.table_path(bronze.LAYER, entity))
            .join(coordinates.distinct(), COORDINATES, "left_semi")
            .select(*COORDINATES, "_kafka_timestamp")
            .localCheckpoint()
        )  # fmt: skip
        report["bronze"][entity] = found.count()
        for row in found.orderBy(*COORDINATES).limit(max(limit - len(kafka), 0)).collect():
            kafka.append(
                {"topic": row[0], "partition": row[1], "offset": row[2], "timestamp": row[3]}
            )
    report["kafka"] = kafka
    return report


def _where(table: DataFrame, where: str) -> DataFrame:
    from pyspark.errors import AnalysisException, ParseException

    try:
        selected = table.where(where)
        selected.schema  # noqa: B018 - analysed now: a bad expression fails here, on one line
    except (AnalysisException, ParseException) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ConfigError(f"--where {where!r} does not apply: {first}") from None
    return selected


def _silver_behind(
    spark: SparkSession, config: Config, name: str, gold_rows: DataFrame
) -> dict[str, DataFrame]:
    """Per source entity, the Silver rows whose Gold key is one of `gold_rows`' keys."""
    from streaming.gold.aggregates import TABLES

    table = TABLES[name]
    behind = {}
    for entity, key_columns in table.sources.items():
        derived = key_columns()
        keys = [k for k in table.keys if k in derived and k in gold_rows.columns]
        silver = spark.read.format("delta").load(config.table_path("silver", entity))
        keyed = silver.select(
            *COORDINATES, "_batch_id", *[derived[k].alias(f"_key_{k}") for k in keys]
        )
        wanted = gold_rows.select(*[F.col(k).alias(f"_key_{k}") for k in keys]).distinct()
        on = reduce(
            lambda a, b: a & b, [keyed[f"_key_{k}"].eqNullSafe(wanted[f"_key_{k}"]) for k in keys]
        )
        behind[entity] = keyed.join(wanted, on, "left_semi").localCheckpoint()
    return behind


# --- OpenLineage run events -------------------------------------------------------------------


class OpenLineageEmitter:
    """One START and one COMPLETE event per batch of a pipeline; failures are logged only."""

    def __init__(self, config: Config, pipeline: str) -> None:
        self.config = config
        self.job = f"pipeline.{pipeline}"
        self.client = _client(config)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def emit(self, report: BatchReport, written: Sequence[Mapping[str, Any]]) -> None:
        if self.client is None:
            return
        try:
            for event in self.events(report, written):
                self.client.emit(event)
        except Exception as exc:  # lineage is metadata: it never fails a batch
            log.error("OpenLineage: batch %d not sent: %s", report.batch_id, exc)

    def events(self, report: BatchReport, written: Sequence[Mapping[str, Any]]) -> list[Any]:
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
        from openlineage.client.generated import (
            execution_parameters_run,
            job_type_job,
            nominal_time_run,
        )
        from openlineage.client.uuid import generate_new_uuid

        run = Run(
            runId=str(generate_new_uuid()),
            facets={
                "nominalTime": nominal_time_run.NominalTimeRunFacet(
                    nominalStartTime=_iso(report.started_at),
                    nominalEndTime=_iso(report.ended_at or report.started_at),
                    producer=PRODUCER,
                ),
                "executionParameters": execution_parameters_run.ExecutionParametersRunFacet(
                    parameters=[
                        execution_parameters_run.ExecutionParameter(
                            key="batch_id", value=str(report.batch_id)
                        )
                    ],
                    producer=PRODUCER,
                ),
            },
        )
        job = Job(
            namespace=NAMESPACE,
            name=self.job,
            facets={
                "jobType": job_type_job.JobTypeJobFacet(
                    processingType="STREAMING",
                    integration="SPARK",
                    jobType="MICRO_BATCH",
                    producer=PRODUCER,
                )
            },
        )
        inputs = self._inputs(report)
        outputs = [self._output(row) for row in written]
        return [
            RunEvent(eventType=RunState.START, eventTime=_iso(report.started_at), run=run,
                     job=job, producer=PRODUCER, inputs=inputs),
            RunEvent(eventType=RunState.COMPLETE,
                     eventTime=_iso(report.ended_at or report.started_at), run=run, job=job,
                     producer=PRODUCER, inputs=inputs, outputs=outputs),
        ]  # fmt: skip

    def _inputs(self, report: BatchReport) -> list[Any]:
        from openlineage.client.event_v2 import InputDataset
        from openlineage.client.generated import input_statistics_input_dataset as stats

        datasets = []
        for entity, rows in sorted(report.rows_in.items()):
            if self.job == "pipeline.refine":
                namespace, name = _dataset(self.config, TableRef(bronze.LAYER, entity))
            else:
                namespace = f"kafka://{self.config.kafka.bootstrap_servers.split(',')[0]}"
                name = self.config.topic(entity).name
            datasets.append(
                InputDataset(
                    namespace=namespace,
                    name=name,
                    inputFacets={
                        "inputStatistics": stats.InputStatisticsInputDatasetFacet(
                            rowCount=rows, producer=PRODUCER
                        )
                    },
                )
            )
        return datasets

    def _output(self, row: Mapping[str, Any]) -> Any:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.generated import dataset_version_dataset as version
        from openlineage.client.generated import output_statistics_output_dataset as stats

        namespace, name = _dataset(self.config, TableRef(*str(row["table"]).split(".", 1)))
        return OutputDataset(
            namespace=namespace,
            name=name,
            facets={"version": version.DatasetVersionDatasetFacet(
                datasetVersion=str(row["version"]), producer=PRODUCER)},
            outputFacets={"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(
                rowCount=row["rows_written"], producer=PRODUCER)},
        )  # fmt: skip


def _client(config: Config) -> Any:
    if not (config.lineage.url or config.lineage.file):
        return None
    from openlineage.client import OpenLineageClient

    if config.lineage.url:
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        return OpenLineageClient(transport=HttpTransport(HttpConfig(url=config.lineage.url)))
    from openlineage.client.transport.file import FileConfig, FileTransport

    Path(config.lineage.file).parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(
        transport=FileTransport(FileConfig(log_file_path=config.lineage.file, append=True))
    )


def _dataset(config: Config, ref: TableRef) -> tuple[str, str]:
    """OpenLineage's naming for a Delta table: the storage as namespace, the path as name."""
    location = ref.path(config)
    if is_s3(location):
        bucket, key = split(location)
        return f"s3://{bucket}", key
    return "file", str(Path(location).resolve())


def _iso(moment: datetime) -> str:
    return moment.isoformat()
