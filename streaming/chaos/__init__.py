"""`lakehouse chaos`: the real pipeline under faults, and every oracle after each scenario.

A chaos run owns what it breaks: a Kafka broker of its own (the local broker's code on free
ports under the work folder), one lake with its own topics, a ledgered producer at a fixed rate,
and `lakehouse run all` as a child process group. Each scenario injects its faults while events
flow, lets the pipeline catch up, stops it, and runs the oracles of `streaming.verify` in the
harness's own Spark session: the ledgers against Bronze, Silver's books, Gold against a
recomputation. The scenarios share the lake, so every check covers all the events so far.

- `faults.py`: the broker and the pipeline as processes to kill, pause and restart; the
  checkpoint's files to tear.
- `oracles.py`: the oracles' counts per scenario, and the proof that each fails on a row
  dropped and another doubled.
- `scenarios.py`: what each scenario does.
- `harness.py`: the run, its table, and the JSON and Markdown reports.
"""
