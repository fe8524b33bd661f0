"""`python -m streaming.bench [flags]`: the benchmark without the `lakehouse` front door, and
`python -m streaming.bench step ...`: one drain step, the process the ladder meters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streaming.bench.options import add_arguments
from streaming.config import load_config
from streaming.console import configure_logging, guarded
from streaming.errors import LakehouseError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["step"]:
        return _step(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m streaming.bench",
        description="Throughput and freshness of the lakehouse on this machine.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (or LAKEHOUSE_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, full traces")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)

    def run() -> int:
        from streaming.bench.harness import bench

        return bench(load_config(config_file=args.config), args)

    return guarded(run, args.verbose)


def _step(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming.bench step")
    parser.add_argument(
        "--phases", required=True, help="comma-separated: raw,noop,bronze,all,stream"
    )
    parser.add_argument("--expect", type=int, required=True, help="corpus events")
    parser.add_argument("--result", type=Path, required=True, help="where to write the report")
    args = parser.parse_args(argv)
    configure_logging(False)

    def run() -> int:
        from streaming.bench.steps import PHASES, run_step

        phases = [p for p in args.phases.split(",") if p]
        unknown = [p for p in phases if p not in PHASES]
        if unknown or not phases:
            raise LakehouseError(f"unknown step phase(s) {unknown}; known: {', '.join(PHASES)}")
        run_step(load_config(), phases, args.expect, args.result)
        return 0

    return guarded(run, False)


if __name__ == "__main__":
    sys.exit(main())
