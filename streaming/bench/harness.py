"""Runs the whole benchmark: checks, corpus, drain ladder, rate ladder, results.

Everything a user can get wrong (flags, the output folder, the broker, the jars) is checked before
the first message is rendered. The throw-away lakes and topics are removed at the end, also when a
step fails; the figures gathered until then are still written, with the error.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streaming import jars
from streaming.bench import report
from streaming.bench.corpus import preload
from streaming.bench.ladder import ChainedApp, per_s, run_drain
from streaming.bench.options import BenchOptions, options_from_args
from streaming.bench.pipeline import Run
from streaming.bench.rates import run_rate
from streaming.bench.workspace import Lake, Workspace
from streaming.config import Config
from streaming.errors import LakehouseError
from streaming.kafka.admin import cluster_metadata, create_topics
from streaming.runner import require_writable

log = logging.getLogger(__name__)


def bench(config: Config, args: argparse.Namespace) -> int:
    """The `lakehouse bench` handler: run, write the results, print the Markdown summary."""
    options = options_from_args(args)
    run_bench(config, options, getattr(args, "config", None))
    print((options.out / report.MARKDOWN_FILE).read_text())
    print(f"results in {options.out}/ ({report.JSON_FILE}, {report.MARKDOWN_FILE}, "
          f"{report.CHART_FILE})")  # fmt: skip
    return 0


def run_bench(
    config: Config, options: BenchOptions, config_file: Path | None = None
) -> dict[str, Any]:
    """Run the ladders the options ask for and write results.json, results.md and chart.png."""
    cluster_metadata(config.kafka)  # one clear line if the brokers cannot be reached
    jars.require(config.jars_dir, "spark")
    require_writable("--out", options.out)
    started = time.monotonic()
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": _options_dict(options),
        "environment": report.environment(config),
    }
    logs = options.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(config, config_file, options.work, options.keep)
    try:
        _ladders(workspace, options, logs, result)
    except LakehouseError as exc:
        result["error"] = str(exc)
        raise
    finally:
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        report.write(options.out, result)
        workspace.close()
    return result


def _ladders(
    workspace: Workspace, options: BenchOptions, logs: Path, result: dict[str, Any]
) -> None:
    """The drain ladder, then the rate ladder: the whole chain on the chained application if
    there is one, else on a fresh `lakehouse run all` per rate; Bronze alone always on a fresh
    `lakehouse run bronze`, with nothing else running."""
    kinds = options.rate_pipelines if "rates" in options.ladders else ()
    if "drain" not in options.ladders:
        _rate_ladder(workspace, options, logs, result, kinds)
        return
    corpus = _preload(workspace, options, result)
    payload = int(result["corpus"]["payload_bytes"])
    if options.drain_mode != "chained":
        result["drain"] = run_drain(workspace, corpus, options.events, payload, logs)
        _rate_ladder(workspace, options, logs, result, kinds)
        return
    lake = workspace.lake("drain-chain", topics_of=corpus)
    chain_rates = "all" in kinds
    with ChainedApp(lake, options.events, logs / "drain-chain.log", stream=chain_rates) as app:
        result["drain"] = run_drain(workspace, corpus, options.events, payload, logs, app)
        if chain_rates:
            _rate_ladder(workspace, options, logs, result, ("all",), app)
    _rate_ladder(workspace, options, logs, result, tuple(k for k in kinds if k != "all"))


def _preload(workspace: Workspace, options: BenchOptions, result: dict[str, Any]) -> Lake:
    lake = workspace.lake("drain")
    create_topics(lake.config)
    log.info("preloading %d telemetry events into %s", options.events, lake.config.topic_prefix)
    corpus = preload(lake.config, options.events, options.seed)
    result["corpus"] = {
        "events": corpus.events,
        "payload_bytes": corpus.payload_bytes,
        "topic": corpus.topic,
        "render_s": corpus.render_s,
        "produce_s": corpus.produce_s,
        "produce_events_per_s": per_s(corpus.events, corpus.produce_s, corpus.events),
    }
    return lake


def _rate_ladder(
    workspace: Workspace,
    options: BenchOptions,
    logs: Path,
    result: dict[str, Any],
    kinds: tuple[str, ...],
    shared: ChainedApp | None = None,
) -> None:
    """One rung per pipeline kind and rate, each on a fresh pipeline unless one is shared (then
    one rate after the other on it, each with its own seed so no event repeats an earlier one)."""
    if not kinds:
        return
    rungs = result.setdefault("rates", [])
    for kind in kinds:
        for index, rate in enumerate(options.rates):
            seed = options.seed + 1 + index
            log.info("rate ladder (%s): %d events/s for %d s", kind, rate, options.rate_seconds)
            if shared is not None:
                shared.wait_ready(since=time.monotonic())
                outcome = run_rate(shared, rate, options.rate_seconds, seed)
            else:
                lake = workspace.lake(f"rate-{kind}-{rate}")
                create_topics(lake.config)
                with Run(lake, logs / f"rate-{kind}-{rate}.log", kind) as pipeline:
                    pipeline.wait_ready()
                    outcome = run_rate(pipeline, rate, options.rate_seconds, seed)
                workspace.discard(lake)
            rungs.append(outcome)
            result["headline"] = report.headline(rungs)


def _options_dict(options: BenchOptions) -> dict[str, Any]:
    return {
        "events": options.events,
        "rates": list(options.rates),
        "rate_seconds": options.rate_seconds,
        "ladders": list(options.ladders),
        "rate_pipelines": list(options.rate_pipelines),
        "drain_mode": options.drain_mode,
        "seed": options.seed,
        "quick": options.quick,
        "out": str(options.out),
    }
