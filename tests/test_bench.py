"""The benchmark harness: its arithmetic and flags alone, then `--quick` end to end on the real
broker and Spark, checking that every step ran over the whole corpus and the results exist."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from streaming.bench.freshness import Commit, LagSample, freshness, lag_trend, percentile
from streaming.bench.options import add_arguments, options_from_args, parse_rates
from streaming.bench.rates import parse_metrics
from streaming.errors import ConfigError
from streaming.kafka.admin import cluster_metadata
from tests.builders import lakehouse
from tests.conftest import Lake

DRAIN_STEPS = ["raw", "kafka_noop", "bronze", "bronze_silver", "bronze_silver_gold"]


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_defaults_and_overrides() -> None:
    quick = options_from_args(_options("--quick"))
    assert (quick.events, quick.rates, quick.rate_seconds) == (20_000, (2_000,), 20)
    assert quick.drain_mode == "chained"
    assert quick.rate_pipelines == ("all", "bronze")
    alone = options_from_args(_options("--quick", "--rate-pipelines", "bronze"))
    assert alone.rate_pipelines == ("bronze",)
    full = options_from_args(_options("--events", "500000", "--rates", "25k,10000"))
    assert (full.events, full.rates, full.drain_mode) == (500_000, (10_000, 25_000), "separate")
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


def test_parse_metrics_sums_bronze_partitions_and_reads_gold() -> None:
    text = "\n".join(
        [
            "# TYPE lakehouse_kafka_committed_offset gauge",
            'lakehouse_kafka_committed_offset{partition="0",query="bronze.telemetry",topic="p.telemetry"} 10.0',  # noqa: E501
            'lakehouse_kafka_committed_offset{partition="1",query="bronze.telemetry",topic="p.telemetry"} 5.0',  # noqa: E501
            'lakehouse_kafka_committed_offset{partition="0",query="bronze.bookings",topic="p.bookings"} 7.0',  # noqa: E501
            "# TYPE lakehouse_newest_committed_kafka_timestamp_seconds gauge",
            'lakehouse_newest_committed_kafka_timestamp_seconds{query="gold.battery_health_metrics_weekly"} 1.5e9',  # noqa: E501
            'lakehouse_newest_committed_kafka_timestamp_seconds{query="bronze.telemetry"} 1.6e9',
        ]
    )
    committed, gold = parse_metrics(text + "\n", "p.telemetry")
    assert committed == 15
    assert gold == {"gold.battery_health_metrics_weekly": 1.5e9}
    assert parse_metrics("", "p.telemetry") == (None, {})


@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_quick_bench_measures_every_step_and_writes_results(lake: Lake, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = lakehouse(
        "bench", "--quick", "--out", str(out), "--work", str(tmp_path / "work"),
        env=lake.process_env(), timeout=2300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "results.json").read_text())

    corpus = result["corpus"]
    assert corpus["events"] == 20_000
    assert corpus["payload_bytes"] > 20_000 * 100
    assert [step["step"] for step in result["drain"]] == DRAIN_STEPS
    for step in result["drain"]:
        name = step["step"]
        assert step["complete"], (name, step["rows"])
        assert step["events_per_s"] > 0, name
        assert step["events_per_s_processing"] > 0, name
        assert step["mb_per_s"] > 0, name
        assert step["cpu_s_per_million_events"] > 0, name
        assert step["ratio_to_raw"] > 0, name
        assert step["peak_rss_mb"]["python"] > 0, name
        if name != "raw":
            assert step["peak_rss_mb"]["jvm"] > 0, name
            assert step["startup_s"] > 0, name
    gold_rows = result["drain"][-1]["rows"]
    assert gold_rows["bronze.telemetry"] == gold_rows["silver.telemetry"] == 20_000
    assert gold_rows["gold.battery_health_metrics_weekly"] > 0

    chain, alone = result["rates"]
    assert (chain["pipeline"], alone["pipeline"]) == ("all", "bronze")
    for rate in (chain, alone):
        assert rate["rate"] == 2_000
        assert rate["acked"] == rate["events"] == 40_000
        assert rate["failed"] == 0
        assert rate["achieved_rate"] > 1_000
        assert rate["lag_samples"]
        assert rate["lag_flat"] in (True, False, None)
        assert rate["pipeline_cpu_s"] > 0
    for layer in ("bronze", "silver", "gold"):
        figures = chain["freshness"][layer]
        assert figures["commits"] > 0, (layer, chain["freshness"])
        assert figures["p50_s"] > 0, (layer, figures)
    assert alone["freshness"]["bronze"]["commits"] > 0, alone["freshness"]
    assert alone["freshness"]["silver"]["commits"] == alone["freshness"]["gold"]["commits"] == 0
    assert alone["caught_up"], "Bronze alone did not drain 2,000 events/s"
    assert set(result["headline"]) >= {
        "max_rate_flat_lag", "bronze_alone_max_rate_flat_lag",
        "bronze_alone_max_rate_p95_within_target",
    }  # fmt: skip
    environment = result["environment"]
    assert environment["versions"]["pyspark"] == "4.0.4"
    assert environment["machine"]["cores"] >= 1
    assert environment["settings"]["shuffle_partitions"] == 2

    markdown = (out / "results.md").read_text()
    assert "## Drain ladder" in markdown and "## Rate ladder" in markdown
    assert "| `run all` | 2,000 |" in markdown and "| `run bronze` | 2,000 |" in markdown
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results.md" in done.stdout

    left = [t for t in cluster_metadata(lake.config.kafka).topics if "bench-" in t]
    assert not [t for t in left if t.startswith(lake.prefix)], left
    assert not list((tmp_path / "work").iterdir()), "the throw-away lakes were not removed"
