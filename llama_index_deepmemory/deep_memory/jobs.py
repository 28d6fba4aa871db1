"""Deep Memory training jobs: records, a one-at-a-time worker, progress/ETA and status tables.

Jobs run one at a time, in submission order, on a single daemon worker thread per store (it
exits after ``IDLE_EXIT_SECONDS`` without work and is restarted by the next submit): a job
submitted while another runs is *queued* (status ``"queued"``) and starts when the earlier job
ends. Cancelling a queued job drops it; cancelling a running job asks it to stop at its next
progress check. Standard library only.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

logger = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)
SAVED_MID_RUN = "interrupted: the store was saved while this job was queued or running"  # a copy's unfinished job
HEADLINE_METRIC = "recall@10"
IDLE_EXIT_SECONDS = 2.0  # an idle worker thread exits after this long; the next submit restarts it
EXIT_WAIT_SECONDS = 10.0  # at interpreter exit, how long to wait for a cancelled job to stop
_BOOKS: "weakref.WeakSet[JobBook]" = weakref.WeakSet()


class JobCancelled(Exception):
    """Raised inside a job's work when a cancel was requested."""


@dataclass
class JobRecord:
    """Everything known about one training job (JSON-able through :meth:`to_dict`)."""

    job_id: str
    status: str = QUEUED
    progress: float = 0.0
    message: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    num_queries: int = 0
    val_before: dict[str, float] = field(default_factory=dict)
    val_after: dict[str, float] = field(default_factory=dict)
    model_name: str | None = None
    active: bool = False
    error: str | None = None
    note: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None  # host:pid of the process running it

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the progress so far; None before any progress."""
        if self.status in FINISHED:
            return 0.0
        if self.status != RUNNING or self.started_at is None or self.progress <= 0:
            return None
        elapsed = (time.time() if now is None else now) - self.started_at
        return max(0.0, elapsed * (1.0 - self.progress) / self.progress)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, with the current ETA."""
        data = dataclasses.asdict(self)
        data["eta_seconds"] = self.eta_seconds()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobRecord":
        """Inverse of :meth:`to_dict` (unknown keys from newer versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


class JobContext:
    """Handed to a job's work function: report progress, check for cancellation."""

    def __init__(self, book: "JobBook", job_id: str, cancel_event: threading.Event) -> None:
        self._book = book
        self.job_id = job_id
        self._cancel_event = cancel_event

    def should_stop(self) -> bool:
        """True once ``cancel`` was requested."""
        return self._cancel_event.is_set()

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress in ``[0, 1]`` and a short message."""
        fraction = min(1.0, max(0.0, float(fraction)))
        self._book.update(self.job_id, progress=fraction, message=str(message))

    def raise_if_cancelled(self) -> None:
        """Raise :class:`JobCancelled` once a cancel was requested."""
        if self.should_stop():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def complete(self, **fields: Any) -> None:
        """Mark the job completed with ``fields``, atomically with respect to ``cancel``.

        Raises :class:`JobCancelled` instead when a cancel came first, so a caller that commits
        its result right after this call never commits a cancelled job's result.
        """
        with self._book._lock:
            self.raise_if_cancelled()
            self._book.update(self.job_id, status=COMPLETED, progress=1.0, finished_at=time.time(), **fields)


Work = Callable[[JobContext], "dict[str, Any] | None"]


class JobBook:
    """Thread-safe job records plus the single worker thread that runs queued jobs in order."""

    def __init__(self, prefix: str = "job", idle_exit_seconds: float = IDLE_EXIT_SECONDS) -> None:
        self._prefix = prefix
        self.idle_exit_seconds = idle_exit_seconds
        self._lock = threading.RLock()
        self._records: dict[str, JobRecord] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._queue: "queue.Queue[tuple[str, Work]]" = queue.Queue()
        self._worker: threading.Thread | None = None
        self._counter = 0
        self.on_status: Callable[[JobRecord], None] | None = None  # told of each start and end
        _BOOKS.add(self)

    # --- records -------------------------------------------------------------------------
    def new_id(self) -> tuple[str, int]:
        """A fresh job id ``job_<n>`` and its number ``n``."""
        with self._lock:
            self._counter += 1
            return f"{self._prefix}_{self._counter}", self._counter

    def get(self, job_id: str) -> JobRecord:
        """A snapshot (copy) of one record; ValueError naming known ids if unknown."""
        check_job_id(job_id)
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                known = list(self._records) or "none yet"
                raise ValueError(f"unknown job id {job_id!r}; known jobs: {known}")
            return dataclasses.replace(record)

    def records(self) -> list[JobRecord]:
        """Snapshots of all records, oldest first."""
        with self._lock:
            return [dataclasses.replace(record) for record in self._records.values()]

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of one record atomically."""
        with self._lock:
            record = self._records[job_id]
            for key, value in fields.items():
                setattr(record, key, value)

    # --- running ---------------------------------------------------------------------------
    def submit(self, record: JobRecord, work: Work) -> None:
        """Queue ``work`` under ``record``; it runs after every job submitted before it."""
        with self._lock:
            self._records[record.job_id] = record
            self._cancel[record.job_id] = threading.Event()
            self._done[record.job_id] = threading.Event()
            # queued and checked under the lock the idle worker takes before it exits
            self._queue.put((record.job_id, work))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work_loop, name="deep-memory-jobs", daemon=True)
                self._worker.start()

    def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` seconds passed (False)."""
        check_job_id(job_id)
        with self._lock:
            done = self._done.get(job_id)
        if done is None:
            return self.get(job_id).status in FINISHED
        return done.wait(timeout)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop. True when it was queued or running, False when already finished."""
        with self._lock:
            record = self.get(job_id)
            if record.status in FINISHED:
                return False
            self._cancel[job_id].set()
            if record.status == QUEUED:
                self.update(job_id, status=CANCELLED, finished_at=time.time(), message="cancelled before start")
                self._done[job_id].set()
                self._tell(job_id)
            return True

    def stop_all(self, timeout: float) -> None:
        """Cancel every unfinished job and wait up to ``timeout`` seconds for the worker to idle."""
        with self._lock:
            unfinished = [r.job_id for r in self._records.values() if r.status not in FINISHED]
        for job_id in unfinished:
            self.cancel(job_id)
        deadline = time.monotonic() + timeout
        for job_id in unfinished:
            self.wait(job_id, max(0.0, deadline - time.monotonic()))

    def _work_loop(self) -> None:
        while True:
            try:
                job_id, work = self._queue.get(timeout=self.idle_exit_seconds)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing was submitted meanwhile: stop idling
                        if self._worker is threading.current_thread():
                            self._worker = None
                        return
                continue
            try:
                self._run(job_id, work)
            except Exception:  # noqa: BLE001 - e.g. records replaced by load_state mid-job
                logger.exception("Deep Memory job %s could not be recorded", job_id)
            finally:
                self._queue.task_done()

    def _run(self, job_id: str, work: Work) -> None:
        with self._lock:
            if self._records[job_id].status != QUEUED:  # cancelled while queued
                return
            self.update(job_id, status=RUNNING, started_at=time.time(), message="starting")
            context = JobContext(self, job_id, self._cancel[job_id])
        self._tell(job_id)
        try:
            outcome = work(context)
            with self._lock:
                if self._records[job_id].status == RUNNING:  # not already completed by the work
                    context.complete(**(outcome or {}))
        except JobCancelled:
            logger.info("Deep Memory job %s cancelled", job_id)
            self.update(job_id, status=CANCELLED, finished_at=time.time(), message="cancelled")
        except BaseException as exc:  # noqa: BLE001 - a job's failure must never kill the worker
            logger.warning("Deep Memory job %s failed", job_id, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            self.update(job_id, status=FAILED, finished_at=time.time(), error=error, message="failed")
        finally:
            self._tell(job_id)
            self._done[job_id].set()

    def _tell(self, job_id: str) -> None:
        hook = self.on_status
        if hook is not None:
            try:
                hook(self.get(job_id))
            except Exception:  # noqa: BLE001 - recording a status must never break the worker
                logger.warning("could not record the status of job %s", job_id, exc_info=True)

    # --- persistence -----------------------------------------------------------------------
    def to_state(self) -> list[dict[str, Any]]:
        """All records as JSON-able dicts."""
        with self._lock:
            return [dataclasses.asdict(record) for record in self._records.values()]

    def load_state(self, rows: list[dict[str, Any]]) -> None:
        """Replace the records with persisted ones; jobs saved mid-run are marked failed."""
        with self._lock:
            self._records = {}
            for row in rows:
                record = JobRecord.from_dict(row)
                if record.status not in FINISHED:
                    record.status = FAILED
                    record.error = SAVED_MID_RUN
                self._records[record.job_id] = record
                number = record.job_id.rsplit("_", 1)[-1]
                if number.isdigit():
                    self._counter = max(self._counter, int(number))


def check_job_id(job_id: Any) -> None:
    """TypeError naming ``job_id`` unless it is a str (a job's id)."""
    if not isinstance(job_id, str):
        raise TypeError(f"a Deep Memory job id is a str such as 'job_1' (list_jobs() names them), got {job_id!r}")


def mark_if_orphaned(record: JobRecord) -> None:
    """A record another process left unfinished: marked failed when that process (on this host)
    is gone, so a crashed trainer does not show as running forever."""
    if record.status in FINISHED or not record.owner or ":" not in record.owner:
        return
    host, _, pid = record.owner.rpartition(":")
    import socket

    if host != socket.gethostname() or not pid.isdigit():
        return
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        record.status, record.message = FAILED, "failed"
        record.error = f"interrupted: process {pid} ended before the job finished"
    except OSError:  # exists, owned by another user
        pass


# --- status formatting ----------------------------------------------------------------------
def format_seconds(seconds: float | None) -> str:
    """``"1.4 seconds"``, ``"3.2 minutes"`` or ``"unknown"``."""
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.1f} hours"


def format_time(timestamp: float | None) -> str:
    """UTC ISO time to the second, or ``"-"``."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_result(record: JobRecord, metric: str = HEADLINE_METRIC) -> str:
    """``"recall@10: 79.00% (+34.00%)"``: validation metric after training and its change."""
    after = record.val_after.get(metric)
    if after is None:
        return "not available yet"
    before = record.val_before.get(metric)
    change = f" ({100 * (after - before):+.2f}%)" if before is not None else ""
    return f"{metric}: {100 * after:.2f}%{change}"


def _table(title: str, rows: list[tuple[str, list[str]]], width: int = 62) -> str:
    left = 28
    rule = "-" * width
    lines = [rule, "|" + title.center(width - 2) + "|", rule]
    for name, values in rows:
        for i, value in enumerate(values or [""]):
            label = name if i == 0 else ""
            lines.append(f"| {label:<{left - 2}}| {value:<{width - left - 4}} |")
        lines.append(rule)
    return "\n".join(lines)


def format_status(record: JobRecord) -> str:
    """Activeloop-style status box for one job."""
    eta = record.eta_seconds()
    progress = [f"{100 * record.progress:.2f}%", f"eta: {format_seconds(eta)}"]
    if record.message and record.status == RUNNING:
        progress.extend(_wrap(record.message))
    rows: list[tuple[str, list[str]]] = [("status", [record.status]), ("progress", progress)]
    rows.append(("results", [format_result(record)]))
    if record.model_name:
        state = "active" if record.active else "kept, not active"
        rows.append(("model", [f"{record.model_name} ({state})"]))
    if record.note:
        rows.append(("note", _wrap(record.note)))
    if record.error:
        rows.append(("error", _wrap(record.error)))
    rows.append(("started / finished", [format_time(record.started_at), format_time(record.finished_at)]))
    return _table(record.job_id, rows)


def format_jobs(records: list[JobRecord]) -> str:
    """One line per job: id, status, result, progress."""
    header = f"{'ID':<12}{'STATUS':<11}{'MODEL':<12}{'RESULTS':<32}PROGRESS"
    lines = [header]
    for record in records:
        model = record.model_name or "-"
        if record.model_name and record.active:
            model += "*"
        progress = f"{100 * record.progress:.0f}%"
        lines.append(f"{record.job_id:<12}{record.status:<11}{model:<12}{format_result(record):<32}{progress}")
    return "\n".join(lines)


def _wrap(text: str, width: int = 30) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


@atexit.register
def _stop_jobs_at_exit() -> None:
    """Daemon workers die abruptly at exit; ask running jobs to stop cleanly first."""
    for book in list(_BOOKS):
        book.stop_all(EXIT_WAIT_SECONDS)
