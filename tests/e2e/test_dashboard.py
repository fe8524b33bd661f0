"""The dashboard in a real headless Chromium, served by `lakehouse serve` (a real process, real
HTTP) over a lake the real pipeline built from the real broker."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from streaming.kafka.admin import create_topics
from streaming.simulator import SIMULATED
from streaming.simulator.producer import ProduceOptions, run_producer
from tests.builders import LAKEHOUSE, PII_KEY, lakehouse, one_clear_line, stderr_of
from tests.conftest import PROJECT, Lake, _free_ports

pytestmark = pytest.mark.e2e
ROLES = ("analysts", "operations", "admins")
ARTIFACTS = Path(os.environ.get("LAKEHOUSE_TEST_ARTIFACTS", PROJECT / "artifacts"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("dashboard"), kafka_bootstrap)
    create_topics(lake.config)
    report = run_producer(
        lake.config, "all", ProduceOptions(rate=math.inf, count=3_000, vehicles=400, malformed=0.03)
    )
    assert report.acked == 3_000
    run = lakehouse("run", "all", "--once", env=lake.process_env(LAKEHOUSE_PII_KEY=PII_KEY))
    assert run.returncode == 0, run.stderr[-3000:]
    return lake


@pytest.fixture(scope="module")
def server(built: Lake) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    (port,) = _free_ports(1)
    env = built.process_env(
        LAKEHOUSE_API_TOKENS=str(built.root / "tokens.toml"),
        LAKEHOUSE_SERVE_PORT=str(port),
        LAKEHOUSE_STALE_SECONDS="3600",
    )
    tokens = {}
    for role in ROLES:
        issued = lakehouse("serve", "token", "--role", role, "--id", f"{role}-page", env=env)
        assert issued.returncode == 0, issued.stderr
        tokens[role] = issued.stdout.strip()
    process = subprocess.Popen(
        [*LAKEHOUSE, "serve"], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, stderr_of(process)
        try:
            urllib.request.urlopen(url + "health", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "lakehouse serve did not come up"
            time.sleep(0.2)
    yield url, tokens, process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _sign_in(driver: Any, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.execute_script("sessionStorage.clear(); document.body.dataset.loaded = '';")
    driver.get(url)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.dataset.loaded") == "true"
    )


def _cells(driver: Any, panel: str, column: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(c => c.textContent)",
        f"#{panel} td[data-column='{column}']",
    )


def _gold(lake: Lake, table: str) -> list[dict[str, Any]]:
    return DeltaTable(lake.config.table_path("gold", table)).to_pyarrow_table().to_pylist()


def _shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_an_analyst_sees_the_gold_tables_on_the_map_and_panels_with_pii_masked(
    built, server, browser
) -> None:
    url, tokens, _ = server
    _sign_in(browser, url, tokens["analysts"])
    shown = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#zone-map path.zone')]"
        ".map(p => [p.dataset.zone, Number(p.dataset.bookings)]))"
    )
    assert len(shown) == 263  # every NYC taxi zone on the map
    demand = _gold(built, "demand_by_zone_hour")
    newest = max((r["date"], r["hour"]) for r in demand)
    expected: dict[str, int] = {}
    for row in demand:
        if (row["date"], row["hour"]) == newest:
            expected[str(row["zone_id"])] = (
                expected.get(str(row["zone_id"]), 0) + row["booking_count"]
            )
    assert sum(expected.values()) > 0
    assert {z: n for z, n in shown.items() if n} == {z: n for z, n in expected.items() if n}
    revenue = _gold(built, "revenue_by_vehicle_type_daily")
    day = max(r["date"] for r in revenue)
    rows = sorted((r for r in revenue if r["date"] == day), key=lambda r: r["vehicle_type"])
    assert _cells(browser, "revenue", "vehicle_type") == [r["vehicle_type"] for r in rows]
    assert _cells(browser, "revenue", "total_revenue") == [str(r["total_revenue"]) for r in rows]
    assert _cells(browser, "revenue", "bookings") == [str(r["bookings"]) for r in rows]
    tokens_shown = _cells(browser, "journeys", "user_token")
    assert tokens_shown and set(tokens_shown) == {"hidden"}  # a user's token: masked for analysts
    denied = browser.find_element("css selector", "#bookings .unavailable").text
    assert "role analysts may not read silver.bookings" in denied
    assert browser.find_element("id", "role").text == "role: analysts"
    _shot(browser, "dashboard-analysts.png")


def test_operations_see_masked_emails_and_admins_see_the_identities(built, server, browser) -> None:
    url, tokens, _ = server
    _sign_in(browser, url, tokens["operations"])
    emails = _cells(browser, "bookings", "email_masked")
    assert emails and all("*" in e and "@" in e for e in emails if e != "hidden"), emails
    assert set(_cells(browser, "bookings", "user_id")) == {"hidden"}
    assert set(_cells(browser, "bookings", "email_token")) == {"hidden"}
    statuses = _cells(browser, "status-panel", "vehicles")
    assert (
        sum(map(int, statuses))
        == DeltaTable(built.config.table_path("silver", "vehicle_state"))
        .to_pyarrow_dataset()
        .count_rows()
    )
    _shot(browser, "dashboard-operations.png")
    _sign_in(browser, url, tokens["admins"])
    users = _cells(browser, "bookings", "user_id")
    assert users and all(u.startswith("U") for u in users), users
    assert all(len(t) == 64 for t in _cells(browser, "bookings", "email_token"))
    _shot(browser, "dashboard-admins.png")


def test_the_server_audits_the_page_reads_and_stops_cleanly(built, server) -> None:
    """The page's reads (its document, for two roles) and an API read are audited by the time
    the server has stopped; the test makes every read it checks (it may run on its own)."""
    url, tokens, process = server
    for path, role in (("tables/gold.demand_by_zone_hour?limit=1", "analysts"),
                       ("dashboard/data", "analysts"), ("dashboard/data", "admins")):  # fmt: skip
        request = urllib.request.Request(
            url + path, headers={"Authorization": f"Bearer {tokens[role]}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    errors = stderr_of(process)
    assert "Traceback" not in errors and not any(t in errors for t in tokens.values())
    audit = DeltaTable(built.config.table_path("audit", "reads")).to_pyarrow_table().to_pylist()
    page = {(r["token_id"], r["table"], r["status"]) for r in audit}
    assert ("analysts-page", "silver.bookings", 403) in page
    assert ("analysts-page", "gold.demand_by_zone_hour", 200) in page
    assert ("admins-page", "silver.bookings", 200) in page


def test_status_reads_run_history_lag_freshness_and_quarantine_from_the_tables(built) -> None:
    result = lakehouse("status", "--json", "--stale-seconds", "3600", env=built.process_env())
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    runs = DeltaTable(built.config.table_path("ops", "runs")).to_pyarrow_table().to_pylist()
    newest: dict[int, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["ended_at"]):
        newest[run["batch_id"]] = run  # a replayed batch: its last attempt
    assert sum(n for run in newest.values() for _, n in run["rows_in"]) == 3_000
    assert report["pipelines"]["all"]["last_batch"] == max(newest)
    assert report["writers"] == {}, "a finished run left its writer lease"
    writes = DeltaTable(built.config.table_path("audit", "writes")).to_pyarrow_table().to_pylist()
    audited = {(w["batch_id"], w["table"]): w["version"] for w in writes}
    assert all(run["delta_versions"] for run in newest.values() if run["rows_in"])
    assert all(
        audited[(batch, table)] == version
        for batch, run in newest.items()
        for table, version in run["delta_versions"]
    ), "the run history's Delta versions differ from the write audit's"
    assert set(report["pipelines"]["all"]["layer_seconds"]) == {"bronze", "silver", "gold"}
    lag = report["kafka_lag"]
    assert {t: v["records"] for t, v in lag.items()} == {
        built.config.topic(e).name: 0 for e in SIMULATED
    }
    assert report["stale"] == [] and all(not g["stale"] for g in report["gold"].values())
    quarantined = sum(
        DeltaTable(built.config.table_path("quarantine", e)).to_pyarrow_dataset().count_rows()
        for e in SIMULATED
    )
    by_rule = report["quarantine_last_hour"]
    assert quarantined > 0 and sum(q["rows"] for q in by_rule) >= quarantined  # a row per rule
    assert sum((run["quarantined"] and sum(n for _, n in run["quarantined"])) or 0
               for run in newest.values()) == quarantined  # fmt: skip
    stale = lakehouse("status", "--no-kafka", "--stale-seconds", "1", env=built.process_env())
    one_clear_line(stale, 7, "stale Gold tables", "gold.demand_by_zone_hour")
