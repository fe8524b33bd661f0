"""The local S3 API server for development and tests: s3proxy over a folder.

Runs `org.gaul.s3proxy.Main` from the Maven-fetched classpath in `jars/s3` as a plain JVM process
on loopback, with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as its only identity (V2 or V4
signatures). State lives in `LAKEHOUSE_S3_DIR` (default `./.s3`): `data/<bucket>/<key>` holds the
objects, beside the pid file, the properties and the logs.
"""

from __future__ import annotations

import http.client
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from streaming import jars
from streaming.config import LocalS3Config, S3Config
from streaming.errors import ConfigError, SetupError
from streaming.processes import alive, log_tail, require_free_port, stop_service
from streaming.s3 import storage

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
MAIN_CLASS = "org.gaul.s3proxy.Main"


def endpoint(server: LocalS3Config) -> str:
    return f"http://127.0.0.1:{server.port}"


def start(server: LocalS3Config, s3: S3Config, jars_dir: Path, buckets: Iterable[str] = ()) -> str:
    """Start the server unless it runs already, wait until it answers, create `buckets`."""
    classpath = f"{jars_dir / 's3'}/*"
    jars.require(jars_dir, "s3")
    identity, credential = _credentials(s3)
    pid = running_pid(server)
    if pid is not None:
        line = f"S3 server already running (pid {pid}) on {endpoint(server)}"
        return line + _make_buckets(server, s3, buckets)
    require_free_port(server.port, SetupError, "LAKEHOUSE_S3_PORT")
    (server.data_dir / "data").mkdir(parents=True, exist_ok=True)
    properties = _write_config(server, identity, credential)
    with (server.data_dir / "s3proxy.out").open("ab") as out:
        process = subprocess.Popen(
            [
                "java", f"-Xmx{server.heap}", "-XX:+UseSerialGC",
                f"-Dlogback.configurationFile={server.data_dir / 'logback.xml'}",
                "-cp", classpath, MAIN_CLASS, "--properties", str(properties),
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _pid_file(server).write_text(str(process.pid))
    _wait_ready(server, process)
    line = f"S3 server started (pid {process.pid}) on {endpoint(server)}, data in {server.data_dir}"
    return line + _make_buckets(server, s3, buckets)


def stop(server: LocalS3Config) -> str:
    """Stop the server by pid: SIGTERM first, SIGKILL only after a timeout."""
    return stop_service(running_pid(server), _pid_file(server), "S3 server", STOP_TIMEOUT_S)


def status(server: LocalS3Config) -> tuple[bool, str]:
    pid = running_pid(server)
    if pid is None:
        return False, f"S3 server is not running (data folder {server.data_dir})"
    if not _answers(server):
        return False, f"S3 server process {pid} runs but does not answer on port {server.port}"
    folder = server.data_dir / "data"
    buckets = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    return (
        True,
        f"S3 server running (pid {pid}) on {endpoint(server)}; buckets: "
        + (", ".join(buckets) or "none"),
    )


def running_pid(server: LocalS3Config) -> int | None:
    """The pid in the pid file if that process is alive and is s3proxy."""
    try:
        pid = int(_pid_file(server).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid if alive(pid) else None
    return pid if MAIN_CLASS.encode() in cmdline else None


def _credentials(s3: S3Config) -> tuple[str, str]:
    if not (s3.access_key_id and s3.secret_access_key):
        raise ConfigError(
            "the local S3 server needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            hint="set both (any values will do locally) and use the same ones for `lakehouse run`",
        )
    return s3.access_key_id, s3.secret_access_key.reveal()


def _make_buckets(server: LocalS3Config, s3: S3Config, buckets: Iterable[str]) -> str:
    created = []
    for bucket in dict.fromkeys(buckets):
        try:
            if storage.make_bucket(s3, bucket, endpoint(server)):
                created.append(bucket)
        except OSError as exc:
            raise SetupError(
                f"creating the bucket '{bucket}' on the local S3 server failed: {exc}",
                hint="the server may run with other credentials: `lakehouse s3 stop`, then start",
            ) from None
    return f"; created bucket {', '.join(created)}" if created else ""


def _answers(server: LocalS3Config) -> bool:
    """Any HTTP answer counts (an anonymous request gets 403 AccessDenied)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def _wait_ready(server: LocalS3Config, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _pid_file(server).unlink(missing_ok=True)
            raise SetupError(
                f"the S3 server exited with code {process.returncode} during start-up: "
                + _log_tail(server),
                hint=f"see {server.data_dir / 's3proxy.log'}",
            )
        if _answers(server):
            return
        time.sleep(0.3)
    raise SetupError(
        f"the S3 server did not answer within {READY_TIMEOUT_S:.0f} s",
        hint=f"see {server.data_dir / 's3proxy.log'}; stop it with `lakehouse s3 stop`",
    )


def _write_config(server: LocalS3Config, identity: str, credential: str) -> Path:
    data = server.data_dir
    properties = data / "s3proxy.properties"
    properties.touch(mode=0o600)
    properties.chmod(0o600)  # it holds the secret
    properties.write_text(
        "\n".join(
            [
                f"s3proxy.endpoint={endpoint(server)}",
                "s3proxy.authorization=aws-v2-or-v4",
                f"s3proxy.identity={identity}",
                f"s3proxy.credential={credential}",
                "jclouds.provider=filesystem-nio2",
                f"jclouds.filesystem.basedir={data / 'data'}",
                "",
            ]
        )
    )
    (data / "logback.xml").write_text(
        "\n".join(
            [
                "<configuration>",
                '  <appender name="file" class="ch.qos.logback.core.FileAppender">',
                f"    <file>{data / 's3proxy.log'}</file>",
                "    <encoder><pattern>%d %level %logger{30}: %msg%n</pattern></encoder>",
                "  </appender>",
                '  <root level="WARN"><appender-ref ref="file"/></root>',
                '  <logger name="org.gaul.s3proxy" level="INFO"/>',
                "</configuration>",
                "",
            ]
        )
    )
    return properties


def _pid_file(server: LocalS3Config) -> Path:
    return server.data_dir / "s3proxy.pid"


def _log_tail(server: LocalS3Config) -> str:
    logs = [server.data_dir / "s3proxy.log", server.data_dir / "s3proxy.out"]
    return log_tail(logs, causes_first=True)
