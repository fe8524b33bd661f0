"""Where the JVM jars live and how they get there.

`python -m streaming.jars fetch [group ...]` resolves the resolve-only POMs under `jvm/` with
Maven into git-ignored folders under `jars/`: `jars/spark` (added to Spark's classpath),
`jars/kafka` (the local broker's classpath) and `jars/s3` (the local S3 API server's). Jars
whose artifact pyspark already ships are removed, so one library never sits on the classpath
twice. A stamp (hash of the POM + pyspark version) makes a second run a no-op.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from streaming.errors import SetupError
from streaming.settings import PROJECT_DIR

JVM_DIR = PROJECT_DIR / "jvm"
GROUPS = ("spark", "kafka", "s3")
STAMP = ".fetched"


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def require(jars_dir: Path, group: str) -> list[Path]:
    """The fetched jars of one group, or a SetupError that says how to fetch them."""
    folder = jars_dir / group
    jars = sorted(folder.glob("*.jar")) if (folder / STAMP).exists() else []
    if not jars:
        raise SetupError(
            f"the {group} jars are not fetched yet ({folder} is empty)",
            hint="run `make setup` (it fetches them with Maven)",
        )
    return jars


def fetch(jars_dir: Path, group: str) -> str:
    """Fetch one group of jars unless the stamp says they are current. Returns a status line."""
    pom = JVM_DIR / group / "pom.xml"
    folder = jars_dir / group
    stamp = _stamp(pom)
    stamp_file = folder / STAMP
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        count = len(list(folder.glob("*.jar")))
        return f"{group} jars up to date: {count} jars in {folder} (nothing to do)"
    if shutil.which("mvn") is None:
        raise SetupError("Maven (mvn) is not on PATH", hint="install Maven 3.8+ and Java 17")
    with tempfile.TemporaryDirectory() as staging:
        _copy_dependencies(pom, Path(staging))
        shipped = _shipped_artifacts() if group == "spark" else set()
        kept = []
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for jar in sorted(Path(staging).glob("*.jar")):
            if _artifact_of(jar.name, shipped) is None:
                shutil.copy2(jar, folder / jar.name)
                kept.append(jar.name)
    stamp_file.write_text(stamp)
    return f"{group} jars fetched: {len(kept)} jars in {folder}"


def _copy_dependencies(pom: Path, out: Path) -> None:
    command = [
        "mvn", "-B", "-q", "-s", str(JVM_DIR / "settings.xml"), "-f", str(pom),
        "dependency:copy-dependencies", f"-DoutputDirectory={out}", "-DincludeScope=runtime",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stdout.splitlines() if "[ERROR]" in line][:3]
        raise SetupError(
            f"Maven could not resolve {pom}: " + " ".join(errors)[:600],
            hint="check network access to Maven Central, then run `make setup` again",
        )


def _shipped_artifacts() -> set[str]:
    """Artifact names (file name before `-<version>`) of the jars pyspark already ships."""
    return {_name_before_version(jar.name) for jar in pyspark_jars_dir().glob("*.jar")}


def _name_before_version(file_name: str) -> str:
    parts = file_name.removesuffix(".jar").split("-")
    # The version starts at the last part that begins with a digit and is followed only by
    # version-like parts; `spark-sql-kafka-0-10_2.13-4.0.4` keeps its `0-10_2.13` in the name.
    for index in range(len(parts) - 1, 0, -1):
        if parts[index][:1].isdigit() and "_" not in parts[index]:
            head = parts[:index]
            if not (head and head[-1][:1].isdigit() and "_" not in head[-1] and "." in head[-1]):
                return "-".join(head)
    return "-".join(parts)


def _artifact_of(file_name: str, shipped: set[str]) -> str | None:
    name = _name_before_version(file_name)
    return name if name in shipped else None


def _stamp(pom: Path) -> str:
    digest = hashlib.sha256(pom.read_bytes())
    digest.update((JVM_DIR / "settings.xml").read_bytes())
    try:
        import pyspark

        digest.update(pyspark.__version__.encode())
    except ImportError:
        pass
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    from streaming.config import load_config

    groups = argv[1:] or list(GROUPS)
    if argv[:1] != ["fetch"] or not set(groups) <= set(GROUPS):
        print(f"usage: python -m streaming.jars fetch [{'|'.join(GROUPS)} ...]", file=sys.stderr)
        return 2
    jars_dir = load_config().jars_dir
    try:
        for group in groups:
            print(fetch(jars_dir, group), flush=True)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
