"""Serving: the query API and live dashboard over the tables (`lakehouse serve`), no JVM.

- `policy`: roles, their tables and column masks (`access.toml`); bearer tokens (digests only).
- `tables`: one role's read of one table (delta-rs opens it, DuckDB queries it, values bound).
- `fleet`: `silver/vehicle_state` in memory, swapped when a new Delta version lands.
- `audit`: every read, allowed or denied, appended to `audit/reads`.
- `dashboard`: the page's panels (reads through the same policy) and the zone map.
- `app`: the FastAPI application; `bench`: latency and concurrency of a running server.
"""
