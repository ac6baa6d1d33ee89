"""SQLite (WAL) store for models, jobs, events and artifacts.

The server and its worker processes each open their own connection. State
changes and the event that announces them are written in one transaction,
and a job that has ended never changes state again, so a worker finishing
and a user cancelling cannot both win.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from protos.distillery.v1 import distillery_pb2 as pb

from service.job_states import TERMINAL_STATES

T = TypeVar("T")

# A job's run time is run_seconds (earlier starts, and this one up to running_since) plus, while it is
# RUNNING, the time since running_since. plan: what CreateJob resolved (JSON, service.specs.plan_to_json), what
# the job runs. slots: how many of the server's job slots a running job holds (a search's trials in parallel may
# hold several; 1 otherwise). No SQL comments below: SQLite keeps them in the stored schema,
# and ALTER TABLE edits that text.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    format INTEGER NOT NULL,
    architecture TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    create_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    spec BLOB NOT NULL,
    state INTEGER NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    run_seconds REAL NOT NULL DEFAULT 0,
    running_since REAL,
    plan TEXT,
    slots INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN ourselves, so every transaction is explicit.
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)  # idempotent: IF NOT EXISTS throughout
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns that later versions introduced to a store an earlier version made."""
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}
        if "run_seconds" not in columns:
            self.db.execute("ALTER TABLE jobs ADD COLUMN run_seconds REAL NOT NULL DEFAULT 0")
            self.db.execute("ALTER TABLE jobs ADD COLUMN running_since REAL")
        if "plan" not in columns:  # jobs accepted before plans were stored have none: they are planned when they run
            self.db.execute("ALTER TABLE jobs ADD COLUMN plan TEXT")
        if "slots" not in columns:
            self.db.execute("ALTER TABLE jobs ADD COLUMN slots INTEGER NOT NULL DEFAULT 1")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so read-then-write is atomic across processes.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------- models

    def put_model(self, model: pb.Model) -> pb.Model:
        """Insert ``model`` unless its id exists; returns the stored row."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model.id, model.name, model.format, model.architecture, model.sha256, model.size_bytes, time.time()),
            )
        stored = self.get_model(model.id)
        assert stored is not None
        return stored

    def get_model(self, model_id: str) -> pb.Model | None:
        row = self.db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            return None
        return pb.Model(
            id=row["id"],
            name=row["name"],
            format=row["format"],
            architecture=row["architecture"],
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
            create_time=timestamp(row["create_time"]),
        )

    # --------------------------------------------------------------- jobs

    def create_job(self, spec: pb.JobSpec, request_id: str, max_queued: int, plan: str = "") -> tuple[pb.Job, bool]:
        """A new QUEUED job, or the existing one for ``request_id``; returns (job, created). ``plan``: the resolved plan.

        Raises OverflowError when ``max_queued`` jobs already wait.
        """
        with self.transaction() as db:
            if request_id:
                row = db.execute("SELECT id FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return self._job_unlocked(row["id"]), False
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (pb.JOB_STATE_QUEUED,)).fetchone()[0]
            if queued >= max_queued:
                raise OverflowError(f"the queue is full ({queued} jobs waiting, limit {max_queued})")
            job_id = "j-" + uuid.uuid4().hex[:16]
            db.execute(
                "INSERT INTO jobs (id, request_id, spec, state, create_time, plan) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, request_id or None, spec.SerializeToString(deterministic=True), pb.JOB_STATE_QUEUED, time.time(),
                 plan or None),
            )
            self._append_event(db, job_id, pb.JobEvent(state=pb.JOB_STATE_QUEUED, message="queued"))
            return self._job_unlocked(job_id), True

    def get_job(self, job_id: str) -> pb.Job | None:
        return self._job_unlocked(job_id)

    def get_plan(self, job_id: str) -> str:
        """The plan stored when the job was accepted ("" for jobs from before plans were stored)."""
        row = self.db.execute("SELECT plan FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (row["plan"] or "") if row is not None else ""

    def set_plan(self, job_id: str, plan: str) -> None:
        """Replace the stored plan with what the job settled while running (a student picked for a budget), so a
        resumed run and every training process run the same plan."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET plan = ? WHERE id = ?", (plan, job_id))

    def _job_unlocked(self, job_id: str) -> pb.Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job_from_row(row, self.list_artifacts(job_id))

    def _job_from_row(self, row: sqlite3.Row, artifacts: list[pb.Artifact]) -> pb.Job:
        spec = pb.JobSpec()
        spec.ParseFromString(row["spec"])
        job = pb.Job(
            id=row["id"],
            request_id=row["request_id"] or "",
            spec=spec,
            state=row["state"],
            stage=row["stage"],
            progress=row["progress"],
            create_time=timestamp(row["create_time"]),
            start_time=timestamp(row["start_time"]),
            end_time=timestamp(row["end_time"]),
        )
        job.run_time.FromNanoseconds(int(_run_seconds(row, time.time()) * 1e9))
        if row["error_code"]:
            job.error.code, job.error.message = row["error_code"], row["error_message"]
        job.artifacts.extend(artifacts)
        return job

    def list_jobs(self, page_size: int, page_token: str, state: int) -> tuple[list[pb.Job], str]:
        """Newest first. The token is the position after which the next page starts."""
        before = _decode_token(page_token) if page_token else None
        query, args = "SELECT * FROM jobs WHERE 1=1", []
        if state:
            query, args = query + " AND state = ?", args + [state]
        if before is not None:
            query, args = query + " AND seq < ?", args + [before]
        rows = self.db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, page_size + 1)).fetchall()
        next_token = _encode_token(rows[page_size - 1]["seq"]) if len(rows) > page_size else ""
        rows = rows[:page_size]
        # The page's artifacts in one query, not one per job.
        artifacts: dict[str, list[pb.Artifact]] = {r["id"]: [] for r in rows}
        for a in self.db.execute(
            f"SELECT * FROM artifacts WHERE job_id IN ({', '.join('?' * len(rows))}) ORDER BY job_id, name",
            list(artifacts),
        ):
            artifacts[a["job_id"]].append(_artifact(a))
        return [self._job_from_row(r, artifacts[r["id"]]) for r in rows], next_token

    def next_queued(self) -> str | None:
        row = self.db.execute(
            "SELECT id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (pb.JOB_STATE_QUEUED,)
        ).fetchone()
        return row["id"] if row else None

    def ids_in_state(self, state: int) -> list[str]:
        return [r["id"] for r in self.db.execute("SELECT id FROM jobs WHERE state = ?", (state,))]

    def transition(
        self, job_id: str, state: int, message: str = "", error_code: int = 0, count_running_time: bool = True,
        slot_limit: int = 0,
    ) -> bool:
        """Move a job that has not ended to ``state``; False when it had already ended, or when ``slot_limit`` is set
        and the running jobs hold that many slots (a search running trials in parallel holds several).

        ``count_running_time=False`` leaves a run's time since its last
        ``save_run_time`` uncounted: for a job the server was running when it
        died, that would count the downtime too.
        """
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] in TERMINAL_STATES:
                return False
            if slot_limit and self._slots_held(db) >= slot_limit:
                return False
            sets = {"state": state, "slots": 1}  # a job leaving RUNNING gives back what it held
            if state == pb.JOB_STATE_RUNNING:
                sets["running_since"] = now
                if row["start_time"] is None:  # a requeued job keeps its first start
                    sets["start_time"] = now
            elif row["running_since"] is not None:
                sets["run_seconds"] = _run_seconds(row, now) if count_running_time else row["run_seconds"]
                sets["running_since"] = None
            if state in TERMINAL_STATES:
                sets["end_time"] = now
            if state == pb.JOB_STATE_SUCCEEDED:
                sets["progress"] = 1.0
            if error_code:
                sets["error_code"], sets["error_message"] = error_code, message
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?", (*sets.values(), job_id)
            )
            progress = sets.get("progress", row["progress"])
            self._append_event(db, job_id, pb.JobEvent(state=state, message=message, progress=progress))
            return True

    @staticmethod
    def _slots_held(db: sqlite3.Connection, but: str = "") -> int:
        row = db.execute("SELECT COALESCE(SUM(slots), 0) FROM jobs WHERE state = ? AND id != ?",
                         (pb.JOB_STATE_RUNNING, but)).fetchone()
        return int(row[0])

    def claim_slots(self, job_id: str, wanted: int, limit: int) -> int:
        """Let a running job hold up to ``wanted`` of the server's ``limit`` job slots (at least its own one); returns
        how many it holds now. The supervisor starts no job into them until ``release_slots`` or the job ends."""
        with self.transaction() as db:
            granted = max(1, min(wanted, limit - self._slots_held(db, but=job_id)))
            db.execute("UPDATE jobs SET slots = ? WHERE id = ?", (granted, job_id))
        return granted

    def release_slots(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET slots = 1 WHERE id = ?", (job_id,))

    def reopen(self, job_id: str, message: str) -> bool:
        """Put a FAILED job back in the queue (RetryJob), its artifacts and run time kept; False when it is not FAILED."""
        with self.transaction() as db:
            row = db.execute("SELECT state, progress FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != pb.JOB_STATE_FAILED:
                return False
            db.execute(
                "UPDATE jobs SET state = ?, end_time = NULL, error_code = 0, error_message = '' WHERE id = ?",
                (pb.JOB_STATE_QUEUED, job_id),
            )
            self._append_event(db, job_id, pb.JobEvent(state=pb.JOB_STATE_QUEUED, message=message, progress=row["progress"]))
            return True

    def save_run_time(self, job_ids: list[str]) -> None:
        """Fold the running jobs' time so far into their saved run time (what survives a crash of the server)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE jobs SET run_seconds = run_seconds + MAX(0, ? - running_since), running_since = ? "
                "WHERE id = ? AND running_since IS NOT NULL",
                [(now, now, job_id) for job_id in job_ids],
            )

    def run_seconds(self, job_ids: list[str]) -> dict[str, float]:
        """How long each job has run, over all its starts; what --job-time-limit counts."""
        now = time.time()
        rows = self.db.execute(
            f"SELECT id, run_seconds, running_since FROM jobs WHERE id IN ({', '.join('?' * len(job_ids))})", job_ids
        )
        return {row["id"]: _run_seconds(row, now) for row in rows}

    def record_progress(self, job_id: str, event: pb.JobEvent) -> None:
        """Append a progress event and mirror its stage and progress on the job."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET stage = ?, progress = ? WHERE id = ?", (event.stage, event.progress, job_id))
            self._append_event(db, job_id, event)

    def _append_event(self, db: sqlite3.Connection, job_id: str, event: pb.JobEvent) -> None:
        sequence = db.execute("SELECT COALESCE(MAX(sequence), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        event.sequence = sequence
        event.time.GetCurrentTime()
        if not event.state:
            event.state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()["state"]
        db.execute(
            "INSERT INTO events VALUES (?, ?, ?)", (job_id, sequence, event.SerializeToString(deterministic=True))
        )

    def events(self, job_id: str, after_sequence: int) -> list[pb.JobEvent]:
        rows = self.db.execute(
            "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence", (job_id, after_sequence)
        )
        out = []
        for row in rows:
            event = pb.JobEvent()
            event.ParseFromString(row["event"])
            out.append(event)
        return out

    def event_watermark(self) -> int:
        """A number that grows whenever any event is written (for cheap change polling)."""
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]

    # ---------------------------------------------------------- artifacts

    def put_artifact(self, job_id: str, artifact: pb.Artifact) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)",
                (job_id, artifact.name, artifact.sha256, artifact.size_bytes),
            )

    def list_artifacts(self, job_id: str) -> list[pb.Artifact]:
        rows = self.db.execute("SELECT * FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,))
        return [_artifact(r) for r in rows]


def _artifact(row: sqlite3.Row) -> pb.Artifact:
    return pb.Artifact(name=row["name"], sha256=row["sha256"], size_bytes=row["size_bytes"])


def _run_seconds(row: sqlite3.Row, now: float) -> float:
    since = row["running_since"]
    return row["run_seconds"] + (max(0.0, now - since) if since is not None else 0.0)


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        kind, value = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if kind != "seq":
            raise ValueError(kind)
        return int(value)
    except Exception as e:
        raise ValueError(f"invalid page_token {token!r}") from e


class StoreThread:
    """The store as the server's event loop uses it: every call is awaited and runs on this one thread.

    A SQLite call can block (another process holds the write lock: up to the
    busy timeout; a WAL checkpoint writes to disk). On a thread of its own it
    never stalls the event loop, and one thread means the one connection is
    used by one thread at a time, in the order the calls were made.
    ``await store_thread.get_job(job_id)`` runs ``Store.get_job`` there.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the store's thread: after every call made before it, before every one made after."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.store, name)
        return functools.partial(self.run, method)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()
