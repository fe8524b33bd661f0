"""The drain ladder: the same preloaded corpus drained by ever longer chains, each metered.

Steps: `raw` (confluent-kafka consumer, the physical limit), `kafka_noop` (Spark's Kafka source
into the no-op sink), `bronze` (the `bronze` pipeline: Kafka -> Bronze) and `all` (the `all`
pipeline: Kafka -> Bronze -> Silver -> Gold in one pass per batch). The pipeline steps also
report the seconds each layer took, summed over their batches. Each step runs in a process of
its own (`python -m streaming.bench step`) that reports its phases. In `separate` mode every
Spark step is its own application on an empty lake, so its wall time and CPU include one JVM
start. In `chained` mode one application runs the no-op sink and then the two pipelines one
after the other; a step's figures are the start-up plus the phases it contains. The chained
application can then stay up as the streaming pipeline of the rate ladder (`ChainedApp`), which
saves a second JVM and its tables.

A rate over a window shorter than `MIN_WINDOW_S`, or over fewer than `MIN_RECORDS` records, is
None: a few thousand events read in milliseconds give a figure that says nothing.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.bench.pipeline import READY_TIMEOUT_S, Pipeline
from streaming.bench.workspace import Lake, Workspace, log_tail
from streaming.errors import LakehouseError

log = logging.getLogger(__name__)
MIN_WINDOW_S = 1.0
MIN_RECORDS = 10


@dataclass(frozen=True)
class Step:
    name: str
    phases: tuple[str, ...]
    label: str
    counted: tuple[str, ...]  # the row counts that must each equal the corpus


STEPS = (
    Step("raw", ("raw",), "raw consume (confluent-kafka)", ("raw.telemetry",)),
    Step("kafka_noop", ("noop",), "Spark Kafka source -> noop", ("bench.noop",)),
    Step("bronze", ("bronze",), "run bronze (Kafka -> Bronze)", ("bronze.telemetry",)),
    Step(
        "all",
        ("all",),
        "run all (Kafka -> Bronze -> Silver -> Gold)",
        ("bronze.telemetry", "silver.telemetry"),
    ),
)
CHAIN = ("noop", "bronze", "all")
# Relative cost of a phase, for the timeout: `all` takes every batch through three layers.
_WEIGHT = {"all": 3}


def per_s(amount: float, seconds: float | None, records: int, digits: int = 1) -> float | None:
    """`amount` per second over a window of `seconds` holding `records`; None when the window
    is too short (or holds too few records) for the figure to mean anything."""
    if seconds is None or seconds < MIN_WINDOW_S or records < MIN_RECORDS:
        return None
    return round(amount / seconds, digits)


class ChainedApp(Pipeline):
    """The chained drain step; with `stream`, it then runs `run all` streaming in the same
    application (ready once its query has started) until stopped."""

    what = "the chained bench application"

    def __init__(self, lake: Lake, events: int, log_file: Path, stream: bool) -> None:
        lake.folder.mkdir(parents=True, exist_ok=True)
        self.result = lake.folder / "step.json"
        self.marker = lake.folder / "streaming"
        self.events = events
        phases = (*CHAIN, "stream") if stream else CHAIN
        super().__init__(lake, step_command(phases, events, self.result), log_file)

    def drained(self) -> dict[str, Any]:
        """Block until the drain phases are done; return their report."""
        deadline = self.started + _timeout(self.events, CHAIN)
        while True:
            report = _read_report(self.result)
            if report is not None and any(p["name"] == CHAIN[-1] for p in report["phases"]):
                return report
            self.check_alive()
            if time.monotonic() > deadline:
                raise LakehouseError(
                    f"{self.what} did not drain the corpus in time", hint=f"see {self.log_file}"
                )
            time.sleep(0.5)

    def ready(self) -> bool:
        return self.marker.exists()


def run_drain(
    workspace: Workspace,
    corpus: Lake,
    events: int,
    payload_bytes: int,
    logs: Path,
    chained: ChainedApp | None = None,
) -> list[dict[str, Any]]:
    """Every step's figures, in ladder order, each with its ratio to the raw consumer. With a
    ChainedApp the Spark steps come from it; else each runs in its own application."""
    results: dict[str, dict[str, Any]] = {}
    raw = _run_child(corpus, ("raw",), events, logs / "drain-raw.log")
    results["raw"] = compose(STEPS[0], raw, events, payload_bytes)
    if chained is not None:
        log.info("drain steps %s in one application ...", "+".join(CHAIN))
        report = chained.drained()
        for step in STEPS[1:]:
            results[step.name] = compose(step, report, events, payload_bytes)
    else:
        for step in STEPS[1:]:
            lake = workspace.lake(f"drain-{step.name}", topics_of=corpus)
            report = _run_child(lake, step.phases, events, logs / f"drain-{step.name}.log")
            results[step.name] = compose(step, report, events, payload_bytes)
            workspace.discard(lake)
    add_ratios(results)
    return [results[step.name] for step in STEPS]


def step_command(phases: tuple[str, ...], events: int, result: Path) -> list[str]:
    return [
        sys.executable, "-m", "streaming.bench", "step",
        "--phases", ",".join(phases), "--expect", str(events), "--result", str(result),
    ]  # fmt: skip


def _run_child(lake: Lake, phases: tuple[str, ...], events: int, log_file: Path) -> dict[str, Any]:
    """Run `python -m streaming.bench step` to the end and return the report it wrote."""
    lake.folder.mkdir(parents=True, exist_ok=True)
    result = lake.folder / "step.json"
    log.info("drain step %s ...", "+".join(phases))
    started = time.monotonic()
    with log_file.open("ab") as out:
        completed = subprocess.run(
            step_command(phases, events, result), env=lake.env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            timeout=_timeout(events, phases), check=False,
        )  # fmt: skip
    report = _read_report(result)
    if completed.returncode != 0 or report is None:
        raise LakehouseError(
            f"bench step {'+'.join(phases)} failed: {log_tail(log_file)}", hint=f"see {log_file}"
        )
    report["process_wall_s"] = round(time.monotonic() - started, 2)
    return report


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report


def _timeout(events: int, phases: tuple[str, ...]) -> float:
    """Generous: the start-up allowance plus a millisecond per event and layer."""
    return READY_TIMEOUT_S + events * sum(_WEIGHT.get(p, 1) for p in phases) / 1000.0


def compose(step: Step, report: dict[str, Any], events: int, payload: int) -> dict[str, Any]:
    """A step's figures from the phases it consists of (plus the start-up, if any)."""
    chosen = [p for p in report["phases"] if p["name"] == "startup" or p["name"] in step.phases]
    ran = [p for p in chosen if p["name"] != "startup"]
    # Rates come from the rounded seconds reported next to them, so the two always agree.
    wall = round(sum(p["wall_s"] for p in chosen), 2)
    cpu = sum(p["cpu_s"] for p in chosen)
    windows = [p["window"] for p in ran if p.get("window")]
    processing = (
        round(max(w[1] for w in windows) - min(w[0] for w in windows), 3) if windows else None
    )
    rows: dict[str, int] = {}
    layer_s: dict[str, float] = {}
    for p in ran:
        rows.update(p.get("rows", {}))
        for layer, seconds in p.get("layer_s", {}).items():
            layer_s[layer] = round(layer_s.get(layer, 0.0) + seconds, 2)
    peaks: dict[str, float] = {}
    for p in chosen:
        for kind, value in p["peak_rss_mb"].items():
            peaks[kind] = max(peaks.get(kind, 0.0), value)
    return {
        "step": step.name,
        "label": step.label,
        "phases": list(step.phases),
        "events": events,
        "complete": all(rows.get(key) == events for key in step.counted),
        "rows": rows,
        "silver": _merged(ran, "silver"),
        "layer_s": layer_s,
        "batches": sum(p.get("batches", 0) for p in ran),
        "wall_s": wall,
        "startup_s": round(sum(p["wall_s"] for p in chosen if p["name"] == "startup"), 2),
        "processing_s": processing,
        "events_per_s": per_s(events, wall, events),
        "events_per_s_processing": per_s(events, processing, events),
        "mb_per_s": per_s(payload / 1e6, wall, events, 2),
        "mb_per_s_processing": per_s(payload / 1e6, processing, events, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million_events": round(cpu / events * 1e6, 1),
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(peaks.items())},
        "phase_detail": chosen,
    }


def _merged(phases: list[dict[str, Any]], key: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for phase in phases:
        merged.update(phase.get(key, {}))
    return merged


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Each step's rates over the raw consumer's; None where either rate is None."""
    raw = results["raw"]
    for result in results.values():
        for key in ("events_per_s", "events_per_s_processing"):
            base, value = raw[key], result[key]
            result[f"ratio_to_raw{key.removeprefix('events_per_s')}"] = (
                round(value / base, 4) if base and value else None
            )
