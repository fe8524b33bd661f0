"""The benchmark harness: its arithmetic and flags alone, then `--quick` end to end on the real
broker and Spark, checking that every step ran over the whole corpus and the results exist."""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from streaming.bench import memory, report
from streaming.bench.corpus import CHUNKS_PER_SECOND, CYCLE_SECONDS, render_schedule
from streaming.bench.freshness import Commit, LagSample, freshness, lag_trend, percentile
from streaming.bench.ladder import MIN_WINDOW_S, STEPS, add_ratios, compose, per_s
from streaming.bench.options import add_arguments, options_from_args, parse_rates
from streaming.bench.procfs import kind_of, process_tree
from streaming.bench.rates import parse_metrics
from streaming.bench.steps import layer_figures
from streaming.errors import ConfigError
from streaming.gold.writer import GoldSummary
from streaming.kafka.admin import cluster_metadata
from streaming.pipeline import BatchReport
from streaming.silver.writer import SilverBooks
from tests.builders import lakehouse
from tests.conftest import Lake

DRAIN_STEPS = ["raw", "kafka_noop", "bronze", "all"]


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_defaults_and_overrides() -> None:
    quick = options_from_args(_options("--quick"))
    assert (quick.events, quick.rates, quick.rate_seconds) == (5_000, (1_000,), 10)
    assert quick.drain_mode == "chained"
    assert quick.rate_pipelines == ("all",)
    alone = options_from_args(_options("--quick", "--rate-pipelines", "bronze"))
    assert alone.rate_pipelines == ("bronze",)
    both = options_from_args(_options("--quick", "--rate-pipelines", "all,bronze"))
    assert both.rate_pipelines == ("all", "bronze")
    full = options_from_args(_options("--events", "500000", "--rates", "25k,10000"))
    assert (full.events, full.rates, full.drain_mode) == (500_000, (10_000, 25_000), "separate")
    assert full.rate_pipelines == ("all", "bronze")
    assert full.out.parent == Path("bench-results")


@pytest.mark.parametrize(
    "argv",
    [
        ("--rates", "10000,abc"),
        ("--rates", "0"),
        ("--events", "10"),
        ("--rate-seconds", "2"),
        ("--ladders", "drain,everything"),
        ("--rate-pipelines", "silver"),
        ("--rate-pipelines", ","),
    ],
)
def test_impossible_flags_are_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        options_from_args(_options(*argv))


def test_a_bad_flag_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = lakehouse(
        "bench", "--rates", "fast", "--out", str(tmp_path), env=dict(os.environ), timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --rates must be whole numbers of events per second, got 'fast' — "
        "e.g. --rates 10000,25000 or --rates 10k,25k"
    ]


def test_parse_rates_sorts_and_dedups() -> None:
    assert parse_rates("75k, 10000,10_000,2.5k") == (2_500, 10_000, 75_000)


def _sawtooth(rate: float, keep_up: float, seconds: int, trigger: int = 5) -> list[LagSample]:
    """One sample a second; a commit every `trigger` s, each taking in at most `keep_up` times
    what arrived since the previous one (a pipeline processing `keep_up * rate` events/s)."""
    samples, committed = [], 0
    for t in range(seconds):
        end = int(rate * t)
        if t and t % trigger == 0:
            committed = min(end, committed + int(keep_up * rate * trigger))
        samples.append(LagSample(float(t), end, committed))
    return samples


def test_lag_that_keeps_up_is_flat_and_lag_that_falls_behind_grows() -> None:
    assert lag_trend(_sawtooth(10_000, 1.0, 60), 10_000, 0, 60)["flat"] is True
    behind = lag_trend(_sawtooth(10_000, 0.6, 60), 10_000, 0, 60)
    assert behind["flat"] is False
    assert behind["growth"] > 0.05


def test_lag_with_too_few_commits_is_undetermined_and_without_any_grows() -> None:
    assert lag_trend(_sawtooth(2_000, 1.0, 12), 2_000, 0, 12)["flat"] is None
    never = [LagSample(float(t), 2_000 * t, 0) for t in range(20)]
    assert lag_trend(never, 2_000, 0, 20)["flat"] is False


def test_freshness_and_percentiles() -> None:
    commits = [Commit(1, 110.0, 100.0), Commit(2, 125.5, 120.0)]
    assert freshness(commits) == [10.0, 5.5]
    assert freshness(commits, lambda t: t + 1.0) == [9.0, 4.5]
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == 4.8
    assert percentile([], 50) is None


def test_parse_metrics_sums_the_pipelines_partitions_of_the_topic_and_reads_gold() -> None:
    text = "\n".join(
        [
            "# TYPE lakehouse_kafka_committed_offset gauge",
            'lakehouse_kafka_committed_offset{partition="0",query="pipeline.all",topic="p.telemetry"} 10.0',  # noqa: E501
            'lakehouse_kafka_committed_offset{partition="1",query="pipeline.all",topic="p.telemetry"} 5.0',  # noqa: E501
            'lakehouse_kafka_committed_offset{partition="0",query="pipeline.all",topic="p.bookings"} 7.0',  # noqa: E501
            'lakehouse_kafka_committed_offset{partition="0",query="pipeline.bronze",topic="p.telemetry"} 3.0',  # noqa: E501
            "# TYPE lakehouse_newest_committed_kafka_timestamp_seconds gauge",
            'lakehouse_newest_committed_kafka_timestamp_seconds{query="gold.battery_health_metrics_weekly"} 1.5e9',  # noqa: E501
            'lakehouse_newest_committed_kafka_timestamp_seconds{query="bronze.telemetry"} 1.6e9',
        ]
    )
    committed, gold = parse_metrics(text + "\n", "p.telemetry", "pipeline.all")
    assert committed == 15
    assert gold == {"gold.battery_health_metrics_weekly": 1.5e9}
    assert parse_metrics(text + "\n", "p.telemetry", "pipeline.bronze")[0] == 3
    assert parse_metrics("", "p.telemetry", "pipeline.all") == (None, {})


def _phase(name: str, wall: float, window: list[float] | None, rows: dict[str, int]) -> Any:
    return {"name": name, "wall_s": wall, "cpu_s": 1.0, "peak_rss_mb": {"python": 50.0},
            "window": window, "rows": rows}  # fmt: skip


def test_a_rate_over_a_window_too_short_is_none_and_says_so_in_markdown() -> None:
    raw = compose(
        STEPS[0], {"phases": [_phase("raw", 0.4, [100.0, 100.003], {"raw.telemetry": 5_000})]},
        5_000, 2_000_000,
    )  # fmt: skip
    noop_phases = [
        _phase("startup", 8.0, None, {}),
        _phase("noop", 4.0, [200.0, 202.5], {"bench.noop": 5_000}),
    ]
    noop = compose(STEPS[1], {"phases": noop_phases}, 5_000, 2_000_000)
    add_ratios({"raw": raw, "kafka_noop": noop})
    assert raw["complete"] and noop["complete"]
    assert raw["processing_s"] == 0.003 < MIN_WINDOW_S
    for key in ("events_per_s", "events_per_s_processing", "mb_per_s", "mb_per_s_processing"):
        assert raw[key] is None, key
    assert (noop["events_per_s"], noop["events_per_s_processing"]) == (416.7, 2_000.0)
    assert (noop["mb_per_s"], noop["mb_per_s_processing"]) == (0.17, 0.8)
    assert noop["ratio_to_raw"] is noop["ratio_to_raw_processing"] is None
    assert per_s(5, 10.0, 5) is None and per_s(50, 10.0, 50) == 5.0
    anything: Any = defaultdict(str)
    result = {
        "started": "now", "environment": {"machine": anything, "versions": anything,
        "settings": anything}, "options": {"drain_mode": "chained"},
        "corpus": {"events": 5_000, "payload_bytes": 2_000_000}, "drain": [raw, noop],
    }  # fmt: skip
    lines = report.markdown(result).splitlines()
    raw_row, noop_row = lines[lines.index("|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|") + 1 :][:2]
    assert raw_row.startswith("| raw consume (confluent-kafka) | 0.4 | too short | too short |")
    assert "| too short | - |" in raw_row
    assert noop_row.startswith("| Spark Kafka source -> noop | 12.0 | 417 | 0.17 | - | 2,000 | - |")


def test_a_step_longer_than_one_cycle_sends_new_event_ids_and_times_at_the_exact_rate() -> None:
    rate, seconds = 40, CYCLE_SECONDS * 2 + 7
    schedule = render_schedule(rate, seconds, seed=3)
    assert len(schedule.rendered) == (1 + CYCLE_SECONDS) * CHUNKS_PER_SECOND
    assert schedule.total == (1 + seconds) * CHUNKS_PER_SECOND
    assert schedule.events == rate * seconds
    ids, sent = set(), 0
    for j in range(schedule.warmup, schedule.total):
        chunk = schedule.chunk(j)
        sent += len(chunk)
        stamp = schedule.anchor.timestamp() + j / CHUNKS_PER_SECOND
        for key, value in chunk:
            event = json.loads(value)
            ids.add(event["event_id"])
            assert key == event["vehicle_id"].encode()
            moment = datetime.fromisoformat(event["timestamp"]).timestamp()
            assert abs(moment - stamp) < 0.001 and abs(schedule.event_time(j) - stamp) < 0.001
        if (j - schedule.warmup) % CHUNKS_PER_SECOND == CHUNKS_PER_SECOND - 1:
            assert sent == rate * ((j - schedule.warmup + 1) // CHUNKS_PER_SECOND), j
    assert sent == len(ids) == rate * seconds


def _samples(heaps: list[float | None]) -> list[memory.MemorySample]:
    return [memory.MemorySample(100.0 + 60 * i, h, {"jvm": 900.0}) for i, h in enumerate(heaps)]


def test_live_heap_that_levels_off_is_level_and_one_that_keeps_growing_grows() -> None:
    level = memory.summary(_samples([300, 700, 720, 690, 740, 710, 730]), 100.0)
    assert (level["verdict"], level["live_heap_growth_mb"]) == ("level", 10.0)
    growing = memory.summary(_samples([300, 500, 700, 900, 1100, 1300, 1500]), 100.0)
    assert (growing["verdict"], growing["live_heap_growth_mb"]) == ("grows", 800.0)
    assert memory.summary(_samples([300, None, 700]), 100.0)["verdict"] == "undetermined"
    short = [memory.MemorySample(100.0 + 5 * i, 300.0 * i, {}) for i in range(8)]
    assert memory.summary(short, 100.0)["verdict"] == "undetermined"
    assert level["samples"][1] == {"t": 60.0, "live_heap_mb": 700, "rss_mb": {"jvm": 900.0}}


def test_the_live_heap_of_a_real_jvm_grows_with_what_it_holds_and_not_with_garbage(
    spark: SparkSession,
) -> None:
    java = spark.sparkContext._jvm
    assert java is not None
    # Spark's own JVM: the suite's Kafka broker is a JVM child of this process too.
    jvm = int(java.java.lang.ProcessHandle.current().pid())
    assert jvm in [p.pid for p in process_tree(os.getpid()) if kind_of(p, os.getpid()) == "jvm"]
    before = _settled_heap_mb(spark, jvm)
    held = java.java.util.concurrent.atomic.AtomicReference()
    # 256 MiB held: the shared session may still free some tens of MiB of an earlier test's
    # state between the readings (a 128 MiB buffer once read as +104 MiB).
    held.set(java.java.nio.ByteBuffer.allocate(256 * 2**20))
    spark.range(200_000).selectExpr("repeat('x', 100) AS garbage").collect()
    during = memory.live_heap_mb(jvm)
    held.set(None)
    after = memory.live_heap_mb(jvm)
    assert during is not None and after is not None
    assert during - before > 200, (before, during)
    assert during - after > 230, (during, after)


def _settled_heap_mb(spark: SparkSession, jvm: int) -> float:
    """The live heap once two readings in a row agree, after the blocks that earlier tests in
    the suite's shared session left are released (Spark's context cleaner would release them
    in its own time, after a collection: once, during this test, 600 MiB of them)."""
    spark.catalog.clearCache()
    persisted = spark.sparkContext._jsc.getPersistentRDDs()
    for key in persisted.keySet().toArray():
        persisted.get(key).unpersist(True)  # blocking: gone before the first reading
    last = memory.live_heap_mb(jvm)
    for _ in range(5):
        now = memory.live_heap_mb(jvm)
        assert last is not None and now is not None
        if abs(now - last) < 8:
            return now
        last = now
    raise AssertionError(f"the live heap did not settle: last reading {last} MiB")


def test_layer_figures_add_up_each_layers_rows_and_seconds_over_batches() -> None:
    first = BatchReport(0, rows_in={"telemetry": 7, "trips": 2}, bronze_written=["telemetry"])
    first.silver = {"telemetry": SilverBooks(7, 4, 1, {"decode": 1, "late": 1}, {})}
    first.gold = {"fleet": GoldSummary(upserted=3, deleted=0, extended=0, newest=None, seconds=0.1)}
    first.seconds = {"bronze": 1.0, "silver": 2.0, "gold": 0.5}
    second = BatchReport(1, rows_in={"telemetry": 5}, bronze_written=["telemetry"])
    second.seconds = {"bronze": 0.25}
    figures = layer_figures([first, second])
    assert figures["rows"] == {"bronze.telemetry": 12, "silver.telemetry": 7, "gold.fleet": 3}
    assert figures["silver"] == {"telemetry": {"valid": 4, "duplicate": 1, "quarantined": 2}}
    assert figures["layer_s"] == {"bronze": 1.25, "silver": 2.0, "gold": 0.5}


def _check_rate(step: dict[str, Any], key: str, seconds: float | None) -> None:
    """A rate is events over its window where the window is long enough, else None."""
    if seconds is not None and seconds >= MIN_WINDOW_S:
        assert step[key] == round(step["events"] / seconds, 1) > 0, (step["step"], key)
    else:
        assert step[key] is None, (step["step"], key, seconds)


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.seconds(215)
def test_quick_bench_measures_every_step_and_writes_results(lake: Lake, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = lakehouse(
        "bench", "--quick", "--out", str(out), "--work", str(tmp_path / "work"),
        env=lake.process_env(), timeout=850,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "results.json").read_text())

    corpus = result["corpus"]
    assert corpus["events"] == 5_000
    assert corpus["payload_bytes"] > 5_000 * 100
    assert [step["step"] for step in result["drain"]] == DRAIN_STEPS
    for step in result["drain"]:
        name = step["step"]
        assert step["complete"], (name, step["rows"])
        _check_rate(step, "events_per_s", step["wall_s"])
        _check_rate(step, "events_per_s_processing", step["processing_s"])
        assert step["cpu_s_per_million_events"] > 0, name
        assert step["peak_rss_mb"]["python"] > 0, name
        if name != "raw":  # the JVM's start alone outlasts the shortest window
            assert step["events_per_s"] > 0 and step["mb_per_s"] > 0, name
            assert step["peak_rss_mb"]["jvm"] > 0, name
            assert step["startup_s"] > 0, name
    raw, _, bronze, chain = result["drain"]
    assert raw["ratio_to_raw"] == (1.0 if raw["events_per_s"] else None)
    assert bronze["rows"]["pipeline.bronze"] == bronze["rows"]["bronze.telemetry"] == 5_000
    assert "silver.telemetry" not in bronze["rows"] and set(bronze["layer_s"]) == {"bronze"}
    rows = chain["rows"]
    assert rows["pipeline.all"] == rows["bronze.telemetry"] == rows["silver.telemetry"] == 5_000
    assert rows["gold.battery_health_metrics_weekly"] > 0
    books = chain["silver"]["telemetry"]
    assert books["valid"] > 0 and sum(books.values()) == 5_000, books
    assert list(chain["layer_s"]) == ["bronze", "silver", "gold"], chain["layer_s"]
    assert all(s > 0 for s in chain["layer_s"].values()) and chain["batches"] >= 1
    assert sum(chain["layer_s"].values()) <= chain["processing_s"] + 0.5, chain

    [rate] = result["rates"]
    assert (rate["pipeline"], rate["rate"]) == ("all", 1_000)
    assert rate["acked"] == rate["events"] == 10_000
    assert rate["failed"] == 0
    assert rate["achieved_rate"] > 500
    assert rate["lag_samples"]
    assert rate["kafka_lag"]["max_lag_records"] > 0, rate["kafka_lag"]
    assert rate["pipeline_cpu_s"] > 0
    assert rate["caught_up"], "the chain did not drain 1,000 events/s"
    samples = rate["memory"]["samples"]  # 10 s: resident memory only, no heap pauses
    assert len(samples) >= 2 and all(s["rss_mb"]["jvm"] > 100 for s in samples), samples
    assert rate["memory"]["verdict"] == "undetermined", rate["memory"]
    for layer in ("bronze", "silver", "gold"):
        figures = rate["freshness"][layer]
        assert figures["commits"] > 0, (layer, rate["freshness"])
        assert figures["p50_s"] > 0, (layer, figures)
    assert result["headline"]["max_rate_flat_lag"] == (1_000 if rate["lag_flat"] else None)
    assert result["headline"]["bronze_alone_max_rate_flat_lag"] is None
    environment = result["environment"]
    assert environment["versions"]["pyspark"] == "4.0.4"
    assert environment["machine"]["cores"] >= 1
    assert environment["settings"]["shuffle_partitions"] == 2

    markdown = (out / "results.md").read_text()
    assert "## Drain ladder" in markdown and "## Rate ladder" in markdown
    assert "| run bronze (Kafka -> Bronze) |" in markdown
    assert "- run all (Kafka -> Bronze -> Silver -> Gold): Bronze " in markdown
    assert "| `run all` | 1,000 |" in markdown and "`run bronze`" not in markdown
    shown = ("events_per_s", "mb_per_s", "events_per_s_processing")
    no_rate = any(step[key] is None for step in result["drain"] for key in shown)
    assert ("| too short |" in markdown) == no_rate
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.md" in done.stdout

    left = [t for t in cluster_metadata(lake.config.kafka).topics if "bench-" in t]
    assert not [t for t in left if t.startswith(lake.prefix)], left
    assert not list((tmp_path / "work").iterdir()), "the throw-away lakes were not removed"
