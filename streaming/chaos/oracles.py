"""The oracles of `streaming.verify`, counted for the chaos table, and their proof: each one is
shown to fail on an injected fault, one row dropped and another doubled, reporting each (then the
table is restored)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming.gold.demand import DEMAND_KEYS
from streaming.verify import check_bronze, check_gold, check_silver, run_checks

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from streaming.config import Config

COORDS = ["_kafka_topic", "_kafka_partition", "_kafka_offset"]


@dataclass(frozen=True)
class Tally:
    """What the oracles found: rows lost, doubled, present but never sent, Gold rows wrong."""

    ledger_rows: int
    lost: int
    duplicated: int
    unexpected: int
    gold_wrong: int
    skipped: int  # ledger rows Kafka deleted before they were read (expected, not lost)
    violations: list[str]

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == self.gold_wrong == 0


def tally(spark: SparkSession, config: Config, ledgers: list[Path], skipped: int) -> Tally:
    """Every oracle over the lake; `skipped` ledger rows are expected to be missing."""
    report = run_checks(spark, config, ledgers)
    bronze = report["bronze"]
    silver = report.get("silver", {}).values()
    gold = report.get("gold", {}).values()
    missing = bronze["missing"] - skipped
    violations = [v for v in report["violations"] if not v.startswith("Bronze") or missing]
    return Tally(
        ledger_rows=bronze["ledger_rows"],
        lost=abs(missing) + sum(s["missing"] for s in silver),
        duplicated=bronze["duplicated"] + sum(s["repeated"] for s in silver),
        unexpected=bronze["unexpected"]
        + bronze["unerased"]
        + sum(s["unexpected"] + s["unnamed"] for s in silver),
        gold_wrong=sum(g["missing"] + g["unexpected"] for g in gold),
        skipped=skipped,
        violations=violations,
    )


@dataclass(frozen=True)
class Proof:
    """One oracle against one injected fault: what it reported."""

    oracle: str
    fault: str
    table: str
    found: dict[str, int]

    @property
    def failed(self) -> bool:
        """The oracle failed, as it must, and named exactly the two rows: one of each count."""
        return bool(self.found) and all(n == 1 for n in self.found.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


def prove(spark: SparkSession, config: Config, ledgers: list[Path], skipped: int) -> list[Proof]:
    """In Bronze, Silver and Gold in turn, drop one row and double another; run the oracle that
    owns the table, then restore the table to its version before."""
    entity = "telemetry"
    bronze = config.table_path("bronze", entity)
    silver = config.table_path("silver", entity)
    gold = config.table_path("gold", "demand_by_zone_hour")

    def ledger() -> dict[str, int]:
        found = check_bronze(spark, config, ledgers)
        return {"missing": found.missing - skipped, "duplicated": found.duplicated}

    def books() -> dict[str, int]:
        found = check_silver(spark, config, entity)
        return {"missing": found.missing, "repeated": found.repeated}

    def recomputation() -> dict[str, int]:
        found = check_gold(spark, config, "demand_by_zone_hour")
        return {"missing": found.missing, "unexpected": found.unexpected}

    cases: list[tuple[str, str, Callable[[], dict[str, int]], list[str]]] = [
        ("ledger == Bronze", bronze, ledger, COORDS),
        ("Silver's books", silver, books, COORDS),
        ("Gold == recomputation", gold, recomputation, list(DEMAND_KEYS)),
    ]
    from streaming.spark import row_reader

    proofs = []
    # A fault is injected by rewriting a file of the table: Bronze's raw payloads (some of ten
    # megabytes, after `messy`) are read row by row.
    with row_reader(spark):
        for oracle, path, check, keys in cases:
            found = _injected(spark, path, keys, check)
            layer, name = path.rstrip("/").rsplit("/", 2)[-2:]
            proofs.append(Proof(oracle, "a dropped and a doubled row", f"{layer}.{name}", found))
    return proofs


def _injected(
    spark: SparkSession, path: str, keys: list[str], check: Callable[[], dict[str, int]]
) -> dict[str, int]:
    """The table's first row (in key order) deleted and its second appended again."""
    from delta.tables import DeltaTable

    table = DeltaTable.forPath(spark, path)
    version = int(table.history(1).first()["version"])  # type: ignore[index]
    # The two rows held before the table changes (one sort of the table; raw payloads stay in
    # Spark, not in this process).
    two: DataFrame = spark.read.format("delta").load(path).orderBy(*keys).limit(2).localCheckpoint()
    first, second = two.orderBy(*keys).limit(1), two.orderBy(*keys).offset(1)
    try:
        match = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        table.alias("t").merge(first.alias("s"), match).whenMatchedDelete().execute()
        second.write.format("delta").mode("append").save(path)
        return check()
    finally:
        table.restoreToVersion(version)
