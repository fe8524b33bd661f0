"""The front door of every process the service starts from a command line (`lakehouse`,
`python -m streaming.bench`): its log format, and one `error:` line per failure."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from streaming.errors import LakehouseError


def guarded(run: Callable[[], int], verbose: bool) -> int:
    """Run a command: one `error:` line and its exit code per failure, never a JVM trace."""
    try:
        return run()
    except LakehouseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a JVM or library error the service did not anticipate
        if verbose:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {first[:500]} (run with -v for details)", file=sys.stderr)
        return 1


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # py4j logs every callback at INFO; librdkafka logs every reconnect attempt.
    for noisy in ("py4j", "streaming.kafka.client"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
