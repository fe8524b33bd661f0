"""`lakehouse serve`: the query API and the dashboard (FastAPI on uvicorn, no JVM).

Every table read goes through one path: the caller's token names a role; the role's policy says
whether the table may be read and how its columns are masked; the read runs (`tables.run`); an
audit row records who read what, allowed or not.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from streaming import catalog
from streaming.catalog import TableRef
from streaming.config import Config
from streaming.serve import dashboard
from streaming.serve.audit import AuditLog, AuditRow, now
from streaming.serve.fleet import VEHICLE_STATE, Fleet
from streaming.serve.policy import Policy, Principal, Tokens, load_policy, load_tokens
from streaming.serve.tables import (
    MEDIA,
    BadRequest,
    Forbidden,
    NotFound,
    Read,
    Result,
    TableCache,
    json_value,
    parse_filter,
    render,
    run,
)
from streaming.status import QUARANTINE_WINDOW, freshness, quarantine_counts

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("dashboard.html")


class Unauthorized(Exception):
    """No token, or one the token file does not know (401)."""


class ApiMetrics:
    """Requests and latency per route, in their own registry (`GET /metrics`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lakehouse_api_requests_total",
            "API requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lakehouse_api_request_seconds",
            "API request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )


class Serving:
    """What the app holds: the policy, the tokens, open tables, the fleet copy, the audit log."""

    def __init__(self, config: Config, policy: Policy, tokens: Tokens) -> None:
        self.config = config
        self.policy = policy
        self.tokens = tokens
        self.tables = TableCache(config)
        self.audit = AuditLog(config)
        self.fleet = Fleet(self.tables)
        self.metrics = ApiMetrics()
        self.pages = DashboardPages(self)
        self._health: tuple[float, bytes] | None = None
        self._health_lock = threading.Lock()

    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send a bearer token: Authorization: Bearer <token>")
        principal = self.tokens.principal(token.strip())
        if principal is None:
            raise Unauthorized("unknown token")
        return principal

    def read(
        self,
        who: Principal,
        ref: TableRef,
        read: Read,
        output: str = "json",
        as_of: int | None = None,
        record: Callable[[AuditRow], None] | None = None,
    ) -> Result:
        """One audited, policy-checked read (`record` receives its audit row)."""
        status, reason, rows, version = 200, "", 0, None
        try:
            if not who.role.may_read(str(ref)):
                raise Forbidden(self.policy.denial(who.role, str(ref)))
            snapshot = self.tables.snapshot(ref, as_of)
            version = snapshot.version
            result = run(snapshot, self.policy.view(who.role, list(snapshot.types)), read)
            rows = result.rows.num_rows
            return result
        except (BadRequest, Forbidden, NotFound) as exc:
            status, reason = _STATUS[type(exc)], str(exc)
            raise
        finally:
            (record or self.audit.record)(
                AuditRow(
                    now(),
                    who.token_id,
                    who.role.name,
                    str(ref),
                    version,
                    list(read.columns),
                    " and ".join(map(str, read.filters)),
                    ",".join(read.order),
                    output,
                    rows,
                    status,
                    reason,
                )
            )

    def health(self) -> dict[str, Any]:
        """Freshness of every Gold table: its newest event time, stale past the threshold."""
        tables: dict[str, dict[str, Any]] = {}
        for ref in (t for t in catalog.all_tables(self.config) if t.layer == "gold"):
            try:
                snapshot = self.tables.snapshot(ref)
                fresh = freshness(
                    snapshot.version, snapshot.dataset, self.config.serve.stale_seconds
                )
            except NotFound:
                fresh = freshness(None, None, self.config.serve.stale_seconds)
            tables[str(ref)] = fresh.__dict__
        return {
            "status": "stale" if any(t["stale"] for t in tables.values()) else "ok",
            "stale_seconds": self.config.serve.stale_seconds,
            "tables": tables,
        }

    def health_document(self) -> bytes:
        """`health()` as JSON, computed at most once per refresh interval (probes are many)."""
        with self._health_lock:
            cached = self._health
            if cached is None or time.monotonic() - cached[0] >= self.config.serve.refresh_seconds:
                cached = (time.monotonic(), _encoded(self.health()))
                self._health = cached
            return cached[1]

    def quality(
        self, who: Principal, record: Callable[[AuditRow], None] | None = None
    ) -> dict[str, Any]:
        """Quarantined rows per entity, stage and rule over the last hour: counts only, no row,
        so every role may see them (the quarantined rows themselves are admins' only)."""
        since = datetime.now(UTC) - QUARANTINE_WINDOW
        counts: list[dict[str, Any]] = []
        for entity in self.config.entities:
            try:
                snapshot = self.tables.snapshot(TableRef("quarantine", entity))
            except NotFound:
                continue
            rows = quarantine_counts(snapshot.dataset, since)
            counts += [{"entity": entity, "stage": s, "rule": r, "rows": n} for s, r, n in rows]
        (record or self.audit.record)(
            AuditRow(
                now(),
                who.token_id,
                who.role.name,
                "quarantine.*",
                None,
                [],
                f"_quarantined_at:ge:{since.isoformat()}",
                "",
                "counts",
                len(counts),
                200,
                "",
            )
        )
        return {"since": since.isoformat(), "counts": counts}


class DashboardPages:
    """The dashboard's document per role, built at most once per refresh interval and shared by
    every client of that role (a page refreshes every 5 s; 50 walls must not mean 50 builds).
    Each request is still audited: a shared page's reads are recorded again for its caller."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self._pages: dict[str, tuple[float, bytes, list[AuditRow]]] = {}
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)

    def page(self, who: Principal) -> bytes:
        serving = self.serving
        with self._locks[who.role.name]:  # one build per role at a time; the others wait for it
            cached = self._pages.get(who.role.name)
            if cached and time.monotonic() - cached[0] < serving.config.serve.refresh_seconds:
                for row in cached[2]:
                    serving.audit.record(replace(row, read_at=now(), token_id=who.token_id))
                return cached[1]
            reads: list[AuditRow] = []

            def record(row: AuditRow) -> None:
                reads.append(row)
                serving.audit.record(row)

            def read(ref: TableRef, read: Read) -> Result:
                return serving.read(who, ref, read, output="dashboard", record=record)

            def statuses() -> dict[str, Any]:
                copy = _fleet(serving, who, "vehicles by status", record)
                counts = collections.Counter(v["status"] for v in copy.by_vehicle.values())
                return {"version": copy.version, "vehicles": len(copy.by_vehicle),
                        "statuses": counts}  # fmt: skip

            built = dashboard.panels(
                read, lambda: serving.quality(who, record), statuses, serving.health()
            )
            built["role"] = who.role.name
            document = _encoded(built)
            self._pages[who.role.name] = (time.monotonic(), document, reads)
            return document


def _principal(request: Request) -> Principal:
    serving: Serving = request.app.state.serving
    return serving.principal(request)


Who = Annotated[Principal, Depends(_principal)]
_STATUS: dict[type, int] = {BadRequest: 400, Forbidden: 403, NotFound: 404, Unauthorized: 401}


def create_app(
    config: Config, policy: Policy | None = None, tokens: Tokens | None = None
) -> FastAPI:
    policy = policy or load_policy(config.serve.policy_file)
    tokens = tokens or load_tokens(config.serve.tokens_file, policy)
    serving = Serving(config, policy, tokens)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        serving.audit.start()
        serving.fleet.start()
        try:
            yield
        finally:
            serving.fleet.stop()
            serving.audit.stop()

    app = FastAPI(title="lakehouse", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.serving = serving

    @app.middleware("http")
    async def measured(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        serving.metrics.requests.labels(name, str(response.status_code)).inc()
        serving.metrics.latency.labels(name).observe(time.perf_counter() - started)
        return response

    for error, status in _STATUS.items():
        app.add_exception_handler(error, _one_line(status))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/dashboard/zones.svg", include_in_schema=False)
    def zones_svg() -> Response:
        return Response(dashboard.zone_map(config.geofences_file), media_type="image/svg+xml")

    @app.get("/dashboard/data")
    def dashboard_data(who: Who) -> Response:
        return Response(serving.pages.page(who), media_type="application/json")

    @app.get("/health")
    def health() -> Response:
        return Response(serving.health_document(), media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(serving.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/quality")
    def quality(who: Who) -> Response:
        return _json(serving.quality(who))

    @app.get("/tables")
    def tables(who: Who) -> Response:
        listed = []
        for ref in catalog.all_tables(config):
            if who.role.may_read(str(ref)):
                try:
                    version: int | None = serving.tables.snapshot(ref).version
                except NotFound:
                    version = None
                listed.append({"table": str(ref), "layer": ref.layer, "version": version})
        return _json({"role": who.role.name, "tables": listed})

    @app.get("/tables/{name}")
    def table(
        who: Who,
        name: str,
        columns: Annotated[str, Query(max_length=4000)] = "",
        filter: Annotated[list[str] | None, Query(max_length=50)] = None,
        order: Annotated[str, Query(max_length=1000)] = "",
        limit: int = 100,
        offset: int = 0,
        format: str = "json",
        as_of: int | None = None,
    ) -> Response:
        ref = _table(config, name)
        if format not in MEDIA:
            raise BadRequest(f"format must be one of {', '.join(MEDIA)}, got {format!r}")
        read = Read(
            columns=tuple(c for c in columns.split(",") if c),
            filters=tuple(parse_filter(f) for f in filter or []),
            order=tuple(o for o in order.split(",") if o),
            limit=limit,
            offset=offset,
        )
        result = serving.read(who, ref, read, format, as_of)
        headers = {
            "X-Table-Version": str(result.snapshot.version),
            "X-Total-Rows": str(result.total),
        }
        return Response(render(result, read, format), media_type=MEDIA[format], headers=headers)

    @app.get("/tables/{name}/history")
    def history(who: Who, name: str, limit: int = 20) -> Response:
        ref = _table(config, name)
        if not who.role.may_read(str(ref)):
            raise Forbidden(policy.denial(who.role, str(ref)))
        if not 1 <= limit <= 1000:
            raise BadRequest(f"limit must be 1 to 1000, got {limit}")
        return _json({"table": str(ref), "history": serving.tables.history(ref, limit)})

    @app.get("/vehicles/{vehicle_id}")
    def vehicle(who: Who, vehicle_id: str) -> Response:
        copy = _fleet(serving, who, vehicle_id)
        state = copy.by_vehicle.get(vehicle_id)
        if state is None:
            raise NotFound(f"no vehicle {vehicle_id!r} in {VEHICLE_STATE} version {copy.version}")
        return _json({"version": copy.version, "vehicle": state})

    @app.get("/zones/{zone_id}/vehicles")
    def zone_vehicles(who: Who, zone_id: int, status: str = "available") -> Response:
        copy = _fleet(serving, who, f"zone_id:eq:{zone_id}")
        found = [v for v in copy.by_zone.get(zone_id, []) if not status or v["status"] == status]
        return _json(
            {
                "version": copy.version,
                "zone_id": zone_id,
                "status": status,
                "count": len(found),
                "vehicles": found,
            }
        )

    return app


def _fleet(
    serving: Serving,
    who: Principal,
    asked: str,
    record: Callable[[AuditRow], None] | None = None,
) -> Any:
    """The in-memory fleet, for a role that may read vehicle_state (audited)."""
    allowed = who.role.may_read(str(VEHICLE_STATE))
    copy = serving.fleet.copy
    status = 200 if allowed and copy else 403 if not allowed else 404
    reason = (
        ""
        if status == 200
        else serving.policy.denial(who.role, str(VEHICLE_STATE))
        if status == 403
        else f"{VEHICLE_STATE} has not been written yet"
    )
    (record or serving.audit.record)(
        AuditRow(
            now(),
            who.token_id,
            who.role.name,
            str(VEHICLE_STATE),
            copy.version if copy else None,
            [],
            asked,
            "",
            "lookup",
            0,
            status,
            reason,
        )
    )
    if status == 403:
        raise Forbidden(reason)
    if status == 404:
        raise NotFound(reason)
    return copy


def _table(config: Config, name: str) -> TableRef:
    ref = catalog.parse(config, name)
    if ref is None:
        raise NotFound(f"no table {name!r}: GET /tables lists the tables you may read")
    return ref


def _encoded(document: Any) -> bytes:
    import json

    return json.dumps(document, default=json_value).encode()


def _json(document: Any) -> Response:
    return Response(_encoded(document), media_type="application/json")


def _one_line(status: int) -> Callable[[Request, Exception], Any]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    return handle
