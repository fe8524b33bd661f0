"""`lakehouse serve`'s API over real Delta tables (written here with delta-rs, no JVM): roles
against ADR-17's matrix, masks in every format, paging, time travel, bad input, the audit."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from fastapi.testclient import TestClient

from streaming.catalog import all_tables
from streaming.config import Config, load_config
from streaming.serve.app import create_app
from streaming.serve.policy import issue_token, load_policy

TODAY = date(2026, 12, 4)
AT = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
ROLES = ("data_scientists", "ml_engineers", "analysts", "operations", "admins")
# ADR-17's permissions matrix, table by table (quarantine holds raw payloads, as Bronze does).
MATRIX = {
    "bronze.telemetry": {"admins"},
    "quarantine.bookings": {"admins"},
    "silver.bookings": {"data_scientists", "ml_engineers", "operations", "admins"},
    "silver.user_events": {"data_scientists", "ml_engineers", "admins"},
    "silver.vehicle_state": {"data_scientists", "ml_engineers", "operations", "admins"},
    "gold.demand_by_zone_hour": set(ROLES),
    "audit.reads": {"admins"},
}


def _write(config: Config, table: str, rows: list[dict], mode: Any = "append", **kw: Any) -> None:
    layer, name = table.split(".")
    write_deltalake(config.table_path(layer, name), pa.Table.from_pylist(rows), mode=mode, **kw)


def _booking(i: int) -> dict:
    return {
        "booking_id": f"B{i:04d}",
        "user_id": f"U{i % 7:04d}",
        "vehicle_type": ["car", "ebike"][i % 2],
        "revenue": round(3.5 * i, 2),
        "status": "completed",
        "event_timestamp": AT + timedelta(minutes=i),
        "date": TODAY,
        "email_token": f"tok{i:04d}",
        "email_masked": f"u***{i}@example.com",
        "phone_token": f"ptok{i:04d}",
        "phone_masked": f"+1******{i:02d}",
        "_kafka_offset": i,
        "_batch_id": 0,
    }


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, dict[str, str], Config]]:
    root = tmp_path_factory.mktemp("serve")
    config = load_config(
        {
            "LAKEHOUSE_ROOT": str(root / "lake"),
            "LAKEHOUSE_API_TOKENS": str(root / "tokens.toml"),
            "LAKEHOUSE_SERVE_REFRESH": "0.2",
            "LAKEHOUSE_STALE_SECONDS": "3600",
        }
    )
    _write(
        config,
        "bronze.telemetry",
        [{"key": b"V1", "value": b'{"email":"a@b.c"}', "_kafka_offset": 0}],
    )
    _write(
        config,
        "quarantine.bookings",
        [
            {
                "value": b"{}",
                "stage": "decode",
                "rule_ids": ["x"],
                "_quarantined_at": datetime.now(UTC),
            }
        ],
    )
    _write(config, "silver.bookings", [_booking(i) for i in range(20)], partition_by=["date"])
    _write(config, "silver.bookings", [_booking(i) for i in range(20, 25)], partition_by=["date"])
    _write(config, "silver.user_events", [{"event_id": "E1", "user_id": "U1", "email_token": "t"}])
    _write(
        config,
        "silver.vehicle_state",
        [
            {
                "vehicle_id": f"V{i}",
                "status": "available" if i % 2 else "in_use",
                "zone_id": 100 + i % 3,
                "battery_level": 50.0 + i,
                "event_timestamp": AT,
                "_updated_at": AT,
            }
            for i in range(9)
        ],
    )
    _write(
        config,
        "gold.demand_by_zone_hour",
        [
            {
                "zone_id": z,
                "vehicle_type": t,
                "date": TODAY,
                "hour": 9,
                "booking_count": z % 4,
                "total_revenue": Decimal("10.25") * z,
                "last_event_time": datetime.now(UTC),
                "_users": [f"U{z}"],
            }
            for z in range(1, 8)
            for t in ("car", "ebike")
        ],
        partition_by=["date"],
    )
    policy = load_policy(config.serve.policy_file)
    tokens = {
        role: issue_token(config.serve.tokens_file, policy, role, f"{role}-1") for role in ROLES
    }
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client, tokens, config


def _get(served, role: str | None, path: str, **params):
    client, tokens, _ = served
    headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
    return client.get(path, params=params, headers=headers)


def test_the_policy_file_is_adr17s_matrix_and_every_table_is_covered(served) -> None:
    _, _, config = served
    policy = load_policy(config.serve.policy_file)
    assert set(policy.roles) == set(ROLES)
    for table, allowed in MATRIX.items():
        assert {r for r in ROLES if policy.roles[r].may_read(table)} == allowed, table
    for ref in all_tables(
        config
    ):  # Bronze, quarantine and the audit: admins only, whatever the table
        if ref.layer in ("bronze", "quarantine", "audit"):
            assert [r for r in ROLES if policy.roles[r].may_read(str(ref))] == ["admins"], ref


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reads_what_it_is_granted_and_is_refused_the_rest(served, role: str) -> None:
    for table, allowed in MATRIX.items():
        if table == "audit.reads":
            continue  # written by the server itself, tested with the audit
        response = _get(served, role, f"/tables/{table}", limit=5)
        if role in allowed:
            assert response.status_code == 200, (table, response.text)
            assert response.json()["rows"], table
        else:
            assert response.status_code == 403, (table, response.text)
            assert response.json() == {"error": response.json()["error"]}
            assert f"role {role} may not read {table}" in response.json()["error"]
    listed = {t["table"] for t in _get(served, role, "/tables").json()["tables"]}
    assert {t for t, allowed in MATRIX.items() if role in allowed} <= listed
    assert not {t for t, allowed in MATRIX.items() if role not in allowed} & listed


def _as_rows(response, output: str) -> list[dict]:
    if output == "json":
        return response.json()["rows"]
    if output == "csv":
        import csv

        return [
            {k: (v or None) for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(response.text))
        ]
    return pa.ipc.open_stream(response.content).read_all().to_pylist()


@pytest.mark.parametrize("output", ["json", "csv", "arrow"])
def test_pii_is_masked_for_every_role_but_admins_in_every_format(served, output: str) -> None:
    for role in ("operations", "data_scientists", "admins"):
        response = _get(
            served, role, "/tables/silver.bookings", format=output, order="booking_id", limit=3
        )
        assert response.status_code == 200, response.text
        rows = _as_rows(response, output)
        assert [r["booking_id"] for r in rows] == ["B0000", "B0001", "B0002"]
        for row in rows:
            if role == "admins":
                assert row["user_id"].startswith("U") and row["email_token"].startswith("tok")
                assert "_kafka_offset" in row  # internal columns: admins only
            else:
                assert (row["user_id"], row["email_token"], row["phone_token"]) == (
                    None,
                    None,
                    None,
                )
                assert "_kafka_offset" not in row and "_batch_id" not in row
            assert "***" in row["email_masked"]  # masked at ingestion, for every role
    gold = _get(served, "analysts", "/tables/gold.demand_by_zone_hour", format=output).text
    assert "_users" not in gold and "U1" not in gold  # partial aggregates' member sets: internal


def test_masked_and_internal_columns_cannot_be_filtered_or_ordered_by(served) -> None:
    for params in (
        {"filter": "user_id:eq:U0001"},
        {"order": "-email_token"},
        {"filter": "email_masked:ge:a"},
    ):
        response = _get(served, "operations", "/tables/silver.bookings", **params)
        assert response.status_code == 403, (params, response.text)
        assert "masked for this role" in response.json()["error"]
    hidden = _get(served, "operations", "/tables/silver.bookings", filter="_kafka_offset:eq:3")
    assert hidden.status_code == 400 and "no column '_kafka_offset'" in hidden.json()["error"]
    admin = _get(served, "admins", "/tables/silver.bookings", filter="user_id:eq:U0001")
    assert admin.status_code == 200 and {r["user_id"] for r in admin.json()["rows"]} == {"U0001"}


def test_filters_columns_and_pages_cover_every_row_once_in_a_stable_order(served) -> None:
    def page(offset: int):
        return _get(
            served,
            "analysts",
            "/tables/gold.demand_by_zone_hour",
            order="-booking_count",
            columns="zone_id,vehicle_type,booking_count",
            filter=["zone_id:ge:2", "hour:eq:9"],
            limit=4,
            offset=offset,
        ).json()

    pages = [page(offset) for offset in range(0, 16, 4)]
    rows = [tuple(r.values()) for p in pages for r in p["rows"]]
    assert pages[0]["total"] == 12 and len(rows) == 12 == len(set(rows))
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    assert {r[0] for r in rows} == set(range(2, 8))
    assert [page(4) for _ in range(3)] == [pages[1]] * 3  # ties broken the same way every time
    chosen = _get(served, "analysts", "/tables/gold.demand_by_zone_hour", filter="zone_id:in:3,5")
    assert {r["zone_id"] for r in chosen.json()["rows"]} == {3, 5}
    assert chosen.json()["rows"][0]["total_revenue"] in {"30.75", "51.25"}  # exact decimals


def test_time_travel_reads_a_version_and_history_lists_them(served) -> None:
    latest = _get(served, "operations", "/tables/silver.bookings", limit=1)
    old = _get(served, "operations", "/tables/silver.bookings", as_of=0, limit=1)
    assert (latest.json()["total"], old.json()["total"]) == (25, 20)
    assert (latest.headers["x-table-version"], old.headers["x-table-version"]) == ("1", "0")
    history = _get(served, "operations", "/tables/silver.bookings/history").json()["history"]
    assert [h["version"] for h in history] == [1, 0]
    missing = _get(served, "operations", "/tables/silver.bookings", as_of=7)
    assert missing.status_code == 404 and "versions 0 to 1" in missing.json()["error"]
    assert _get(served, "analysts", "/tables/silver.bookings/history").status_code == 403


@pytest.mark.parametrize(
    ("params", "status", "phrase"),
    [
        ({"filter": "revenue:gt:1 OR 1=1"}, 400, "does not fit its column"),
        ({"filter": "revenue>3"}, 400, "is not column:op:value"),
        ({"filter": "revenue:like:3"}, 400, "is not column:op:value"),
        ({"filter": "nope:eq:3"}, 400, "no column 'nope'"),
        ({"columns": "booking_id,nope"}, 400, "no column 'nope'"),
        ({"order": "nope"}, 400, "no column 'nope'"),
        ({"limit": 100_000}, 400, "limit must be 1 to 10000"),
        ({"limit": 0}, 400, "limit must be 1 to 10000"),
        ({"offset": -1}, 400, "offset must be 0 or more"),
        ({"offset": "x"}, 400, "offset: Input should be a valid integer"),
        ({"format": "xml"}, 400, "format must be one of json, csv, arrow"),
        ({"filter": "booking_id:eq:'; DROP TABLE t; --"}, 200, ""),  # a value, matching nothing
    ],
)
def test_bad_input_gets_a_one_line_4xx(served, params: dict, status: int, phrase: str) -> None:
    response = _get(served, "operations", "/tables/silver.bookings", **params)
    assert response.status_code == status, response.text
    body = response.json()
    if status == 200:
        assert body["total"] == 0
    else:
        assert list(body) == ["error"] and phrase in body["error"] and "\n" not in body["error"]
        assert "Traceback" not in response.text


def test_unknown_tokens_and_tables(served) -> None:
    client, _, _ = served
    assert _get(served, None, "/tables/gold.demand_by_zone_hour").status_code == 401
    wrong = client.get("/tables", headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert _get(served, "admins", "/tables/gold.nope").status_code == 404
    assert _get(served, "admins", "/tables/../../etc").status_code == 404


def test_vehicle_lookups_see_a_new_state_within_one_refresh(served) -> None:
    _, _, config = served
    first = _get(served, "operations", "/vehicles/V3").json()
    assert first["vehicle"]["battery_level"] == 53.0
    zone = _get(served, "operations", "/zones/100/vehicles").json()
    # zone 100: V0, V3, V6; available: the odd ones
    assert (zone["count"], [v["vehicle_id"] for v in zone["vehicles"]]) == (1, ["V3"])
    everyone = _get(served, "operations", "/zones/100/vehicles", status="").json()
    assert sorted(v["vehicle_id"] for v in everyone["vehicles"]) == ["V0", "V3", "V6"]
    assert _get(served, "analysts", "/vehicles/V3").status_code == 403
    assert _get(served, "operations", "/vehicles/V404").status_code == 404
    _write(
        config,
        "silver.vehicle_state",
        [
            {
                "vehicle_id": "V3",
                "status": "charging",
                "zone_id": 101,
                "battery_level": 12.5,
                "event_timestamp": AT + timedelta(minutes=5),
                "_updated_at": AT,
            }
        ],
        mode="overwrite",
    )
    committed = time.monotonic()
    while _get(served, "operations", "/vehicles/V3").json()["vehicle"]["battery_level"] != 12.5:
        assert time.monotonic() - committed < 5, "the new state was not served"
        time.sleep(0.05)
    assert time.monotonic() - committed < 1.0  # refresh every 0.2 s here


def test_health_and_metrics_need_no_token(served) -> None:
    health = _get(served, None, "/health").json()
    demand = health["tables"]["gold.demand_by_zone_hour"]
    assert demand["stale"] is False and demand["version"] == 0
    assert health["tables"]["gold.revenue_by_vehicle_type_daily"]["stale"] is True  # never written
    assert health["status"] == "stale"
    assert _get(served, "analysts", "/tables/silver.bookings").status_code == 403
    metrics = _get(served, None, "/metrics").text
    assert 'lakehouse_api_requests_total{route="/tables/{name}",status="403"}' in metrics


def test_every_read_is_audited_with_the_token_id_and_never_the_token(served) -> None:
    client, tokens, config = served
    _get(
        served,
        "analysts",
        "/tables/gold.demand_by_zone_hour",
        columns="zone_id",
        filter="hour:eq:9",
    )
    _get(served, "analysts", "/tables/silver.bookings")
    client.app.state.serving.audit.flush()
    audit = DeltaTable(config.table_path("audit", "reads")).to_pyarrow_table().to_pylist()
    mine = [r for r in audit if r["token_id"] == "analysts-1"]
    assert any(
        r["table"] == "gold.demand_by_zone_hour"
        and r["columns"] == ["zone_id"]
        and r["filters"] == "hour:eq:9"
        and r["status"] == 200
        and r["rows"] == 14
        for r in mine
    )
    assert any(
        r["table"] == "silver.bookings" and r["status"] == 403 and r["rows"] == 0 for r in mine
    )
    assert {r["role"] for r in mine} == {"analysts"}
    text = json.dumps(audit, default=str) + Path(config.serve.tokens_file).read_text()
    assert not any(token in text for token in tokens.values())
    assert _get(served, "admins", "/tables/audit.reads", limit=1).status_code == 200
    assert _get(served, "operations", "/tables/audit.reads").status_code == 403
