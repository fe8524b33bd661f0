"""Throw-away lakes for the benchmark: one folder, topic prefix and environment per step.

Every step gets `<work>/<name>/lakehouse` and `<work>/<name>/checkpoints` and the topic prefix
`<configured prefix>bench-<run id>-<name>.`, so steps and runs never see each other's data. A
step's processes get the caller's environment with those overrides (and the caller's config file,
if one was named), so they read exactly the configuration the benchmark reports.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException

from streaming.config import Config, load_config
from streaming.kafka.admin import admin_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lake:
    """One step's folders, topics and environment."""

    name: str
    folder: Path
    env: dict[str, str]
    config: Config


@dataclass
class Workspace:
    """Makes lakes under one work folder and removes them (and their topics) at the end."""

    base: Config
    config_file: Path | None = None
    work: Path | None = None
    keep: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    lakes: list[Lake] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = (
            Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
            if self.work is None
            else (self.work.expanduser().resolve() / f"bench-{self.run_id}")
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        # Bench tables are throw-away: without a configured key Silver gets a random one.
        self.pii_key = None if self.base.pii_key is not None else secrets.token_hex(24)

    def lake(self, name: str, topics_of: Lake | None = None) -> Lake:
        """A new empty lake; with `topics_of`, reading that lake's topics instead of its own."""
        folder = self.folder / name
        prefix = (
            topics_of.config.topic_prefix
            if topics_of is not None
            else f"{self.base.topic_prefix}bench-{self.run_id}-{name}."
        )
        env = {
            **os.environ,
            "LAKEHOUSE_ROOT": str(folder / "lakehouse"),
            "LAKEHOUSE_CHECKPOINTS": str(folder / "checkpoints"),
            "LAKEHOUSE_TOPIC_PREFIX": prefix,
            "LAKEHOUSE_METRICS_PORT": "0",
        }
        if self.config_file is not None:
            env["LAKEHOUSE_CONFIG"] = str(self.config_file)
        if self.pii_key is not None:
            env["LAKEHOUSE_PII_KEY"] = self.pii_key
        lake = Lake(name, folder, env, load_config(env, config_file=self.config_file))
        self.lakes.append(lake)
        return lake

    def discard(self, lake: Lake) -> None:
        """Remove a finished lake's folder now (its topics go at `close`)."""
        if not self.keep:
            shutil.rmtree(lake.folder, ignore_errors=True)

    def close(self) -> None:
        """Delete the lakes' topics and folders, unless asked to keep them."""
        if self.keep:
            log.info("kept the bench lakes in %s", self.folder)
            return
        done: set[str] = set()
        for lake in self.lakes:
            if lake.config.topic_prefix not in done:
                done.add(lake.config.topic_prefix)
                _delete_topics(lake.config)
        shutil.rmtree(self.folder, ignore_errors=True)


def _delete_topics(config: Config) -> None:
    admin = admin_client(config.kafka)
    names = [topic.name for topic in config.topics]
    try:
        existing = admin.list_topics(timeout=10).topics
    except KafkaException as exc:
        log.warning("could not list topics to delete the bench's: %s", exc)
        return
    wanted = [name for name in names if name in existing]
    futures = admin.delete_topics(wanted, operation_timeout=30) if wanted else {}
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            log.warning("could not delete bench topic %s: %s", name, exc)


def log_tail(path: Path, limit: int = 400) -> str:
    """The process's own `error:` line if it printed one, else its last line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("error:")]
    chosen = errors[-1] if errors else lines[-1] if lines else "(empty log)"
    return chosen[:limit]
