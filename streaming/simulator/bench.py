"""Measures generation + encoding speed without a broker: the simulator's own ceiling.

python -m streaming.simulator.bench --entity telemetry --format json --count 500000
"""

from __future__ import annotations

import argparse
import time

from streaming.simulator.stream import MessageStream


def measure(entity: str, fmt: str, count: int, chunk: int = 5_000, seed: int = 42) -> float:
    """Messages per second for `count` messages, after one warm-up chunk."""
    stream = MessageStream(entity, fmt, seed=seed)
    stream.next_chunk(chunk)
    done = 0
    start = time.perf_counter()
    while done < count:
        done += len(stream.next_chunk(min(chunk, count - done)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entity", default="telemetry")
    parser.add_argument("--format", default="json", choices=("json", "avro"))
    parser.add_argument("--count", type=int, default=500_000)
    args = parser.parse_args()
    rate = measure(args.entity, args.format, args.count)
    print(f"{args.entity} {args.format}: {rate:,.0f} msg/s generated and encoded")


if __name__ == "__main__":
    main()
