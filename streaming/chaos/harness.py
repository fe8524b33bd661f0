"""The chaos run: its broker and lake, a producer per scenario, the oracles after each, and the
report (a table printed, and written as JSON and Markdown)."""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming.catalog import RUN_HISTORY, TableRef
from streaming.chaos import oracles, scenarios
from streaming.chaos.faults import Broker, ChaosError, Pipeline, S3Server, wait_until
from streaming.config import Config, load_config
from streaming.errors import ConfigError
from streaming.kafka.admin import cluster_metadata, create_topics, watermarks
from streaming.silver.query import check_inputs
from streaming.simulator.malformed import kinds_for
from streaming.simulator.producer import ProduceOptions, ProduceReport, run_producer
from streaming.spark import SHORT_RUN_JVM
from streaming.tables import open_table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
S3_BUCKET = "chaos"


@dataclass(frozen=True)
class Options:
    """`lakehouse chaos`'s flags, resolved."""

    scenarios: tuple[str, ...]
    cycles: int
    events: int
    work: Path
    rate: float = 100.0  # events per second while a scenario runs
    every_kind: bool = False  # one event of each malformed kind per topic before the first
    seed: int = 7
    jitter_s: float = 6.0
    broker_down_s: float = 30.0
    pause_s: float = 60.0
    crash_tables: tuple[str, ...] = ()
    keep: bool = False
    volume_bytes: int = 3 << 30  # the size-limited folder (RAM: a tmpfs) of the disk scenario
    max_offsets: int = 20_000  # per batch: the backlog a restart finds drains in few batches
    before_commit: bool = True  # the checkpoint scenario's kill before a checkpoint commit
    maintain_loop: bool = True  # governance: `maintain` every minute and a re-drive
    s3: bool = False  # the lake and checkpoints on the run's own S3 server
    kill_window: tuple[float, float] | None = None  # kill at once, this many seconds after start
    add_partitions: bool = True  # the broker scenario adds partitions to a topic
    codegen: bool = True  # Spark's generated projections (off for the quick run's small batches)

    @classmethod
    def of(
        cls, quick: bool, cycles: int | None, events: int | None,
        names: list[str] | None, work: Path, keep: bool, s3: bool = False,
    ) -> Options:  # fmt: skip
        chosen = tuple(names or _runnable(s3, scenarios.QUICK if quick else scenarios.SCENARIOS))
        for name in chosen:
            if s3 and name in scenarios.LOCAL_ONLY:
                raise ConfigError(f"the {name} scenario needs a local lake", hint="drop --s3")
            if not s3 and name in scenarios.NEEDS_S3:
                raise ConfigError(f"the {name} scenario needs the lake on S3", hint="add --s3")
        if quick:
            return cls(
                scenarios=chosen, cycles=cycles or 1, events=events or 1_000, work=work,
                rate=20.0, every_kind=True, broker_down_s=5.0, pause_s=0.0, max_offsets=10_000,
                before_commit=False, maintain_loop=False, keep=keep, s3=s3,
                kill_window=(5.0, 45.0), add_partitions=False, codegen=False,
            )  # fmt: skip
        return cls(
            scenarios=chosen, cycles=cycles or 20, events=events or 200_000, work=work,
            crash_tables=("bronze.telemetry", "silver.telemetry", "quarantine.bookings",
                          "silver.vehicle_state", "gold.demand_by_zone_hour",
                          "gold.customer_journey_events"),
            keep=keep, s3=s3,
        )  # fmt: skip


def _runnable(s3: bool, names: Iterable[str]) -> list[str]:
    """The scenarios this machine and this lake can run."""
    return [
        n for n in names
        if (n not in scenarios.NEEDS_ROOT or os.geteuid() == 0)
        and (n not in scenarios.LOCAL_ONLY or not s3) and (n not in scenarios.NEEDS_S3 or s3)
    ]  # fmt: skip


@dataclass
class Outcome:
    """One row of the chaos table."""

    scenario: str
    events: int
    faults: int
    lost: int
    duplicated: int
    unexpected: int
    gold_wrong: int
    recovery_s: list[float]
    seconds: float
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.lost == self.duplicated == 0
            and (self.unexpected == self.gold_wrong == 0)
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


class Production:
    """A ledgered producer in a thread at a fixed rate while a scenario injects its faults;
    `join` lets it go on until it has sent its quota, then stops it."""

    def __init__(
        self, config: Config, entity: str, options: ProduceOptions, log_file: Path, quota: int
    ) -> None:
        self.report: ProduceReport | None = None
        self.error: BaseException | None = None
        self.finishing = threading.Event()

        def enough(sent: int) -> bool:
            return self.finishing.is_set() and sent >= quota

        def produce() -> None:
            try:
                with log_file.open("w") as progress:
                    self.report = run_producer(config, entity, options, progress, enough)
            except BaseException as exc:  # reported by join
                self.error = exc

        self.thread = threading.Thread(target=produce, name=f"chaos-{log_file.stem}", daemon=True)
        self.thread.start()

    def join(self) -> int:
        """Acknowledged messages, once the quota is sent and every message acked or failed."""
        self.finishing.set()
        self.thread.join()
        if self.error is not None:
            raise ChaosError(f"the producer failed: {self.error}")
        assert self.report is not None
        if self.report.failed:
            raise ChaosError(f"the producer lost {self.report.failed} messages: "
                             f"{self.report.first_error}")  # fmt: skip
        return self.report.acked


class Run:
    """One chaos run: the lake, its broker and pipeline, the ledgers so far."""

    def __init__(self, base: Config, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.folder = (options.work / f"chaos-{datetime.now(UTC):%Y%m%dT%H%M%S}").resolve()
        self.logs = self.folder / "logs"
        self.logs.mkdir(parents=True)
        # The lake and its checkpoints live on their own volume: a size-limited tmpfs when a
        # scenario fills the disk, else a plain folder.
        self.volume = self.folder / "volume"
        self.volume.mkdir()
        self.mounted = False
        if set(options.scenarios) & set(scenarios.NEEDS_ROOT):
            self._mount(options.volume_bytes)
        ports = [_free_port(), _free_port()]
        self.env = {
            **os.environ,
            "LAKEHOUSE_ROOT": str(self.volume / "lakehouse"),
            "LAKEHOUSE_CHECKPOINTS": str(self.volume / "checkpoints"),
            "LAKEHOUSE_TOPIC_PREFIX": "chaos.",
            "LAKEHOUSE_METRICS_PORT": "0",
            "LAKEHOUSE_SPARK_LOG": str(self.logs / "spark.log"),
            "LAKEHOUSE_KAFKA_DIR": str(self.folder / "kafka"),
            "LAKEHOUSE_KAFKA_PORT": str(ports[0]),
            "LAKEHOUSE_KAFKA_CONTROLLER_PORT": str(ports[1]),
            "LAKEHOUSE_KAFKA_HEAP": "512m",
            "KAFKA_BOOTSTRAP_SERVERS": "",
            "LAKEHOUSE_TRIGGER_INTERVAL": "1 second",
            "LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER": str(options.max_offsets),
            "LAKEHOUSE_ERASE_GRACE_SECONDS": "10",
            # Every restart is a fresh JVM whose first batches are the slowest.
            "LAKEHOUSE_JVM_OPTIONS": os.environ.get("LAKEHOUSE_JVM_OPTIONS") or SHORT_RUN_JVM,
        }
        if not options.codegen:
            self.env["LAKEHOUSE_SPARK_CODEGEN"] = "false"
        self.s3: S3Server | None = None
        if options.s3:
            secret = secrets.token_hex(16)
            port = _free_port()
            self.env.update({
                "LAKEHOUSE_S3_PORT": str(port), "LAKEHOUSE_S3_DIR": str(self.folder / "s3"),
                "LAKEHOUSE_S3_ENDPOINT": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_SESSION_TOKEN": "", "AWS_REGION": "us-east-1", "LAKEHOUSE_DELTA_LOG_STORE": "",
                "LAKEHOUSE_ROOT": f"s3a://{S3_BUCKET}/lakehouse",
                "LAKEHOUSE_CHECKPOINTS": f"s3a://{S3_BUCKET}/checkpoints",
            })  # fmt: skip
        if base.pii_key is None:  # a throw-away lake: a random key unless one is configured
            self.env["LAKEHOUSE_PII_KEY"] = secrets.token_hex(24)
        for name in (
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_SSL_CA_LOCATION",
            "LAKEHOUSE_CONFIG",
        ):
            self.env.pop(name, None)  # fmt: skip
        self.config = load_config(self.env)
        self.contracts = check_inputs(self.config).contracts
        self.broker = Broker(self.config)
        if options.s3:
            self.s3 = S3Server(self.config, S3_BUCKET)
        self.pipeline = Pipeline(self.config, self.env, self.logs)
        self.ledgers: list[Path] = []
        self.acked = 0
        self.skipped = 0
        self.malformed_turns: dict[str, int] = {}  # where each entity's malformed kinds stopped
        self._spark: SparkSession | None = None

    def _mount(self, size: int) -> None:
        if os.geteuid() != 0:
            raise ChaosError("the disk scenario mounts a size-limited folder (tmpfs): run as root, "
                             "or leave it out with --scenarios")  # fmt: skip
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "chaos-volume", str(self.volume)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if mounted.returncode != 0:
            raise ChaosError(f"could not mount a size-limited folder: {mounted.stderr.strip()}")
        self.mounted = True

    # -- what scenarios use ----------------------------------------------------------------

    def fill_volume(self) -> Path:
        """Fill the lake's volume to its last 64 KB with a ballast file; the file."""
        ballast = self.volume / "ballast"
        free = shutil.disk_usage(self.volume).free
        with ballast.open("wb") as out:
            chunk = b"\0" * (1 << 20)
            left = free - (64 << 10)
            while left > 0:
                try:
                    left -= out.write(chunk[: min(len(chunk), left)])
                except OSError:
                    break
        return ballast

    def events_for(self, scenario: str) -> int:
        """The kill scenario takes half the events; the others share the rest."""
        names = self.options.scenarios
        if scenario == "kill":
            return self.options.events // 2 if len(names) > 1 else self.options.events
        others = [n for n in names if n != "kill"]
        share = self.options.events - (self.options.events // 2 if "kill" in names else 0)
        return max(100, share // max(1, len(others)))

    def produce(self, name: str, quota: int, fmt: str = "json", only: str = "all",
                malformed: float = 0.05, late: float = 0.02,
                duplicates: float = 0.03) -> Production:  # fmt: skip
        """A producer at the run's rate from now until the scenario joins it, and then until
        it has sent `quota` events; its ledger joins the run's. A late event is 0.5 to 10 times
        its entity's watermark late: some still in time, most not. Each entity's malformed
        kinds go round from where the last production left them."""
        lateness = {
            entity: (contract.watermark_seconds * 0.5, contract.watermark_seconds * 10.0)
            for entity, contract in self.contracts.items()
        }
        ledger = self.folder / "ledgers" / f"{name}.ledger"
        self.ledgers.append(ledger)
        options = ProduceOptions(
            rate=self.options.rate, count=0, format=fmt, duplicates=duplicates,
            malformed=malformed, late=late,
            seed=self.rng.randrange(1 << 30), ledger=ledger, lateness=lateness,
            malformed_turns=dict(self.malformed_turns),
        )  # fmt: skip
        log_file = self.logs / f"produce-{name}.log"
        production = Production(self.config, only, options, log_file, quota)
        original = production.join

        def join() -> int:
            acked = original()
            self.acked += acked
            assert production.report is not None
            self.malformed_turns = {**self.malformed_turns, **production.report.malformed_turns}
            return acked

        production.join = join  # type: ignore[method-assign]
        return production

    def restart_and_commit(self, **overrides: str) -> float:
        """Start the pipeline; seconds until it commits a batch."""
        before = self.pipeline.commits()
        started = time.monotonic()
        self.pipeline.start(**overrides)
        self.pipeline.wait_commit(before)
        seconds = time.monotonic() - started
        log.info("restarted: a batch committed %.1f s after the start", seconds)
        return seconds

    def recovered(self) -> float:
        """Seconds until the running pipeline commits its next batch (restarted if a fault
        stopped it: what a container supervisor does)."""
        started = time.monotonic()
        before = self.pipeline.commits()
        try:
            self.pipeline.wait_commit(before)
        except ChaosError:
            if self.pipeline.running():
                raise
            log.warning("the pipeline stopped under the fault (%s): started again",
                        self.pipeline.tail(1))  # fmt: skip
            self.restart_and_commit()
        return time.monotonic() - started

    def end_offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        partitions = cluster_metadata(self.config.kafka).topics[topic].partitions
        marks = watermarks(self.config.kafka, [(topic, p) for p in partitions])
        return {p: mark for (_, p), mark in marks.items()}

    def busiest_user(self) -> str:
        from pyspark.sql import functions as F

        frames = [
            self.spark.read.format("delta").load(self.config.table_path("silver", e))
            .select("user_id") for e in ("bookings", "user_events")
        ]  # fmt: skip
        counts = frames[0].unionByName(frames[1]).groupBy("user_id").count()
        return str(counts.orderBy(F.desc("count"), "user_id").first()["user_id"])  # type: ignore[index]

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            from streaming.spark import build_spark

            self._spark = build_spark(self.config, app_name="lakehouse-chaos")
        return self._spark

    # -- the run ---------------------------------------------------------------------------

    def caught_up(self) -> bool:
        table = open_table(self.config, TableRef(*RUN_HISTORY).path(self.config))
        if table is None:
            return False
        rows = table.to_pyarrow_table(columns=["pipeline", "batch_id", "rows_in"]).to_pylist()
        newest = {r["batch_id"]: r["rows_in"] for r in rows if r["pipeline"] == "all"}
        return sum(n for counts in newest.values() for _, n in counts) >= self.acked - self.skipped

    def every_kind_once(self) -> None:
        """One event of each malformed kind per topic: a short run's few events leave a rare
        topic's later kinds unsent."""
        productions = [
            self.produce(
                f"kinds-{entity}",
                len(kinds_for(entity)),
                only=entity,
                malformed=1.0,
                late=0.0,
                duplicates=0.0,
            )
            for entity in self.contracts
        ]
        for production in productions:
            production.join()

    def scenario(self, name: str) -> Outcome:
        started = time.monotonic()
        acked_before = self.acked
        try:
            if self.options.every_kind and acked_before == 0:  # ahead of the first scenario
                self.every_kind_once()
            injected = scenarios.SCENARIOS[name](self)
            if not self.pipeline.running():
                self.pipeline.start()
            waited = wait_until(self.caught_up, "the pipeline to catch up", 900,
                                self.pipeline.require_running)  # fmt: skip
            log.info("%s: the stream caught up with %s events (%.1f s); the oracles", name,
                     f"{self.acked:,}", waited)  # fmt: skip
            checked = time.monotonic()
            found = oracles.tally(self.spark, self.config, self.ledgers, self.skipped)
            log.info("%s: the oracles took %.1f s", name, time.monotonic() - checked)
        except Exception as exc:  # the scenario's failure is the report's row, not a trace
            text = str(exc) if isinstance(exc, ChaosError) else f"{type(exc).__name__}: {exc}"
            with (self.logs / "harness.log").open("a") as trace:  # details, off the screen
                traceback.print_exc(file=trace)
            return Outcome(name, self.acked - acked_before, 0, 0, 0, 0, 0, [],
                           round(time.monotonic() - started, 1), error=text)  # fmt: skip
        return Outcome(
            scenario=name,
            events=self.acked - acked_before,
            faults=injected.faults,
            lost=found.lost,
            duplicated=found.duplicated,
            unexpected=found.unexpected,
            gold_wrong=found.gold_wrong,
            recovery_s=[round(s, 1) for s in injected.recovery],
            seconds=round(time.monotonic() - started, 1),
            notes=injected.notes,
            violations=found.violations,
        )

    def close(self) -> None:
        if self.pipeline.running():
            self.pipeline.stop()
        for server in (self.broker, self.s3):
            try:
                if server is not None:
                    server.stop()
            except Exception as exc:  # the report matters more than a clean stop
                log.warning("a chaos server did not stop: %s", exc)
        if self._spark is not None:
            self._spark.stop()
        if self.mounted and not self.options.keep:
            subprocess.run(["umount", str(self.volume)], capture_output=True, check=False)
        if not self.options.keep:
            shutil.rmtree(self.volume, ignore_errors=True)
            shutil.rmtree(self.folder / "kafka", ignore_errors=True)
            shutil.rmtree(self.folder / "s3", ignore_errors=True)


def run_chaos(base: Config, options: Options, echo: Any = print) -> dict[str, Any]:
    """Every chosen scenario in turn, then the oracles' proofs; the report."""
    run = Run(base, options)
    plural = "" if options.cycles == 1 else "s"
    cycles = f", {options.cycles} kill cycle{plural}" if "kill" in options.scenarios else ""
    echo(f"chaos: {', '.join(options.scenarios)}; {options.events:,} events{cycles}; "
         f"work folder {run.folder}")  # fmt: skip
    outcomes: list[Outcome] = []
    proofs: list[oracles.Proof] = []
    started = time.monotonic()
    try:
        run.broker.start()
        if run.s3 is not None:
            run.s3.start()
        create_topics(run.config)
        for name in options.scenarios:
            outcome = run.scenario(name)
            outcomes.append(outcome)
            echo(_line(outcome))
            if outcome.error is not None:
                break
        if outcomes and all(o.ok for o in outcomes):
            if run.pipeline.running():
                run.pipeline.stop()
            proofs = oracles.prove(run.spark, run.config, run.ledgers, run.skipped)
            for proof in proofs:
                echo(
                    f"proof: {proof.oracle} on {proof.fault} in {proof.table}: "
                    f"{'failed, as it must' if proof.failed else 'DID NOT FAIL'} {proof.found}"
                )
    finally:
        run.close()
    every_scenario = len(outcomes) == len(options.scenarios) and all(o.ok for o in outcomes)
    report = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.__dict__.items()},
        "seconds": round(time.monotonic() - started, 1),
        "scenarios": [o.as_dict() for o in outcomes],
        "proofs": [p.as_dict() for p in proofs],
        "ok": every_scenario and bool(proofs) and all(p.failed for p in proofs),
        "folder": str(run.folder),
        "lake": {
            k: run.env[k]
            for k in ("LAKEHOUSE_ROOT", "LAKEHOUSE_CHECKPOINTS", "LAKEHOUSE_TOPIC_PREFIX")
        },
        "ledgers": [str(p) for p in run.ledgers],
    }
    (run.folder / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    (run.folder / "chaos.md").write_text(markdown(report))
    return report


def _line(o: Outcome) -> str:
    if o.error:
        return f"{o.scenario}: FAILED: {o.error}"
    recovery = f"recovery max {max(o.recovery_s):.1f} s" if o.recovery_s else "no recovery"
    faults = f"{o.faults} fault" + ("" if o.faults == 1 else "s")
    return (f"{o.scenario}: {o.events:,} events, {faults}, lost {o.lost}, duplicated "
            f"{o.duplicated}, unexpected {o.unexpected}, wrong Gold rows {o.gold_wrong}, "
            f"{recovery} ({o.seconds:.0f} s)")  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| scenario | events | faults | lost | duplicated | unexpected | wrong Gold rows | "
        "recovery s (median / max) | ok |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for o in report["scenarios"]:
        recovery = sorted(o["recovery_s"])
        shown = (f"{recovery[len(recovery) // 2]:.1f} / {recovery[-1]:.1f}"
                 if recovery else "-")  # fmt: skip
        lines.append(
            f"| {o['scenario']} | {o['events']:,} | {o['faults']} | {o['lost']} | "
            f"{o['duplicated']} | {o['unexpected']} | {o['gold_wrong']} | {shown} | "
            f"{'yes' if o['ok'] else 'NO: ' + _cell(o['error'] or '; '.join(o['violations']))} |"
        )
    if report["proofs"]:
        lines += [
            "",
            "| oracle | injected | table | it reported | failed |",
            "|---|---|---|---|---|",
        ]
        for p in report["proofs"]:
            found = ", ".join(f"{k} {v}" for k, v in p["found"].items())
            lines.append(f"| {p['oracle']} | {p['fault']} | {p['table']} | {found} | "
                         f"{'yes' if p['failed'] else 'NO'} |")  # fmt: skip
    notes = [f"- {o['scenario']}: {n}" for o in report["scenarios"] for n in o["notes"]]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text on one line of a Markdown table."""
    return " ".join(text.split()).replace("|", "/")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
