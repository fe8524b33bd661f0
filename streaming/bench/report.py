"""Where the figures go: results.json, results.md and chart.png, plus what they were measured on
(versions, the settings that shape throughput, the machine)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from streaming.bench import memory
from streaming.bench.ladder import MIN_RECORDS, MIN_WINDOW_S
from streaming.config import Config
from streaming.errors import SetupError

JSON_FILE, MARKDOWN_FILE, CHART_FILE = "results.json", "results.md", "chart.png"


def environment(config: Config) -> dict[str, Any]:
    return {"versions": versions(config), "settings": settings(config), "machine": machine()}


def versions(config: Config) -> dict[str, str | None]:
    import confluent_kafka

    spark_jars, kafka_jars = config.jars_dir / "spark", config.jars_dir / "kafka"
    return {
        "python": platform.python_version(),
        "pyspark": _package("pyspark"),
        "delta_spark": _package("delta-spark"),
        "delta_jar": _jar_version(spark_jars, "delta-spark_"),
        "spark_kafka_connector": _jar_version(spark_jars, "spark-sql-kafka-0-10_"),
        "kafka_clients_in_spark": _jar_version(spark_jars, "kafka-clients-"),
        "kafka_broker": _jar_version(kafka_jars, "kafka_2.13-"),  # what `lakehouse kafka` runs
        "confluent_kafka": _package("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "deltalake": _package("deltalake"),
        "java": _java_version(),
    }


def settings(config: Config) -> dict[str, Any]:
    from streaming.pipeline import MAX_BYTES_PER_TRIGGER

    return {
        "spark_master": config.spark.master,
        "driver_memory": config.spark.driver_memory,
        "shuffle_partitions": config.spark.shuffle_partitions,
        "trigger_interval": config.stream.trigger_interval,
        "max_offsets_per_trigger": config.stream.max_offsets_per_trigger,
        "max_files_per_trigger": config.stream.max_files_per_trigger,
        "refine_max_bytes_per_trigger": MAX_BYTES_PER_TRIGGER,
        "telemetry_partitions": config.topic("telemetry").partitions,
        "kafka_bootstrap_servers": config.kafka.bootstrap_servers,
        "spark_conf_overrides": dict(config.spark.extra),
    }


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gib": _meminfo_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write(out: Path, result: dict[str, Any]) -> list[Path]:
    """Write the three result files; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / JSON_FILE, out / MARKDOWN_FILE, out / CHART_FILE
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path.write_text(markdown(result))
    chart(result, png_path)
    return [json_path, md_path, png_path]


BRONZE_P95_TARGET_S = 6.0


def headline(rates: list[dict[str, Any]]) -> dict[str, int | None]:
    """The highest rates held: by the whole chain (flat lag; and Gold caught up), and by Bronze
    alone (flat lag; and freshness p95 within Bronze's target)."""
    chain = [r for r in rates if r["pipeline"] == "all"]
    alone = [r for r in rates if r["pipeline"] == "bronze"]

    def best(rungs: list[dict[str, Any]], also: Any = lambda r: True) -> int | None:
        held = [r["rate"] for r in rungs if r["lag_flat"] and also(r)]
        return max(held) if held else None

    def within_target(r: dict[str, Any]) -> bool:
        p95 = r["freshness"]["bronze"]["p95_s"]
        return p95 is not None and p95 <= BRONZE_P95_TARGET_S

    return {
        "max_rate_flat_lag": best(chain),
        "max_rate_flat_lag_and_gold_caught_up": best(chain, lambda r: r["caught_up"]),
        "bronze_alone_max_rate_flat_lag": best(alone),
        "bronze_alone_max_rate_p95_within_target": best(alone, within_target),
    }


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    m, v, s = env["machine"], env["versions"], env["settings"]
    lines = [
        f"# Lakehouse benchmark {result['started']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"load average at start {m['load_average_at_start']}.  ",
        f"Versions: pyspark {v['pyspark']}, Delta {v['delta_jar']}, Kafka broker "
        f"{v['kafka_broker']}, Spark Kafka client {v['kafka_clients_in_spark']}, "
        f"confluent-kafka {v['confluent_kafka']} (librdkafka {v['librdkafka']}), "
        f"{v['java']}.  ",
        f"Settings: master {s['spark_master']}, driver memory {s['driver_memory']}, shuffle "
        f"partitions {s['shuffle_partitions']}, trigger {s['trigger_interval']}, max offsets "
        f"per trigger {s['max_offsets_per_trigger']}, telemetry partitions "
        f"{s['telemetry_partitions']}.",
        "",
    ]
    if "drain" in result:
        lines += _drain_table(result)
    if "rates" in result:
        lines += _rates_table(result)
    if "error" in result:
        lines += [f"**Stopped early:** {result['error']}", ""]
    return "\n".join(lines)


def _drain_table(result: dict[str, Any]) -> list[str]:
    corpus = result["corpus"]
    lines = [
        f"## Drain ladder: {corpus['events']:,} telemetry events, "
        f"{corpus['payload_bytes'] / 1e6:,.1f} MB of JSON ({result['options']['drain_mode']})",
        "",
        "| step | wall s | events/s | MB/s | x raw | events/s excl. start-up | x raw | "
        "CPU s / M events | peak RSS Python / JVM MB | whole corpus |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for step in result["drain"]:
        rss = step["peak_rss_mb"]
        wall, processing = step["wall_s"], step["processing_s"]
        lines.append(
            f"| {step['label']} | {wall:.1f} | {_rate(step['events_per_s'], wall)} "
            f"| {_rate(step['mb_per_s'], wall, 2)} | {_n(step['ratio_to_raw'], 3)} "
            f"| {_rate(step['events_per_s_processing'], processing)} "
            f"| {_n(step['ratio_to_raw_processing'], 3)} "
            f"| {step['cpu_s_per_million_events']:,.0f} "
            f"| {_n(rss.get('python'))} / {_n(rss.get('jvm'))} "
            f"| {'yes' if step['complete'] else 'NO'} |"
        )
    lines += [
        "",
        "Wall time includes the JVM start and table creation; *excl. start-up* is the "
        "processing window from the first batch's start to the last batch's end. "
        "MB are 10^6 bytes of message value. *too short*: a window under "
        f"{MIN_WINDOW_S:.0f} s or with fewer than {MIN_RECORDS} events gives no rate.",
        "",
        *_layer_lines(result["drain"]),
    ]
    return lines


def _layer_lines(drain: list[dict[str, Any]]) -> list[str]:
    """Where a pipeline step's batches spent their time, layer by layer."""
    lines = []
    for step in drain:
        if step.get("layer_s"):
            layers = ", ".join(f"{k.title()} {s:,.1f} s" for k, s in step["layer_s"].items())
            lines.append(
                f"- {step['label']}: {layers} over {step['batches']} batch(es), in a "
                f"processing window of {_n(step['processing_s'], 1)} s (the rest: reading "
                "and holding each batch)."
            )
    return [*lines, ""] if lines else []


def _rate(value: float | None, seconds: float | None, digits: int = 0) -> str:
    """A rate, or why there is none: its window was too short, or there was no window."""
    if value is None and seconds is not None:
        return "too short"
    return _n(value, digits)


def _heap(summary: dict[str, Any] | None) -> str:
    """`first -> last (verdict)` of the JVM's live heap over a step."""
    heaps = [s["live_heap_mb"] for s in (summary or {}).get("samples", ()) if s["live_heap_mb"]]
    if not heaps:
        return "-"
    return f"{heaps[0]:,.0f} → {heaps[-1]:,.0f} ({summary['verdict']})"  # type: ignore[index]


def _rates_table(result: dict[str, Any]) -> list[str]:
    seconds = result["options"]["rate_seconds"]
    lines = [
        f"## Rate ladder: {seconds} s per rate",
        "",
        "| pipeline | offered /s | achieved /s | Kafka lag | lag growth | max lag s "
        "| Bronze p50 / p95 s | Silver p50 / p95 s | Gold p50 / p95 s | drained after s "
        "| pipeline CPU cores | JVM live heap MB |",
        "|---|--:|--:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["rates"]:
        f, lag = r["freshness"], r["kafka_lag"]
        lines.append(
            f"| `run {r['pipeline']}` | {r['rate']:,} | {_n(r['achieved_rate'])} "
            f"| {lag_word(r['lag_flat'])} "
            f"| {_n(lag.get('growth'), 3)} | {_n(lag.get('max_lag_seconds'), 1)} "
            f"| {_pair(f['bronze'])} | {_pair(f['silver'])} | {_pair(f['gold'])} "
            f"| {_n(r['drain_s'], 0) if r['caught_up'] else 'not drained'} "
            f"| {_n(r['pipeline_cpu_cores'], 2)} | {_heap(r.get('memory'))} |"
        )
    head = result.get("headline", {})
    kinds = {r["pipeline"] for r in result["rates"]}
    lines.append("")
    for kind, what, flat_key, also_key, also in (
        ("all", "Whole chain", "max_rate_flat_lag", "max_rate_flat_lag_and_gold_caught_up",
         "Gold caught up within the drain allowance"),
        ("bronze", "Bronze alone", "bronze_alone_max_rate_flat_lag",
         "bronze_alone_max_rate_p95_within_target",
         f"Bronze freshness p95 within {BRONZE_P95_TARGET_S:.0f} s"),
    ):  # fmt: skip
        if kind in kinds:
            lines.append(
                f"**{what} (`run {kind}`): highest rate held with flat Kafka lag: "
                f"{_rate_or_none(head.get(flat_key))}.** With flat lag and {also}: "
                f"{_rate_or_none(head.get(also_key))}.  "
            )
    lines += [
        "",
        "Each rate runs after a one-second warm-up burst has gone through the pipeline's last "
        "layer. Freshness: per Delta commit (its timestamp in the table's `_delta_log`) of "
        "Bronze's and Silver's telemetry tables and of the Gold tables, the commit timestamp "
        "minus the newest Kafka timestamp visible in the table (Gold: the newest "
        "`last_event_time`, mapped to when that event was sent). Lag growth: slope of the "
        "pipeline's Kafka lag right after each commit while sending, as a share of the offered "
        "rate (flat below 0.05; undetermined with fewer than three commits). Where a layer has "
        "not drained, its freshness covers only the commits seen and understates the real "
        "staleness. JVM live heap: what a forced full collection leaves on the heap, at "
        "the first and last of about ten readings while sending; level when it grew by at most "
        f"{memory.LEVEL_MB:.0f} MB or {memory.LEVEL_FRACTION:.0%} after the first third of a "
        f"step of at least {memory.MIN_VERDICT_S:.0f} s.",
        "",
    ]
    return lines


def chart(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SetupError(
            "matplotlib is not installed",
            hint="install the tools extra: pip install 'lakehouse[tools]' (make setup does)",
        ) from None
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    _throughput_bars(left, result.get("drain"))
    _freshness_lines(right, result.get("rates"))
    figure.suptitle(f"lakehouse bench {result['started']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput_bars(axis: Any, drain: list[dict[str, Any]] | None) -> None:
    if not drain:
        axis.text(0.5, 0.5, "no drain ladder", ha="center", va="center")
        axis.set_axis_off()
        return
    labels = [
        step["label"].replace(" (confluent-kafka)", "").replace(" -> ", "\n-> ") for step in drain
    ]
    xs = range(len(drain))
    width = 0.4
    wall = [step["events_per_s"] or 0 for step in drain]
    steady = [step["events_per_s_processing"] or 0 for step in drain]
    bars = axis.bar([x - width / 2 for x in xs], wall, width, label="incl. start-up")
    steady_bars = axis.bar([x + width / 2 for x in xs], steady, width, label="excl. start-up")
    axis.bar_label(bars, labels=[f"{v:,.0f}" if v else "too short" for v in wall], fontsize=7)
    axis.bar_label(
        steady_bars, labels=[f"{v:,.0f}" if v else "too short" for v in steady], fontsize=7
    )
    axis.set_yscale("log")
    axis.set_xticks(list(xs), labels, fontsize=8)
    axis.set_ylabel("events / s (log)")
    axis.set_title("Drain ladder: throughput per step")
    axis.legend(fontsize=8)


def _freshness_lines(axis: Any, rates: list[dict[str, Any]] | None) -> None:
    if not rates:
        axis.text(0.5, 0.5, "no rate ladder", ha="center", va="center")
        axis.set_axis_off()
        return
    lines = (
        ("all", "bronze", "tab:brown", "bronze"),
        ("all", "silver", "tab:gray", "silver"),
        ("all", "gold", "goldenrod", "gold"),
        ("bronze", "bronze", "tab:blue", "bronze alone"),
    )
    for kind, layer, colour, label in lines:
        rungs = [r for r in rates if r["pipeline"] == kind]
        if not rungs:
            continue
        xs = [r["rate"] for r in rungs]
        for stat, style in (("p50_s", "-"), ("p95_s", "--")):
            ys = [r["freshness"][layer][stat] for r in rungs]
            axis.plot(xs, [y if y is not None else float("nan") for y in ys], style,
                      marker="o", color=colour, label=f"{label} {stat[:3]}")  # fmt: skip
    for r in rates:
        if r["lag_flat"] is False and r["pipeline"] == "all":
            axis.axvline(r["rate"], color="red", alpha=0.2, linewidth=6)
    axis.set_xlabel("offered events / s (red: the whole chain's Kafka lag grows)")
    axis.set_yscale("log")
    axis.set_ylabel("freshness at commit, s (log)")
    axis.set_title("Rate ladder: freshness vs rate")
    axis.legend(fontsize=7, ncol=4)
    axis.grid(alpha=0.3)


def _rate_or_none(rate: int | None) -> str:
    return f"{rate:,} events/s" if rate else "none of the rates tried"


def lag_word(flat: bool | None) -> str:
    return "undetermined" if flat is None else "flat" if flat else "GROWS"


def _pair(summary: dict[str, Any]) -> str:
    return f"{_n(summary['p50_s'], 1)} / {_n(summary['p95_s'], 1)}"


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _jar_version(folder: Path, prefix: str) -> str | None:
    for jar in sorted(folder.glob(f"{prefix}*.jar")):
        return jar.stem.rsplit("-", 1)[-1]
    return None


def _java_version() -> str | None:
    try:
        done = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stderr.strip().splitlines()
    return lines[0].strip() if lines else None


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
