"""`lakehouse erase`: the GDPR erasure of one data subject, with a tombstone, a receipt and a proof.

1. **Find.** The command, the only place that ever holds the subject's identifiers, collects
   the Kafka coordinates of every row of the subject: Bronze and quarantine rows whose raw key
   or payload holds the user id, e-mail or phone (case-insensitively), and Silver rows whose
   `user_id`, or e-mail or phone token, is the subject's.
2. **Tombstone.** The coordinates go to `ops.tombstones` under the erasure's number before
   anything is deleted. Every pipeline drops tombstoned records before its first write, so no
   replay (from Kafka with an old checkpoint, or from Bronze) brings them back; `verify` counts
   them as erased.
3. **Apply.** The Silver and Gold writer applies it: a running `run all` or `run refine` between
   two of its batches, else the command itself (holding the writer leases). The coordinates are
   deleted from Bronze, Silver and quarantine (duplicates included), and every Gold key that
   the removed Silver rows touched is rebuilt from Silver: the user's journeys vanish, their
   distinct-user sets and counts shrink, and Gold still equals a recomputation. Each table's
   commit is guarded (pipeline `erase`, batch = the erasure's number): a resumed erasure only
   finishes what is left.
4. **Purge.** Delta keeps the files a commit removed (time travel). Deleted: every file of a
   touched table that is referenced neither at the erasure's versions nor now and was written
   before the erasure was applied (a file of a commit still in flight is younger). Time travel
   to before the erasure ends for those tables.
5. **Proof.** Every file under the lake is decoded (every column of every Parquet file, nested
   ones too: data, change data, log checkpoints; the JSON log and any other file as bytes) and
   searched for each identifier and token.
6. **Receipt.** JSON: the tables, versions, rows and files, the purge and the proof. The
   subject appears only as one keyed token that the identifiers and the key reproduce.

Nothing in the lake's tables holds an identifier afterwards, and no column statistic in a Delta
log ever did: identifying columns are kept out of the statistics (`tables.IDENTIFYING`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pyspark.sql import functions as F

from streaming import bronze, checkpoints, pii
from streaming.audit import actor, record_writes
from streaming.catalog import ERASURES, TOMBSTONES, TableRef, append_rows
from streaming.commits import BatchScope, CommitGuard
from streaming.config import Config
from streaming.errors import ConfigError, RetryableError
from streaming.redrive import COORDINATES, delete_matching
from streaming.s3.storage import location_filesystem
from streaming.spark import row_reader
from streaming.tables import exists, open_table

if TYPE_CHECKING:
    import pyarrow as pa
    from pyarrow.fs import FileSystem
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
PIPELINE = "erase"
IDENTITY_COLUMNS = ("user_id", "email_token", "phone_token")  # in Silver
_PROGRESS_S = 10.0
_RETRY_S = 5.0  # after a failed attempt at applying an erasure (its committed part is kept)
UNFINISHED_WAIT_S = 10.0  # how long the proof reads again a Parquet file that does not decode
# The proof decodes about this much of a file at a time (and at most this many rows).
_PROOF_BATCH_BYTES = 32 << 20
_PROOF_MAX_ROWS = 65_536


@dataclass(frozen=True)
class Subject:
    """Whom to erase: any of a user id, an e-mail address, a phone number."""

    user_id: str | None = None
    email: str | None = None
    phone: str | None = None

    def __post_init__(self) -> None:
        if not (self.user_id or self.email or self.phone):
            raise ConfigError(
                "name the subject to erase", hint="--user-id U, --email E and/or --phone P"
            )
        for flag, value in (("--user-id", self.user_id), ("--email", self.email),
                            ("--phone", self.phone)):  # fmt: skip
            if value is not None and len(value.strip()) < 3:
                raise ConfigError(f"{flag} {value!r} is too short to identify anyone")

    def raw(self) -> list[str]:
        """The identifiers as they stand in a raw payload."""
        return [v for v in (self.user_id, self.email, self.phone) if v]

    def tokens(self, key: Any) -> dict[str, str]:
        """Silver's token columns and the subject's value in each."""
        found = {}
        if self.email:
            found["email_token"] = pii.token(key, "email", self.email)
        if self.phone:
            found["phone_token"] = pii.token(key, "phone", self.phone)
        return found

    def needles(self, key: Any) -> list[str]:
        """Everything the proof scan must not find: the identifiers and their tokens."""
        return self.raw() + list(self.tokens(key).values())

    def receipt_token(self, key: Any) -> str:
        """The subject in receipts and audit rows: a keyed hash of all of its identifiers,
        unlike any token stored in a table (so the proof scan never meets it)."""
        material = json.dumps(
            {"user_id": self.user_id, "email": self.email, "phone": self.phone}, sort_keys=True
        )
        digest = hmac.new(key.reveal().encode(), b"erasure:" + material.encode(), hashlib.sha256)
        return digest.hexdigest()


@dataclass
class Receipt:
    erasure_id: int
    subject: str
    dry_run: bool = False
    requested_at: str = ""
    applied_at: str = ""
    applied_by: str = ""
    rows: dict[str, int] = field(default_factory=dict)  # per table: rows removed (or found)
    versions: dict[str, list[int]] = field(default_factory=dict)  # per table: commits made
    files_rewritten: dict[str, int] = field(default_factory=dict)  # per table: files removed
    gold: dict[str, int] = field(default_factory=dict)  # per Gold table: keys rewritten
    tombstones: int = 0
    purged: dict[str, dict[str, int]] = field(default_factory=dict)  # per table: files, bytes
    proof: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.dry_run:
            found = ", ".join(f"{t} {n}" for t, n in sorted(self.rows.items())) or "nothing"
            return f"erase (dry run): the subject's rows: {found}; nothing changed"
        if not self.tombstones:
            return f"erasure {self.erasure_id}: no row of the subject in the lake; nothing changed"
        removed = sum(self.rows.values())
        files = sum(p["files"] for p in self.purged.values())
        hits = len(self.proof.get("hits", []))
        torn = len(self.proof.get("undecoded", []))
        return (
            f"erasure {self.erasure_id}: {removed} rows removed from {len(self.rows)} tables, "
            f"{len(self.gold)} Gold tables rebuilt where they counted the subject, "
            f"{files} old files purged; proof: {self.proof.get('files', 0)} files "
            f"({self.proof.get('bytes', 0):,} bytes) decoded"
            + (f" ({torn} torn, searched as raw bytes)" if torn else "")
            + f", {hits} hits ({self.seconds:.1f} s)"
        )


# --- the command -----------------------------------------------------------------------------


def erase(
    spark: SparkSession,
    config: Config,
    subject: Subject,
    dry_run: bool = False,
    wait_s: float = 600.0,
    acquire: Callable[[], Any] | None = None,
) -> Receipt:
    """Find, tombstone, have it applied, purge, prove (`acquire`: see `_await_applied`)."""
    started = time.monotonic()
    key = config.require_pii_key()
    require_lake(config)
    with row_reader(spark):
        found = find(spark, config, subject)
    by_table = _tally(found)
    if dry_run:
        return Receipt(0, subject.receipt_token(key), dry_run=True, rows=by_table)
    erasure_id = _next_id(config)
    receipt = Receipt(erasure_id, subject.receipt_token(key), requested_at=_now())
    coordinates = [tuple(r) for r in found.select(*COORDINATES).distinct().collect()]
    receipt.tombstones = len(coordinates)
    if coordinates:
        _tombstone(config, erasure_id, coordinates)
        _record(config, erasure_id, "requested", receipt.subject, {"tombstones": len(coordinates)})
        applied = _await_applied(spark, config, erasure_id, wait_s, acquire)
        receipt.applied_at = applied["at"]
        receipt.applied_by = applied["by"]
        for name in ("rows", "versions", "files_rewritten", "gold"):
            setattr(receipt, name, applied[name])
        written_before = _await_earlier_writes(config, erasure_id, applied)
        for table, versions in receipt.versions.items():
            ref = TableRef(*table.split(".", 1))
            receipt.purged[table] = purge(config, ref, versions, written_before)
    receipt.proof = prove(config, subject.needles(key))
    receipt.seconds = round(time.monotonic() - started, 1)
    _record(config, erasure_id, "done", receipt.subject, receipt.as_dict())
    return receipt


def _await_earlier_writes(config: Config, erasure_id: int, applied: dict[str, Any]) -> datetime:
    """Wait until every write that may have read the tables before the erasure has ended;
    then every file older than the returned moment that no version references is dead.

    A write that began before the erasure's commit (an OPTIMIZE beside it, say) may have written
    a file holding the subject and then failed on conflict, leaving it unreferenced; such a file
    is at most one grace period younger than the commit. A write that began after the commit
    holds no row of the subject, and its files (maybe of a commit still in flight) are at most
    one grace period old. So: wait for two grace periods after the commit, purge what is older
    than one."""
    grace = config.maintain.erase_grace_seconds
    committed = datetime.fromisoformat(applied["at"])
    ready = committed.timestamp() + 2 * grace
    while (left := ready - time.time()) > 0:
        log.info(
            "erasure %d: purging old file copies in %.0f s, once writes that began before it "
            "have ended (LAKEHOUSE_ERASE_GRACE_SECONDS=%d)", erasure_id, left, grace,
        )  # fmt: skip
        time.sleep(min(left, _PROGRESS_S))
    return datetime.fromtimestamp(time.time() - grace, UTC)


def require_lake(config: Config) -> None:
    if not any(exists(config, config.table_path(bronze.LAYER, e)) for e in config.entities):
        raise ConfigError(
            f"no Bronze table under {config.root}: nothing to erase from",
            hint="check LAKEHOUSE_ROOT (erasure runs against the lake the pipeline writes)",
        )


def find(spark: SparkSession, config: Config, subject: Subject) -> DataFrame:
    """(table, coordinates) of every row of the subject in Bronze, quarantine and Silver."""
    key = config.require_pii_key()
    raw = [v.lower() for v in subject.raw()]
    tokens = subject.tokens(key)

    def holds(column: str) -> Any:
        text = F.lower(F.col(column).cast("string"))
        hit = F.lit(False)
        for value in raw:
            hit = hit | F.coalesce(text.contains(value), F.lit(False))
        return hit

    frames = []
    for entity in config.entities:
        for layer in (bronze.LAYER, "quarantine", "silver"):
            path = config.table_path(layer, entity)
            if not exists(config, path):
                continue
            table = spark.read.format("delta").load(path)
            if layer == "silver":
                match = F.lit(False)
                if subject.user_id and "user_id" in table.columns:
                    match = match | (F.col("user_id") == subject.user_id)
                for column, value in tokens.items():
                    if column in table.columns:
                        match = match | (F.col(column) == value)
            else:
                match = holds("value") | holds("key")
            frames.append(
                table.where(match).select(F.lit(f"{layer}.{entity}").alias("table"), *COORDINATES)
            )
    found = frames[0]
    for frame in frames[1:]:
        found = found.unionByName(frame)
    return found.localCheckpoint()


def _tally(found: DataFrame) -> dict[str, int]:
    return {r["table"]: int(r["count"]) for r in found.groupBy("table").count().collect()}


def _tombstone(config: Config, erasure_id: int, coordinates: list[tuple[Any, ...]]) -> None:
    today = datetime.now(UTC).date()
    rows = [
        {"erasure_id": erasure_id, "_kafka_topic": t, "_kafka_partition": p, "_kafka_offset": o,
         "date": today}
        for t, p, o in coordinates
    ]  # fmt: skip
    append_rows(config, TableRef(*TOMBSTONES), rows, tombstones_schema())


def _await_applied(
    spark: SparkSession,
    config: Config,
    erasure_id: int,
    wait_s: float,
    acquire: Callable[[], Any] | None,
) -> dict[str, Any]:
    """The erasure applied: by the running Silver and Gold writer, or here when none runs.
    `acquire()` takes the Silver and Gold writer leases (an object with `release()`), raising
    ConfigError while a live pipeline holds them."""
    deadline = time.monotonic() + wait_s
    said = 0.0
    while True:
        applied = _applied(config).get(erasure_id)
        if applied is not None:
            return applied
        try:
            held = acquire() if acquire is not None else None
        except ConfigError as refused:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"erasure {erasure_id} is recorded and tombstoned but the running pipeline "
                    f"did not apply it within {wait_s:.0f} s ({refused})",
                    hint="run `lakehouse erase` again with the same subject once the pipeline "
                    "runs or is stopped: the pipeline applies a recorded erasure between batches",
                ) from None
            if time.monotonic() - said > _PROGRESS_S:
                log.info("erasure %d: waiting for the running pipeline to apply it (%s)",
                         erasure_id, str(refused).split(":", 1)[-1].strip())  # fmt: skip
                said = time.monotonic()
            time.sleep(1.0)
            continue
        try:
            unfinished = part_written_batches(config)
            if unfinished:
                raise RetryableError(
                    "the pipeline died inside a batch ("
                    + ", ".join(f"{name} batch {b}" for name, b in unfinished.items())
                    + "): start it; it finishes the batch and then applies the erasure"
                )
            apply_pending(spark, config)
        except RetryableError as exc:  # a part committed is kept: the next attempt resumes
            if time.monotonic() > deadline:
                raise
            log.warning("erasure %d: %s; again in %.0f s", erasure_id, exc, _RETRY_S)
            time.sleep(_RETRY_S)
        finally:
            if held is not None:
                held.release()


# --- applied by the writer of Silver and Gold -------------------------------------------------


class Tombstones:
    """Drops erased records from a pipeline's batch. The tombstones are read again only when
    their table's version moved (one delta-rs read of the log per batch, milliseconds)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = TableRef(*TOMBSTONES).path(config)
        self._version = -1
        self._erased: DataFrame | None = None

    def drop(self, rows: DataFrame) -> DataFrame:
        table = open_table(self.config, self.path)
        if table is None:
            return rows
        if table.version() != self._version:
            if self._erased is not None:
                self._erased.unpersist()
            erased = rows.sparkSession.read.format("delta").load(self.path).select(*COORDINATES)
            self._erased = erased.localCheckpoint()
            self._version = table.version()
        assert self._erased is not None
        return rows.join(F.broadcast(self._erased), COORDINATES, "left_anti")


class PendingErasures:
    """What a running pipeline asks between batches: is an erasure waiting to be applied?
    One read of the log's version per call (delta-rs, milliseconds); rows only when it moved."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = TableRef(*ERASURES).path(config)
        self._seen = -1

    def waiting(self) -> bool:
        table = open_table(self.config, self.path)
        if table is None or table.version() == self._seen:
            return False
        version = table.version()
        pending = _pending(table.to_pyarrow_table().to_pylist())
        if not pending:
            self._seen = version  # nothing to do until the next request
        return bool(pending)


def apply_pending(spark: SparkSession, config: Config) -> dict[int, dict[str, Any]]:
    """Apply every requested erasure that is not yet applied; what each did, by number."""
    table = open_table(config, TableRef(*ERASURES).path(config))
    records = table.to_pyarrow_table().to_pylist() if table is not None else []
    done = {}
    for erasure_id in _pending(records):
        with row_reader(spark):  # the rows are read, and rewritten, with their raw payloads
            done[erasure_id] = _apply(spark, config, erasure_id)
    return done


def part_written_batches(config: Config) -> dict[str, int]:
    """Per pipeline that writes Gold, the batch it died inside (some tables hold it, its
    checkpoint did not commit it). Its restart finishes the batch, adding the rest of it to Gold:
    Gold keys an erasure rebuilt from Silver before that would count the batch's Silver rows
    twice. So an erasure waits for such a batch."""
    from streaming.pipeline import LAYERS, query_name

    found = {}
    for name, layers in LAYERS.items():
        if "gold" in layers:
            unfinished = checkpoints.part_written(config, query_name(name))
            if unfinished is not None:
                found[query_name(name)] = unfinished[0]
    return found


def _pending(records: list[dict[str, Any]]) -> list[int]:
    requested = {int(r["erasure_id"]) for r in records if r["status"] == "requested"}
    applied = {int(r["erasure_id"]) for r in records if r["status"] in ("applied", "done")}
    return sorted(requested - applied)


def _apply(spark: SparkSession, config: Config, erasure_id: int) -> dict[str, Any]:
    from streaming.gold.query import GoldLayer

    started = datetime.now(UTC)
    keys = (
        spark.read.format("delta")
        .load(TableRef(*TOMBSTONES).path(config))
        .where(F.col("erasure_id") == erasure_id)
        .select(*COORDINATES)
        .localCheckpoint()
    )
    topics = {r[0] for r in keys.select("_kafka_topic").distinct().collect()}
    entities = [e for e in config.entities if config.topic(e).name in topics]
    guard = CommitGuard(config, PIPELINE)
    outcome: dict[str, Any] = {"rows": {}, "versions": {}, "files_rewritten": {}, "gold": {}}
    changes = {}
    touched = []  # tables that may hold the erasure's commit (an earlier attempt's included)
    with BatchScope(spark, PIPELINE, erasure_id):
        for entity in entities:
            silver = config.table_path("silver", entity)
            for layer in (bronze.LAYER, "quarantine", "silver"):
                path = config.table_path(layer, entity)
                if not exists(config, path):
                    continue
                before = _version_before(guard, path, erasure_id)
                removed = (
                    spark.read.format("delta").option("versionAsOf", before).load(path)
                    .join(keys, COORDINATES, "left_semi").localCheckpoint()
                )  # fmt: skip
                count = removed.count()
                if not count:
                    continue
                touched.append(path)
                guard.write(path, erasure_id, functools.partial(delete_matching, spark, path, keys))
                name = f"{layer}.{entity}"
                outcome["rows"][name] = count
                if path == silver:
                    version = guard.holding(path, erasure_id)
                    changes[entity] = removed.withColumns(
                        {"_change_type": F.lit("delete"),
                         "_commit_version": F.lit(version).cast("long")}
                    )  # fmt: skip
        if changes:
            gold = GoldLayer(spark, config, guard)
            for name in gold.tables_for(set(changes)):
                touched.append(config.table_path("gold", name))
                summary = gold.apply(name, changes, erasure_id)
                if summary is not None:
                    outcome["gold"][f"gold.{name}"] = int(summary.upserted + summary.deleted)
    # The commits made, read back from each table's log by their mark (as the audit records),
    # those of an earlier attempt that failed part-way included.
    for row in record_writes(config, guard, erasure_id, paths=touched):
        outcome["versions"].setdefault(row["table"], []).append(row["version"])
        metrics = json.loads(row["metrics"])
        removed = metrics.get("numTargetFilesRemoved", metrics.get("numRemovedFiles", 0))
        outcome["files_rewritten"][row["table"]] = int(removed)
    outcome["at"] = _now()
    outcome["started"] = started.isoformat()
    outcome["by"] = actor()
    _record(config, erasure_id, "applied", "", outcome)
    log.info("erasure %d applied: %s", erasure_id, outcome["rows"])
    return outcome


def _version_before(guard: CommitGuard, path: str, erasure_id: int) -> int:
    """The version to read the rows to remove from: the newest, or on a resumed erasure whose
    delete of this table already committed, the one before that commit."""
    own = guard.committed(path, erasure_id)
    if own is not None and own.batch_id == erasure_id and own.version > 0:
        return own.version - 1
    return guard.newest(path)


# --- purge and proof --------------------------------------------------------------------------


def purge(config: Config, ref: TableRef, versions: list[int], cutoff: datetime) -> dict[str, int]:
    """Delete the table's files that neither its erasure versions nor its newest version
    reference and that were written before `cutoff`: the old copies time travel kept, and files
    of writes that failed beside the erasure."""
    from deltalake import DeltaTable

    from streaming.s3.storage import delta_rs_uri, storage_options

    uri = delta_rs_uri(ref.path(config))
    options = storage_options(config)
    marker = f"/{ref.layer}/{ref.name}/"
    referenced: set[str] = set()
    for version in [*versions, None]:
        table = DeltaTable(uri, storage_options=options, version=version)
        referenced.update(unquote(u.split(marker, 1)[1]) for u in table.file_uris())
    fs, base = location_filesystem(config, ref.path(config))
    files = bytes_ = 0
    for info in _walk(fs, base):
        relative = unquote(info.path[len(base) :].lstrip("/"))
        if relative.startswith("_delta_log/") or relative in referenced:
            continue
        if info.mtime is not None and info.mtime.replace(tzinfo=UTC) >= cutoff:
            continue  # a commit in flight, or one made after the erasure
        fs.delete_file(info.path)
        files += 1
        bytes_ += info.size or 0
    return {"files": files, "bytes": bytes_}


def prove(config: Config, needles: list[str]) -> dict[str, Any]:
    """Decode every file under the lake and search it for each needle (case-insensitive).

    A Parquet file that does not decode is one a writer has not finished (it completes within
    seconds) or one a killed writer left torn, which no table version names: such files are
    read again for a while, then searched as raw bytes and listed as `undecoded` (VACUUM
    removes them)."""
    started = time.monotonic()
    fs, base = location_filesystem(config, config.root)
    lowered = [n.lower() for n in needles]
    files = bytes_ = 0
    hits: list[dict[str, Any]] = []
    unread: list[str] = []

    def search(relative: str, held: list[str]) -> None:
        hits.extend({"file": relative, "column": c} for c in held)

    for info in _walk(fs, base):
        relative = info.path[len(base) :].lstrip("/")
        files += 1
        bytes_ += info.size or 0
        if not info.size:
            continue  # nothing in it
        if not relative.endswith(".parquet"):
            if _raw_holds(fs, info.path, lowered):
                hits.append({"file": relative, "column": None})
            continue
        held = _columns_holding(fs, info.path, lowered)
        if held is None:
            unread.append(relative)
        else:
            search(relative, held)
    deadline = time.monotonic() + UNFINISHED_WAIT_S
    while unread and time.monotonic() < deadline:
        time.sleep(1.0)
        for relative in list(unread):
            held = _columns_holding(fs, f"{base}/{relative}", lowered)
            if held is not None:
                unread.remove(relative)
                search(relative, held)
    for relative in unread:
        if _raw_holds(fs, f"{base}/{relative}", lowered):
            hits.append({"file": relative, "column": None})
    if unread:
        log.warning(
            "%d torn Parquet file(s), named by no table version, searched as raw bytes "
            "(VACUUM removes them): %s", len(unread), ", ".join(unread[:5]),
        )  # fmt: skip
    return {
        "files": files,
        "bytes": bytes_,
        "identifiers": len(needles),
        "hits": hits,
        "undecoded": unread,
        "seconds": round(time.monotonic() - started, 1),
    }


def _columns_holding(fs: FileSystem, path: str, needles: list[str]) -> list[str] | None:
    """The columns of a Parquet file in which some value holds a needle; None if the file does
    not decode (unfinished, torn or gone).

    Read a bounded number of rows at a time: a compacted file of ten-megabyte payloads is a few
    megabytes on disk and gigabytes decoded (one such file, read whole, took the process to
    7 GB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    held: dict[str, None] = {}
    try:
        with fs.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle)
            meta = reader.metadata
            # Rows per slice from the decoded size the metadata gives. A dictionary-encoded
            # column understates it (its values count once), but Spark's writer keeps no
            # dictionary past 1 MB of values: large payloads are stored plain. A page is
            # decoded whole (Spark's writer closes one past 1 MB, checking every 100 rows).
            decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            row_bytes = max(1, decoded // max(1, meta.num_rows))
            rows = max(1, min(_PROOF_MAX_ROWS, _PROOF_BATCH_BYTES // row_bytes))
            for batch in reader.iter_batches(batch_size=rows, use_threads=False):
                for name, column in zip(batch.schema.names, batch.columns, strict=True):
                    if name not in held and _holds(column, needles):
                        held[name] = None
    except (pa.ArrowInvalid, OSError):  # FileNotFoundError is an OSError
        return None
    return list(held)


def _raw_holds(fs: FileSystem, path: str, needles: list[str]) -> bool:
    """Whether the file's bytes hold a needle (case-insensitive), read a chunk at a time."""
    overlap = max(map(len, needles), default=1) * 4  # a needle across two chunks, in UTF-8
    tail = b""
    try:
        with fs.open_input_stream(path) as handle:
            while chunk := handle.read(_PROOF_BATCH_BYTES):
                text = tail + chunk.lower()
                if any(n.encode() in text for n in needles):
                    return True
                tail = text[-overlap:]
    except FileNotFoundError:
        return False  # removed meanwhile (an aborted write cleaned up)
    return False


def _holds(column: pa.ChunkedArray | pa.Array, needles: list[str]) -> bool:
    """Whether any value of the column (nested values included) contains a needle."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        kind = chunk.type
        if pa.types.is_struct(kind):
            parts = [chunk.field(i) for i in range(kind.num_fields)]
        elif pa.types.is_map(kind):
            parts = [chunk.keys, chunk.items]
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            parts = [chunk.flatten()]
        elif (pa.types.is_string(kind) or pa.types.is_large_string(kind)
              or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):  # fmt: skip
            if any(pc.any(pc.match_substring(chunk, n, ignore_case=True)).as_py() for n in needles):
                return True
            continue
        else:
            continue
        if any(_holds(part, needles) for part in parts):
            return True
    return False


def _walk(fs: FileSystem, base: str) -> Iterator[Any]:
    from pyarrow.fs import FileSelector, FileType

    selector = FileSelector(base, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == FileType.File:
            yield info


# --- records ----------------------------------------------------------------------------------


def _next_id(config: Config) -> int:
    table = open_table(config, TableRef(*ERASURES).path(config))
    if table is None:
        return 1
    ids = [int(r["erasure_id"]) for r in table.to_pyarrow_table().to_pylist()]
    return max(ids, default=0) + 1


def _applied(config: Config) -> dict[int, dict[str, Any]]:
    table = open_table(config, TableRef(*ERASURES).path(config))
    if table is None:
        return {}
    return {
        int(r["erasure_id"]): json.loads(r["detail"])
        for r in table.to_pyarrow_table().to_pylist()
        if r["status"] == "applied"
    }


def _record(config: Config, erasure_id: int, status: str, subject: str, detail: Any) -> None:
    now = datetime.now(UTC)
    row = {
        "erasure_id": erasure_id,
        "status": status,
        "at": now,
        "subject": subject,
        "by": actor(),
        "detail": json.dumps(detail, default=str, sort_keys=True),
        "date": now.date(),
    }
    append_rows(config, TableRef(*ERASURES), [row], erasures_schema())


def _now() -> str:
    return datetime.now(UTC).isoformat()


def erasures_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("erasure_id", pa.int64()),
            ("status", pa.string()),  # requested, applied, done
            ("at", pa.timestamp("us", tz="UTC")),
            ("subject", pa.string()),  # a keyed hash of the identifiers, never one of them
            ("by", pa.string()),
            ("detail", pa.string()),  # JSON: what was applied; the receipt when done
            ("date", pa.date32()),
        ]
    )


def tombstones_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("erasure_id", pa.int64()),
            ("_kafka_topic", pa.string()),
            ("_kafka_partition", pa.int32()),
            ("_kafka_offset", pa.int64()),
            ("date", pa.date32()),
        ]
    )
