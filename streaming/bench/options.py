"""The benchmark's flags: parsed and checked here, with no heavy import, so `lakehouse --help`
stays fast. Every impossible value is a ConfigError before anything touches Kafka or Spark."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from streaming.errors import ConfigError

DEFAULT_EVENTS = 2_000_000
DEFAULT_RATES = (10_000, 25_000, 50_000, 75_000)
DEFAULT_RATE_SECONDS = 60
QUICK_EVENTS = 5_000
QUICK_RATES = (1_000,)
QUICK_RATE_SECONDS = 10
LADDERS = ("drain", "rates")
# What the rate ladder feeds: the whole chain (`lakehouse run all`), and Bronze alone, as it runs
# in production in a container of its own (`lakehouse run bronze`), for Bronze's own target.
RATE_PIPELINES = ("all", "bronze")
# --quick feeds only the chain, on the application that drained the corpus: Bronze alone would
# cost a JVM start of its own.
QUICK_RATE_PIPELINES = ("all",)
DRAIN_MODES = ("separate", "chained")


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run, every default resolved."""

    events: int
    rates: tuple[int, ...]
    rate_seconds: int
    out: Path
    ladders: tuple[str, ...]
    rate_pipelines: tuple[str, ...]
    drain_mode: str  # separate: one Spark application per step and rate; chained: one for all
    seed: int
    quick: bool
    work: Path | None
    keep: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `lakehouse bench` (and of `python -m streaming.bench`)."""
    parser.add_argument(
        "--events", type=int, help=f"telemetry events in the corpus (default {DEFAULT_EVENTS:,})"
    )
    parser.add_argument(
        "--rates",
        help="events per second of the rate ladder, comma-separated "
        f"(default {','.join(map(str, DEFAULT_RATES))})",
    )
    parser.add_argument(
        "--rate-seconds", type=int, help=f"seconds per rate (default {DEFAULT_RATE_SECONDS})"
    )
    parser.add_argument(
        "--out", type=Path, help="results folder (default bench-results/<UTC timestamp>)"
    )
    parser.add_argument(
        "--ladders", default=",".join(LADDERS), help="which ladders to run (default drain,rates)"
    )
    parser.add_argument(
        "--rate-pipelines",
        help="what each rate feeds: all (`lakehouse run all`) and/or bronze (`lakehouse run "
        f"bronze` alone) (default {','.join(RATE_PIPELINES)}; with --quick "
        f"{','.join(QUICK_RATE_PIPELINES)})",
    )
    parser.add_argument(
        "--drain-mode",
        choices=DRAIN_MODES,
        help="separate: each Spark step in its own application on an empty lake, and a fresh "
        "`lakehouse run all` per rate (default); chained: one application runs every Spark step "
        "layer after layer and then serves the rate ladder (the default with --quick)",
    )
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} events, chained drain ladder, one rate of {QUICK_RATES[0]:,}/s "
        f"for {QUICK_RATE_SECONDS} s on `run all`",
    )
    parser.add_argument(
        "--work", type=Path, help="folder for the throw-away lakes (default: a temporary folder)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the throw-away lakes and topics afterwards"
    )


def options_from_args(args: argparse.Namespace, now: datetime | None = None) -> BenchOptions:
    """Resolve the defaults (`--quick` changes them) and refuse impossible values."""
    quick = bool(args.quick)
    events = args.events if args.events is not None else QUICK_EVENTS if quick else DEFAULT_EVENTS
    if events < 1_000:
        raise ConfigError(f"--events must be at least 1000, got {events}")
    rates = parse_rates(args.rates) if args.rates else QUICK_RATES if quick else DEFAULT_RATES
    seconds = args.rate_seconds
    if seconds is None:
        seconds = QUICK_RATE_SECONDS if quick else DEFAULT_RATE_SECONDS
    if seconds < 5:
        raise ConfigError(f"--rate-seconds must be at least 5, got {seconds}")
    ladders = _names("--ladders", args.ladders, LADDERS)
    pipelines: tuple[str, ...] = QUICK_RATE_PIPELINES if quick else RATE_PIPELINES
    if args.rate_pipelines is not None:
        pipelines = _names("--rate-pipelines", args.rate_pipelines, RATE_PIPELINES)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return BenchOptions(
        events=events,
        rates=rates,
        rate_seconds=seconds,
        out=args.out if args.out is not None else Path("bench-results") / stamp,
        ladders=ladders,
        rate_pipelines=pipelines,
        drain_mode=args.drain_mode or ("chained" if quick else "separate"),
        seed=args.seed,
        quick=quick,
        work=args.work,
        keep=bool(args.keep),
    )


def _names(flag: str, text: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated subset of `allowed`, in the order given."""
    names = tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    if not names or any(name not in allowed for name in names):
        raise ConfigError(
            f"{flag} must name {' and/or '.join(allowed)}, got {text!r}",
            hint=f"e.g. {flag} {allowed[0]} or {flag} {','.join(allowed)}",
        )
    return names


def parse_rates(text: str) -> tuple[int, ...]:
    """`"10000,25000"` -> (10000, 25000); sorted, each a whole number of events per second."""
    rates = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        try:
            rate = int(float(part[:-1]) * 1000) if part.lower().endswith("k") else int(part)
        except ValueError:
            raise ConfigError(
                f"--rates must be whole numbers of events per second, got {part!r}",
                hint="e.g. --rates 10000,25000 or --rates 10k,25k",
            ) from None
        if rate < 1:
            raise ConfigError(f"--rates must be positive, got {rate}")
        rates.append(rate)
    return tuple(sorted(set(rates)))
