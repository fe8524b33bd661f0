"""`lakehouse`: the command-line contract (see README). One clear line per mistake, no traces."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streaming.bench.options import add_arguments as add_bench_arguments
from streaming.config import Config, load_config
from streaming.console import configure_logging, guarded
from streaming.errors import ConfigError, SetupError, VerificationFailed
from streaming.simulator import SIMULATED

log = logging.getLogger("lakehouse")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)

    def run() -> int:
        return int(args.handler(load_config(config_file=args.config), args) or 0)

    return guarded(run, args.verbose)


def _kafka(config: Config, args: argparse.Namespace) -> int:
    from streaming.kafka import broker

    if args.action == "start":
        kafka = config.kafka
        scram = (kafka.sasl_username, kafka.sasl_password) if kafka.sasl_password else None
        print(broker.start(config.broker, config.jars_dir, scram))  # type: ignore[arg-type]
    elif args.action == "stop":
        print(broker.stop(config.broker))
    else:
        running, line = broker.status(config.broker)
        print(line)
        return 0 if running else 1
    return 0


def _s3(config: Config, args: argparse.Namespace) -> int:
    from streaming.s3 import server, storage

    if args.action == "start":
        buckets = [
            storage.split(location)[0]
            for location in (config.root, config.checkpoints)
            if storage.is_s3(location)
        ]
        buckets += [args.bucket] if args.bucket else []
        print(server.start(config.s3_server, config.s3, config.jars_dir, buckets))
    elif args.action == "stop":
        print(server.stop(config.s3_server))
    elif args.action == "mb":
        if not args.bucket:
            raise ConfigError("`lakehouse s3 mb` needs a bucket name", hint="lakehouse s3 mb lake")
        try:
            created = storage.make_bucket(config.s3, args.bucket)
        except OSError as exc:
            raise storage.s3_error(config, f"creating the bucket '{args.bucket}'", exc) from None
        where = config.s3.endpoint or "AWS S3"
        print(f"bucket {args.bucket} {'created' if created else 'exists already'} on {where}")
    else:
        running, line = server.status(config.s3_server)
        print(line)
        return 0 if running else 1
    return 0


def _topics(config: Config, args: argparse.Namespace) -> int:
    from streaming.kafka.admin import create_topics

    for line in create_topics(config, args.partitions):
        print(line)
    return 0


def _produce(config: Config, args: argparse.Namespace) -> int:
    try:
        from streaming.simulator.producer import ProduceOptions, run_producer
    except ModuleNotFoundError as missing:
        raise SetupError(
            f"the simulator needs {missing.name}, which this installation lacks",
            hint="install the tools extra: pip install 'lakehouse[tools]' (make setup does)",
        ) from None

    options = ProduceOptions(
        rate=args.rate,
        count=args.count,
        format=args.format,
        duplicates=args.duplicates,
        malformed=args.malformed,
        late=args.late,
        seed=args.seed,
        ledger=args.ledger,
        vehicles=args.vehicles,
    )
    report = run_producer(config, args.topic, options)
    return 0 if report.failed == 0 else 1


def _run(config: Config, args: argparse.Namespace) -> int:
    from streaming.runner import run

    run(config, args.layer, once=args.once)
    return 0


def _verify(config: Config, args: argparse.Namespace) -> int:
    from streaming.spark import build_spark
    from streaming.verify import run_checks

    spark = build_spark(config, app_name="lakehouse-verify")
    report = run_checks(spark, config, args.ledger or [])
    text = json.dumps(report, indent=2, sort_keys=True, default=str)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if not report["ok"]:
        raise VerificationFailed("; ".join(report["violations"]))
    return 0


def _show(config: Config, args: argparse.Namespace) -> int:
    from streaming.show import read_table, render

    columns, rows, total = read_table(config, args.table, args.where, args.limit, args.as_of)
    if args.json:
        for row in rows:
            print(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    else:
        print(render(columns, rows))
        print(f"({len(rows)} of {total} rows)")
    return 0


def _history(config: Config, args: argparse.Namespace) -> int:
    from streaming.show import history

    for entry in history(config, args.table, args.limit):
        if args.json:
            print(json.dumps(entry, default=str))
        else:
            meta = f"  {entry['userMetadata']}" if entry["userMetadata"] else ""
            print(f"v{entry['version']}  {entry['timestamp']}  {entry['operation']}{meta}")
    return 0


def _settings(config: Config, args: argparse.Namespace) -> int:
    from streaming import settings

    if args.markdown:
        print(settings.markdown())
        return 0
    width = max(len(s.env) for s in settings.SETTINGS)
    shown = max(len(s.shown_default) for s in settings.SETTINGS)
    for s in settings.SETTINGS:
        print(f"{s.env:<{width}}  {s.shown_default:<{shown}}  {s.help}")
    return 0


def _bench(config: Config, args: argparse.Namespace) -> int:
    try:
        from streaming.bench.harness import bench
    except ModuleNotFoundError as missing:
        raise SetupError(
            f"the benchmark needs {missing.name}, which this installation lacks",
            hint="install the tools extra: pip install 'lakehouse[tools]' (make setup does)",
        ) from None

    return bench(config, args)


def _chaos(config: Config, args: argparse.Namespace) -> int:
    from streaming.chaos.harness import Options, run_chaos
    from streaming.chaos.scenarios import SCENARIOS

    names = [n for n in (args.scenarios or "").split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(
            f"unknown scenario {unknown[0]!r}", hint=f"one of: {', '.join(SCENARIOS)}"
        )
    for flag, value in (("--cycles", args.cycles), ("--events", args.events)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    options = Options.of(args.quick, args.cycles, args.events, names, args.work, args.keep, args.s3)
    # SIGTERM unwinds like Ctrl-C: the run's pipeline, broker and S3 server are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run_chaos(config, options)
    print()
    print((Path(report["folder"]) / "chaos.md").read_text(), end="")
    print(f"report: {report['folder']}/chaos.json and chaos.md ({report['seconds']:.0f} s)")
    if not report["ok"]:
        raise VerificationFailed(
            "a chaos scenario lost, doubled or corrupted data, failed, or an "
            "oracle did not catch an injected fault"
        )
    return 0


def _maintain(config: Config, args: argparse.Namespace) -> int:
    import threading

    from streaming.maintain import maintain, tables_named
    from streaming.spark import build_spark

    tables = [t for t in (args.tables or "").split(",") if t]
    tables_named(config, tables)  # an unknown table: one line, before a JVM starts
    spark = build_spark(config, app_name="lakehouse-maintain")
    if args.once or args.dry_run:
        actions = maintain(spark, config, tables, args.dry_run, vacuum=not args.no_vacuum)
        print(json.dumps([a.__dict__ for a in actions], indent=2, default=str) if args.json
              else "\n".join(a.line() for a in actions) or "no table to maintain yet")  # fmt: skip
        return 0
    every = config.maintain.interval_seconds
    log.info("maintaining the tables every %d s (Ctrl-C or SIGTERM stops)", every)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        maintain(spark, config, tables, dry_run=False, vacuum=not args.no_vacuum)
        stop.wait(every)
    log.info("maintenance stopped")
    return 0


def _redrive(config: Config, args: argparse.Namespace) -> int:
    from streaming.redrive import check_selection, redrive

    def command(inputs: Any) -> Callable[[Any], Any]:
        selection = check_selection(inputs, args.entity, args.stage, args.rule, args.since)
        return lambda spark: redrive(spark, config, inputs, selection, args.dry_run)

    return _rewrite(config, args, "redrive", command)


def _replay(config: Config, args: argparse.Namespace) -> int:
    from streaming.replay import check_range, replay

    def command(inputs: Any) -> Callable[[Any], Any]:
        wanted = check_range(inputs, args.entity, args.start, args.end)
        return lambda spark: replay(spark, config, inputs, wanted, args.dry_run)

    return _rewrite(config, args, "replay", command)


def _rewrite(
    config: Config,
    args: argparse.Namespace,
    name: str,
    command: Callable[[Any], Callable[[Any], Any]],
) -> int:
    """A command that rewrites Silver and Gold: its flags checked before Spark starts, then run
    as the layers' one writer (a dry run only reads), its report printed."""
    from contextlib import nullcontext

    from streaming import lease
    from streaming.silver.query import check_inputs
    from streaming.spark import build_spark, row_reader

    run = command(check_inputs(config))
    holding = nullcontext() if args.dry_run else lease.writer_leases(config, ["silver", "gold"])
    with holding:
        spark = build_spark(config, app_name=f"lakehouse-{name}")
        with row_reader(spark):  # both read raw Bronze payloads, some of ten megabytes
            report = run(spark)
    print(json.dumps(report.as_dict(), indent=2, default=str) if args.json else report.line())
    return 0


def _erase(config: Config, args: argparse.Namespace) -> int:
    from streaming import lease
    from streaming.erasure import Subject, erase, require_lake
    from streaming.spark import build_spark

    subject = Subject(args.user_id, args.email, args.phone)  # flags checked before Spark starts
    config.require_pii_key()
    require_lake(config)
    spark = build_spark(config, app_name="lakehouse-erase")
    receipt = erase(
        spark, config, subject, args.dry_run, args.wait_seconds,
        acquire=lambda: lease.take(config, ["silver", "gold"]),
    )  # fmt: skip
    document = json.dumps(receipt.as_dict(), indent=2, default=str)
    if args.receipt is not None:
        args.receipt.write_text(document + "\n")
    print(document if args.json else receipt.line())
    hits = receipt.proof.get("hits", [])
    for hit in hits:
        where = f" (column {hit['column']})" if hit["column"] else ""
        print(f"error: the subject is still in {hit['file']}{where}", file=sys.stderr)
    return 0 if not hits else 6


def _lineage(config: Config, args: argparse.Namespace) -> int:
    from streaming.catalog import parse
    from streaming.lineage import lineage
    from streaming.spark import build_spark

    if parse(config, args.table) is None:
        raise ConfigError(f"unknown table {args.table!r}", hint="`lakehouse show` lists them")
    report = lineage(build_spark(config, app_name="lakehouse-lineage"), config, args.table,
                     args.where, args.limit)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"{report['table']} where {report['where']}: {report['rows']} rows")
    for entity, count in report.get("silver", {}).items():
        batches = report.get("batches", {}).get(entity, [])
        print(f"  silver.{entity}: {count} rows behind them (batches {_ranges(batches)})")
    for entity, count in report["bronze"].items():
        print(f"  bronze.{entity}: {count} rows")
    for k in report["kafka"]:
        print(f"    {k['topic']} partition {k['partition']} offset {k['offset']}  {k['timestamp']}")
    listed, total = len(report["kafka"]), sum(report["bronze"].values())
    if listed < total:
        print(f"    ... {total - listed} more (--limit)")
    return 0


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 7 -> '1-3, 7'."""
    parts: list[str] = []
    for n in numbers:
        if parts and parts[-1].split("-")[-1] == str(n - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return ", ".join(parts) or "none"


def _status(config: Config, args: argparse.Namespace) -> int:
    from streaming.status import Stale, render, status

    threshold = args.stale_seconds or config.serve.stale_seconds
    report = status(config, threshold, kafka=not args.no_kafka)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    if report["stale"]:
        raise Stale(f"stale Gold tables (no event for over {threshold:.0f} s): "
                    + ", ".join(report["stale"]))  # fmt: skip
    return 0


def _serve(config: Config, args: argparse.Namespace) -> int:
    from streaming.serve.policy import issue_token, load_policy, load_tokens

    policy = load_policy(config.serve.policy_file)
    if args.action == "token":
        if not args.role or not args.id:
            raise ConfigError(
                "serve token needs --role and --id", hint="e.g. --role analysts --id ana"
            )
        token = issue_token(config.serve.tokens_file, policy, args.role, args.id)
        print(token)
        print(
            f"token {args.id!r} ({args.role}) added to {config.serve.tokens_file}; "
            "this is the only time it is shown",
            file=sys.stderr,
        )
        return 0
    if args.action == "bench":
        from streaming.serve.bench import run_bench

        base = args.url or f"http://{config.serve.host}:{config.serve.port}/"
        token = os.environ.get("LAKEHOUSE_API_TOKEN", "")
        if not token:
            raise ConfigError("serve bench reads with the token in LAKEHOUSE_API_TOKEN (unset)")
        figures = run_bench(base, token, args.requests, args.clients, args.seconds)
        print(json.dumps(figures, indent=2))
        return 0
    import uvicorn

    from streaming.serve.app import create_app

    tokens = load_tokens(config.serve.tokens_file, policy)
    if not len(tokens):
        log.warning(
            "no API tokens in %s: every read will be refused (401); add one with "
            "`lakehouse serve token --role <role> --id <name>`",
            config.serve.tokens_file,
        )
    app = create_app(config, policy, tokens)
    host, port = config.serve.host, config.serve.port
    log.info(
        "serving the tables and the dashboard on http://%s:%d/ (%d tokens, policy %s)",
        host, port, len(tokens), config.serve.policy_file,
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse",
        description="Streaming lakehouse: Kafka -> Bronze -> Silver -> Gold on Spark and Delta.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (or LAKEHOUSE_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, full traces")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = commands.add_parser("kafka", help="the local single-node Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.set_defaults(handler=_kafka)

    s3 = commands.add_parser("s3", help="the local S3 API server (s3proxy), and buckets")
    s3.add_argument("action", choices=["start", "stop", "status", "mb"])
    s3.add_argument("bucket", nargs="?", help="mb: bucket to create on LAKEHOUSE_S3_ENDPOINT")
    s3.set_defaults(handler=_s3)

    topics = commands.add_parser("topics", help="create every configured topic")
    topics.add_argument("action", choices=["create"])
    topics.add_argument("--partitions", type=_positive_int, help="override every topic's count")
    topics.set_defaults(handler=_topics)

    produce = commands.add_parser("produce", help="the fleet simulator: publish events")
    produce.add_argument("topic", choices=[*SIMULATED, "all"])
    produce.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    produce.add_argument("--count", type=int, default=10_000, help="messages (0 = until Ctrl-C)")
    produce.add_argument("--format", choices=["json", "avro"], default="json")
    produce.add_argument("--duplicates", type=float, default=0.0, metavar="P")
    produce.add_argument("--malformed", type=float, default=0.0, metavar="P")
    produce.add_argument("--late", type=float, default=0.0, metavar="P")
    produce.add_argument("--seed", type=int, default=42)
    produce.add_argument("--ledger", type=Path, help="write every acked topic,partition,offset")
    produce.add_argument("--vehicles", type=_positive_int, default=50_000)
    produce.set_defaults(handler=_produce)

    run = commands.add_parser(
        "run",
        help="run a pipeline: all (Kafka -> Bronze -> Silver -> Gold), bronze, or refine "
        "(Bronze -> Silver -> Gold)",
    )
    pipelines = ["all", "bronze", "refine", "silver", "gold"]  # silver, gold: a clear error
    run.add_argument("layer", metavar="pipeline", choices=pipelines)
    run.add_argument("--once", action="store_true", help="process what is available, then exit")
    run.set_defaults(handler=_run)

    show = commands.add_parser("show", help="read a table (delta-rs + DuckDB, no JVM)")
    show.add_argument("table", help="<layer>.<table>, e.g. gold.demand_by_zone_hour")
    show.add_argument("--where", help='SQL condition, e.g. "zone_id = 132 AND hour = 8"')
    show.add_argument("--limit", type=_positive_int, default=20)
    show.add_argument("--json", action="store_true", help="one JSON object per row")
    show.add_argument("--as-of", help="time travel: a version number or an ISO timestamp")
    show.set_defaults(handler=_show)

    history = commands.add_parser("history", help="a table's Delta commits (newest first)")
    history.add_argument("table", help="<layer>.<table>")
    history.add_argument("--limit", type=_positive_int, default=20)
    history.add_argument("--json", action="store_true", help="one JSON object per commit")
    history.set_defaults(handler=_history)

    bench = commands.add_parser("bench", help="the benchmark harness: drain and rate ladders")
    add_bench_arguments(bench)
    bench.set_defaults(handler=_bench)

    chaos = commands.add_parser(
        "chaos",
        help="the pipeline under faults (kill -9, torn checkpoints, broker outages, ...), "
        "every oracle after each scenario",
    )
    chaos.add_argument("--quick", action="store_true", help="a few minutes: the checkpoint "
                       "scenario's kill -9 mid-batch and every malformed kind")  # fmt: skip
    chaos.add_argument("--cycles", type=int, help="kill -9 cycles (default 20; --quick 1)")
    chaos.add_argument("--events", type=int, help="events over the run (default 200,000; "
                       "--quick 1,000)")  # fmt: skip
    chaos.add_argument(
        "--scenarios",
        help="comma-separated: kill, checkpoint, broker, messy, governance, retention, disk, s3 "
        "(default: all this machine and lake can run; --quick: checkpoint)",
    )
    chaos.add_argument(
        "--work",
        type=Path,
        default=Path("chaos-runs"),
        help="where each run's folder, logs and report go (default ./chaos-runs)",
    )
    chaos.add_argument("--keep", action="store_true", help="keep the run's lake, checkpoint and "
                       "broker data")  # fmt: skip
    chaos.add_argument("--s3", action="store_true", help="the lake on the run's own S3 server "
                       "(adds the s3 scenario: that server killed and restarted)")  # fmt: skip
    chaos.set_defaults(handler=_chaos)

    maintain = commands.add_parser(
        "maintain", help="retention, OPTIMIZE + Z-order, log checkpoints, VACUUM (every table)"
    )
    maintain.add_argument("--once", action="store_true", help="one pass, then exit")
    maintain.add_argument("--dry-run", action="store_true", help="say what retention would delete")
    maintain.add_argument("--tables", help="comma-separated globs, e.g. gold.*,silver.telemetry")
    maintain.add_argument("--no-vacuum", action="store_true", help="compact, do not vacuum")
    maintain.add_argument("--json", action="store_true", help="the actions as JSON")
    maintain.set_defaults(handler=_maintain)

    redrive = commands.add_parser(
        "redrive", help="quarantined rows through today's contract again (Silver, then Gold)"
    )
    redrive.add_argument("entity", help="telemetry, bookings, user_events, external, feedback")
    redrive.add_argument("--stage", help="decode, schema, rule or late (default: all four)")
    redrive.add_argument("--rule", help="only rows that failed this rule id")
    redrive.add_argument("--since", help="only rows quarantined at or after this ISO time")
    redrive.add_argument("--dry-run", action="store_true", help="say what it would do")
    redrive.add_argument("--json", action="store_true", help="the report as JSON")
    redrive.set_defaults(handler=_redrive)

    replay = commands.add_parser(
        "replay", help="rebuild an entity's Silver and Gold for a range of Kafka time from Bronze"
    )
    replay.add_argument("entity", help="telemetry, bookings, user_events, external, feedback")
    replay.add_argument("--from", dest="start", required=True, help="ISO time (inclusive)")
    replay.add_argument("--to", dest="end", help="ISO time (exclusive; default: now)")
    replay.add_argument("--dry-run", action="store_true", help="count the rows it would replay")
    replay.add_argument("--json", action="store_true", help="the report as JSON")
    replay.set_defaults(handler=_replay)

    lineage = commands.add_parser(
        "lineage", help="walk rows back: Gold -> Silver -> Bronze -> Kafka offsets"
    )
    lineage.add_argument("table", help="e.g. gold.demand_by_zone_hour or silver.bookings")
    lineage.add_argument("--where", required=True, help="SQL over the table's columns")
    lineage.add_argument("--limit", type=_positive_int, default=20, help="Kafka records listed")
    lineage.add_argument("--json", action="store_true", help="the walk as JSON")
    lineage.set_defaults(handler=_lineage)

    erase = commands.add_parser(
        "erase", help="GDPR erasure of one person from every layer, with a receipt and a proof"
    )
    erase.add_argument("--user-id", help="the subject's user id")
    erase.add_argument("--email", help="the subject's e-mail address")
    erase.add_argument("--phone", help="the subject's phone number, as it was sent")
    erase.add_argument("--dry-run", action="store_true", help="count the subject's rows only")
    erase.add_argument("--receipt", type=Path, help="also write the JSON receipt here")
    erase.add_argument("--json", action="store_true", help="print the receipt as JSON")
    erase.add_argument(
        "--wait-seconds", type=_positive_int, default=600,
        help="how long a running pipeline may take to apply it (default 600)",
    )  # fmt: skip
    erase.set_defaults(handler=_erase)

    status = commands.add_parser(
        "status", help="pipelines' last batches, Kafka lag, Gold freshness, quarantine by rule"
    )
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status.add_argument(
        "--stale-seconds", type=_positive_int, help="exit 7 if a Gold table is older "
        "(default LAKEHOUSE_STALE_SECONDS, 900)",
    )  # fmt: skip
    status.add_argument("--no-kafka", action="store_true", help="skip the lag (no broker)")
    status.set_defaults(handler=_status)

    serve = commands.add_parser(
        "serve",
        help="the query API and live dashboard over the tables (no JVM); "
        "`serve token` issues an API token",
    )
    serve.add_argument(
        "action", nargs="?", choices=["token", "bench"],
        help="token: issue an API token; bench: latency and concurrency of a running server",
    )  # fmt: skip
    serve.add_argument("--role", help="token: the role it grants (see access.toml)")
    serve.add_argument("--id", help="token: its name in the audit log")
    serve.add_argument("--url", help="bench: the server (default: LAKEHOUSE_SERVE_HOST/PORT)")
    serve.add_argument("--requests", type=_positive_int, default=500, help="bench: per read kind")
    serve.add_argument("--clients", type=_positive_int, default=50, help="bench: dashboards")
    serve.add_argument("--seconds", type=float, default=30.0, help="bench: dashboard phase")
    serve.set_defaults(handler=_serve)

    settings = commands.add_parser(
        "settings", help="every setting: its variable, TOML key, default and meaning"
    )
    settings.add_argument("--markdown", action="store_true", help="as the README's table")
    settings.set_defaults(handler=_settings)

    verify = commands.add_parser("verify", help="check the correctness oracles")
    verify.add_argument("--ledger", type=Path, action="append", help="producer ledger (repeat)")
    verify.add_argument("--report", type=Path, help="also write the JSON report here")
    verify.set_defaults(handler=_verify)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
