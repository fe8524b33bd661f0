"""What each chaos scenario does while its events flow.

A scenario gets the run (`harness.Run`: the lake, its broker, its pipeline, a producer) and
returns what it injected: the number of faults, the recovery time of each (seconds from the
fault's end to the pipeline's next committed batch) and notes. The harness then lets the
pipeline catch up and runs the oracles.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streaming.catalog import AUDIT_MAINTENANCE, RUN_HISTORY, TableRef
from streaming.chaos.faults import LAKEHOUSE, ChaosError, table_version, wait_until
from streaming.tables import open_table

if TYPE_CHECKING:
    from streaming.chaos.harness import Run

log = logging.getLogger(__name__)
# How long a scenario waits for the running pipeline's next commit to a table: a restarted JVM's
# first batches after a backlog (payloads of 10 MB among them) took over three minutes here.
COMMIT_WAIT_S = 600
BEFORE_COMMIT_TRIES = 10


@dataclass
class Injected:
    """What a scenario did: faults injected, recovery seconds per fault, notes."""

    faults: int = 0
    recovery: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, recovery: float | None, note: str | None = None) -> None:
        self.faults += 1
        if recovery is not None:
            self.recovery.append(recovery)
        if note:
            self.notes.append(note)


def kill(run: Run) -> Injected:
    """kill -9 of the pipeline's process group at random moments, `cycles` times: a random
    moment after the restart's first committed batch (each kill's recovery: the restart's
    seconds to that batch), or with `kill_window` a random moment that many seconds after the
    start, wherever the restart is (starting, building, in its first batch)."""
    production = run.produce("kill", run.events_for("kill"))
    to_first_batch = []
    for cycle in range(run.options.cycles):
        log.info("kill: cycle %d of %d", cycle + 1, run.options.cycles)
        if not run.pipeline.running():
            run.pipeline.start()
        if run.options.kill_window:
            time.sleep(run.rng.uniform(*run.options.kill_window))
            run.pipeline.require_running()
            run.pipeline.kill_9()
        else:
            to_first_batch.append(run.pipeline.kill_9_at_random(run.rng, run.options.jitter_s))
    production.join()
    to_first_batch.append(run.restart_and_commit())
    recovery = to_first_batch[-1:] if run.options.kill_window else to_first_batch[1:]
    return Injected(run.options.cycles, recovery, [])


def checkpoint(run: Run) -> Injected:
    """Deterministic crash points, each followed by a restart:

    - a torn last offset file and a lost commit-log entry: killed as soon as batch N's offset
      file appears (no table holds N yet), the file cut in half and batch N-1's commit entry
      deleted. The restart sets the torn file aside and runs batch N-1 again over tables that
      hold it;
    - after a table's commit: killed as soon as the table has a new version, in turn for each
      table of `crash_tables`;
    - before the checkpoint's commit (with `before_commit`): killed as soon as the batch's
      run-history row is written, the batch's last act before Spark commits it.
    """
    done = Injected()
    production = run.produce("checkpoint", run.events_for("checkpoint"))
    pipeline = run.pipeline
    if not pipeline.running():
        pipeline.start()
    pipeline.wait_commit(pipeline.commits())

    before = pipeline.offsets()
    wait_until(lambda: pipeline.offsets() > before, "a new offset file", 120,
               pipeline.require_running)  # fmt: skip
    pipeline.kill_9()
    torn, last = pipeline.offsets(), pipeline.commits()
    if last >= torn:
        raise ChaosError(f"batch {torn} committed before the kill landed")
    pipeline.checkpoint.tear("offsets", torn)
    pipeline.checkpoint.delete("commits", last)
    done.add(run.restart_and_commit(), f"offsets/{torn} torn and commits/{last} deleted")
    if "was torn" not in pipeline.log_file.read_text(errors="replace"):
        raise ChaosError("the restart did not report the torn offset file")

    for name in run.options.crash_tables:
        layer, _, table = name.partition(".")
        path = run.config.table_path(layer, table)
        version = table_version(run.config, path)
        if version < 0:
            raise ChaosError(f"{name} is not a table of the lake: no commit to it can come")
        wait_until(lambda p=path, v=version: table_version(run.config, p) > v,  # type: ignore[misc]
                   f"a commit to {name}", COMMIT_WAIT_S, pipeline.require_running)  # fmt: skip
        pipeline.kill_9()
        done.add(run.restart_and_commit(), f"killed after a commit to {name}")

    if run.options.before_commit:
        done.add(*_kill_before_checkpoint_commit(run))
    production.join()
    return done


def _kill_before_checkpoint_commit(run: Run) -> tuple[float, str]:
    """Kill -9 between a batch's run-history row (its last act) and Spark's commit of it. That
    window is milliseconds: when the row appears the pipeline is stopped (SIGSTOP) where it is;
    if the commit was already made it runs on and the next batch is tried, else it is killed."""
    pipeline = run.pipeline
    history = TableRef(*RUN_HISTORY).path(run.config)
    for attempt in range(1, BEFORE_COMMIT_TRIES + 1):
        committed, version = pipeline.commits(), table_version(run.config, history)
        wait_until(lambda v=version: table_version(run.config, history) > v,  # type: ignore[misc]
                   "a run-history row", COMMIT_WAIT_S, pipeline.require_running)  # fmt: skip
        pipeline.pause()
        if pipeline.commits() > committed:  # too late: this batch is committed
            pipeline.resume()
            continue
        pipeline.kill_9()
        tries = f" (try {attempt})" if attempt > 1 else ""
        note = f"killed after batch {committed + 1}'s last write, before its checkpoint commit"
        return run.restart_and_commit(), note + tries
    raise ChaosError(f"no kill landed between a batch's last write and its checkpoint commit in "
                     f"{BEFORE_COMMIT_TRIES} tries")  # fmt: skip


def broker(run: Run) -> Injected:
    """The broker killed -9 and restarted, paused (SIGSTOP), and a partition added to a topic,
    each while events flow and the pipeline runs."""
    done = Injected()
    pipeline, chaos_broker = run.pipeline, run.broker
    if not pipeline.running():
        pipeline.start()
    production = run.produce("broker", run.events_for("broker") // 2)
    pipeline.wait_commit(pipeline.commits())

    time.sleep(run.rng.uniform(1.0, 4.0))
    chaos_broker.kill_9()
    time.sleep(run.options.broker_down_s)
    chaos_broker.start()
    done.add(run.recovered(), f"broker killed -9, down {run.options.broker_down_s:.0f} s")

    if run.options.pause_s:
        chaos_broker.pause()
        time.sleep(run.options.pause_s)
        chaos_broker.resume()
        done.add(run.recovered(), f"broker paused {run.options.pause_s:.0f} s")
    production.join()

    if not run.options.add_partitions:
        return done
    topic = run.config.topic("telemetry")
    chaos_broker.add_partitions(topic.name, topic.partitions + 2)
    # A new producer learns the new partitions at once (a running one within its metadata
    # refresh); the Kafka source finds them at its next batch.
    second = run.produce("broker-partitions", run.events_for("broker") // 2)
    done.add(run.recovered(), f"{topic.name}: {topic.partitions} -> {topic.partitions + 2} "
             "partitions")  # fmt: skip
    second.join()
    return done


RETENTION_STOP_S = 300.0  # a run started past deleted offsets stops on its first batch


def retention(run: Run) -> Injected:
    """Retention overtaking the stream: records deleted before the pipeline read them. The
    run must stop with a clear error, then go on with LAKEHOUSE_FAIL_ON_DATA_LOSS=false."""
    done = Injected()
    pipeline = run.pipeline
    if pipeline.commits() < 0:  # a fresh lake: the stream must have read the topic once
        if not pipeline.running():
            pipeline.start()
        pipeline.wait_commit(-1)
    if pipeline.running():
        pipeline.stop()
    production = run.produce("retention", run.events_for("retention"), only="telemetry")
    production.join()
    topic = run.config.topic("telemetry")
    read = pipeline.checkpoint.committed_offsets().get(topic.name, {})
    read_to = {int(p): o for p, o in read.items()}
    # Half of what each partition holds unread (the topic's older, read records do not count:
    # deleting them loses nothing, and after earlier scenarios they are most of the topic).
    unread = {p: (max(start, read_to.get(p, 0)), end)
              for p, (start, end) in run.end_offsets(topic.name).items()}  # fmt: skip
    cut = {p: first + (end - first + 1) // 2 for p, (first, end) in unread.items() if end > first}
    if not cut:
        raise ChaosError(f"nothing unread in {topic.name} to delete: the producer sent nothing")
    run.broker.delete_before(topic.name, cut)
    run.skipped += sum(c - unread[p][0] for p, c in cut.items())
    pipeline.start()
    try:
        code = pipeline.wait_exit(RETENTION_STOP_S)
    except subprocess.TimeoutExpired:
        pipeline.kill_9()
        raise ChaosError(
            f"a run after retention overtook it did not stop on the loss within "
            f"{RETENTION_STOP_S:.0f} s: {pipeline.tail(1)}"
        ) from None
    text = pipeline.log_file.read_text(errors="replace")
    if code == 0 or "retention overtook the stream" not in text:
        raise ChaosError(
            f"a run after retention overtook it did not stop clearly: {pipeline.tail()}"
        )
    started = time.monotonic()
    pipeline.start(LAKEHOUSE_FAIL_ON_DATA_LOSS="false")
    pipeline.wait_commit(pipeline.commits())
    note = f"{run.skipped} offsets deleted unread: stopped with the count, then skipped"
    done.add(time.monotonic() - started, note)
    if "skipping offsets Kafka no longer holds" not in pipeline.log_file.read_text(
        errors="replace"
    ):
        raise ChaosError("the run with LAKEHOUSE_FAIL_ON_DATA_LOSS=false did not log the skip")
    pipeline.stop()
    pipeline.start()
    return done


def messy(run: Run) -> Injected:
    """A third of the events malformed in every way the simulator knows, a tenth late, in JSON
    and Avro."""
    done = Injected()
    if not run.pipeline.running():
        run.pipeline.start()
    events = run.events_for("messy")
    shares = {"malformed": 0.3, "late": 0.1, "duplicates": 0.05}
    first = run.produce("messy-json", events // 2, "json", "all", **shares)
    second = run.produce("messy-avro", events // 2, "avro", "telemetry", **shares)
    first.join()
    second.join()
    done.add(None, "30 % malformed, 10 % late, 5 % duplicated; JSON and Avro")
    return done


def governance(run: Run) -> Injected:
    """Maintenance and an erasure beside the running stream; a re-drive while the stream holds
    Silver is refused with the holder's name. The full run keeps `maintain` running (OPTIMIZE
    every minute, VACUUM) and re-drives the quarantined telemetry once the stream is stopped."""
    done = Injected()
    pipeline = run.pipeline
    if not pipeline.running():
        pipeline.start()
    production = run.produce("governance", run.events_for("governance"))
    pipeline.wait_commit(pipeline.commits())
    looping = run.options.maintain_loop
    maintain = subprocess.Popen(
        [*LAKEHOUSE, "maintain",
         *([] if looping else ["--once", "--no-vacuum", "--tables", "silver.*,gold.*"])],
        env={**run.env, "LAKEHOUSE_MAINTAIN_INTERVAL": "60"},
        stdout=(run.logs / "maintain.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        refused = _lakehouse(run, "redrive", "telemetry")
        if refused.returncode == 0 or "error:" not in refused.stderr:
            raise ChaosError("a re-drive beside the running stream was not refused: "
                             + refused.stdout[-300:] + refused.stderr[-300:])  # fmt: skip
        # An erasure covers what the lake holds when it is asked for: the person's records still
        # in Kafka, or sent later (the simulator's users keep using the app), are not in it. So
        # the producer stops and the stream catches up first; the stream keeps running.
        production.join()
        wait_until(run.caught_up, "the pipeline to catch up", 900, pipeline.require_running)
        user = run.busiest_user()
        receipt = run.logs / "erasure-receipt.json"
        erased = _lakehouse(run, "erase", "--user-id", user, "--receipt", str(receipt), timeout=900)
        if erased.returncode != 0:
            raise _failed("the erasure", erased)
        written = json.loads(receipt.read_text())
        if written["proof"]["hits"]:
            raise ChaosError(f"the erased person is still in {written['proof']['hits']}")
        assert pipeline.process is not None
        if f"pid {pipeline.process.pid}" not in written["applied_by"]:
            raise ChaosError(f"the erasure was not applied by the stream: {written['applied_by']}")
        done.add(None, f"erasure of user {user}: {written['tombstones']} records, applied by the "
                 "running stream, proof scan clean")  # fmt: skip
        if looping:
            wait_until(lambda: _maintenance_runs(run) >= 2, "two maintenance passes", 900)
            maintain.send_signal(signal.SIGTERM)
        if maintain.wait(timeout=900) != 0:
            raise ChaosError("maintenance beside the stream failed: see maintain.log")
        compacted = _compactions(run)
        if not compacted:
            raise ChaosError("maintenance beside the stream compacted nothing")
        passes = f"{_maintenance_runs(run)} passes of maintain (OPTIMIZE, VACUUM)" if looping else (
            "maintain --once")  # fmt: skip
        done.add(None, f"{passes} beside the stream: {compacted} compactions")
        done.add(None, "a re-drive beside the stream refused: " + refused.stderr.strip()[:160])
        if looping:
            wait_until(run.caught_up, "the pipeline to catch up", 900, pipeline.require_running)
            pipeline.stop()
            redriven = _lakehouse(run, "redrive", "telemetry", "--json", timeout=900)
            if redriven.returncode != 0:
                raise _failed("the re-drive", redriven)
            report = json.loads(redriven.stdout)
            done.add(None, f"re-drive of quarantined telemetry with the stream stopped: "
                     f"{report.get('selected', report)} rows judged again")  # fmt: skip
            pipeline.start()
    finally:  # a failed scenario leaves no `maintain` running beside the next one
        if maintain.poll() is None:
            maintain.terminate()
            maintain.wait(timeout=60)
    return done


def disk(run: Run) -> Injected:
    """The disk under the lake and its checkpoints fills up (a size-limited folder, filled with
    a ballast file while events flow): the pipeline must stop with a clear error; once the
    space is back, a restart resumes with nothing lost."""
    done = Injected()
    pipeline = run.pipeline
    if not pipeline.running():
        pipeline.start()
    production = run.produce("disk", run.events_for("disk"))
    pipeline.wait_commit(pipeline.commits())
    ballast = run.fill_volume()
    try:
        code = pipeline.wait_exit(600)
    finally:
        ballast.unlink()
    text = pipeline.log_file.read_text(errors="replace")
    if code == 0 or "no space left on the device" not in text:
        raise ChaosError(f"a full disk did not stop the pipeline clearly: {pipeline.tail()}")
    done.add(run.restart_and_commit(), "the volume filled: stopped with 'no space left on the "
             "device', resumed once space was back")  # fmt: skip
    production.join()
    return done


def s3(run: Run) -> Injected:
    """The S3 server under the lake killed -9 and restarted while events flow (with --s3)."""
    done = Injected()
    if run.s3 is None:
        raise ChaosError("the s3 scenario needs the lake on S3: run with --s3")
    pipeline = run.pipeline
    if not pipeline.running():
        pipeline.start()
    production = run.produce("s3", run.events_for("s3"))
    pipeline.wait_commit(pipeline.commits())
    time.sleep(run.rng.uniform(1.0, 4.0))
    run.s3.kill_9()
    time.sleep(run.options.broker_down_s)
    run.s3.start()
    done.add(run.recovered(), f"S3 server killed -9, down {run.options.broker_down_s:.0f} s")
    production.join()
    return done


def _maintenance_runs(run: Run) -> int:
    """Passes of `maintain` recorded in the maintenance audit (one append per pass)."""
    table = open_table(run.config, TableRef(*AUDIT_MAINTENANCE).path(run.config))
    return 0 if table is None else sum(1 for c in table.history() if c["operation"] == "WRITE")


def _compactions(run: Run) -> int:
    """OPTIMIZE actions recorded in the maintenance audit that left fewer files."""
    table = open_table(run.config, TableRef(*AUDIT_MAINTENANCE).path(run.config))
    rows = table.to_pyarrow_table().to_pylist() if table is not None else []
    return sum(
        1 for r in rows if r["action"] == "optimize" and r["files_after"] < r["files_before"]
    )


def _lakehouse(run: Run, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """One `lakehouse` command; its output also in the run's logs (`<command>.log`)."""
    done = subprocess.run([*LAKEHOUSE, *args], env=run.env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    with (run.logs / f"{args[0]}.log").open("a") as log:
        log.write(f"$ lakehouse {' '.join(args)}\n{done.stdout}{done.stderr}")
    return done


def _failed(what: str, done: subprocess.CompletedProcess[str]) -> ChaosError:
    """`what` failed, with the command's one `error:` line (its whole output is in the logs),
    or the signal that killed it (the kernel's OOM killer sends SIGKILL)."""
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return ChaosError(f"{what} was killed by {name} (exit {done.returncode}): see the "
                          "kernel log (dmesg) for an out-of-memory kill")  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return ChaosError(f"{what} failed: " + (errors or lines or [f"exit {done.returncode}"])[-1])


SCENARIOS: dict[str, Callable[[Run], Injected]] = {
    "kill": kill,
    "checkpoint": checkpoint,
    "broker": broker,
    "messy": messy,
    "governance": governance,
    "retention": retention,
    "disk": disk,
    "s3": s3,
}
NEEDS_ROOT = ("disk",)  # a size-limited folder is a tmpfs mount
LOCAL_ONLY = ("disk",)  # fills a local volume: not with --s3
NEEDS_S3 = ("s3",)
# What the test suite runs: a kill -9 of the running pipeline mid-batch that tears its last offset
# file and loses a commit entry, every oracle, every malformed kind, the proofs.
QUICK = ("checkpoint",)
