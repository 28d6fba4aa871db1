"""Feedback from use -> a local query log that Deep Memory trains on.

Each piece of feedback (a source marked helpful, or the sources an answer cited when the user
opted in) becomes one JSONL row in the format :func:`~llama_index_deepmemory.data.datasets.read_query_log`
reads::

    {"query": "<standalone question>", "relevant_ids": ["node_7"], "weight": 1.0,
     "kind": "helpful", "conversation": "support", "turn_id": "3f9c0a7d1e2b4c55", "at": 1733350000.0}

so ``deepmemory train --query-log LOG`` (or :func:`train_on_feedback`) retrains on it. The log is
rewritten whole through a temporary file and ``os.replace`` under a lock file, so concurrent
writers never interleave and a crash never leaves half a row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from llama_index_deepmemory.atomic import write_text_atomic

logger = logging.getLogger(__name__)

LOG_SUFFIXES = (".jsonl", ".ndjson")


def check_log_path(path: str | os.PathLike[str]) -> Path:
    """The log path if it names a ``.jsonl``/``.ndjson`` file, else ValueError."""
    log = Path(path)
    if log.suffix.lower() not in LOG_SUFFIXES:
        raise ValueError(f"feedback log {str(log)!r} must be a .jsonl or .ndjson file (the format read_query_log reads)")
    if log.exists() and not log.is_file():
        raise ValueError(f"feedback log {str(log)!r} is not a file")
    return log


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``.<name>.lock`` beside ``path`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def append_feedback(
    log_path: str | os.PathLike[str],
    query: str,
    node_ids: Sequence[str],
    *,
    weight: float = 1.0,
    kind: str = "helpful",
    **context: Any,
) -> dict[str, Any]:
    """Append one feedback row (``query`` -> ``node_ids``) to the JSONL log; returns the row.

    ``context`` adds JSON-serialisable fields (``conversation``, ``turn``, ...); readers ignore them.
    """
    log = check_log_path(log_path)
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"feedback needs the question it is about, got {query!r}")
    if isinstance(node_ids, str) or not node_ids or not all(isinstance(i, str) and i for i in node_ids):
        raise ValueError(f"feedback needs a non-empty list of node ids, got {node_ids!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"feedback weight must be a finite number > 0, got {weight!r}")
    row = {"query": " ".join(query.split()), "relevant_ids": list(dict.fromkeys(node_ids)), "weight": float(weight),
           "kind": kind, **context, "at": time.time()}
    line = json.dumps(row, ensure_ascii=False)
    with locked(log):
        try:
            existing = log.read_text(encoding="utf-8") if log.is_file() else ""
        except UnicodeDecodeError as exc:
            raise ValueError(f"feedback log {str(log)!r} is not UTF-8 text ({exc}); it is left as it is: move it aside "
                             "to start a new log") from exc
        if existing and not existing.endswith("\n"):
            existing += "\n"
        write_text_atomic(log, existing + line + "\n")
    logger.info("Feedback logged to %s: %r -> %s", log, row["query"], row["relevant_ids"])
    return row


def train_on_feedback(
    store: Any,
    log_path: str | os.PathLike[str],
    *,
    queries: Sequence[str] = (),
    relevance: Sequence[Sequence[tuple[str, float]]] = (),
    include_trained: bool = True,
    **options: Any,
) -> str:
    """Train ``store.deep_memory`` on the feedback log, plus what the active model was trained on.

    By default (``include_trained=True``) the queries and relevance the active model was trained
    on (kept with it: ``store.deep_memory.training_data()``) are added, so feedback adds to what
    was learned instead of replacing it; ``queries``/``relevance`` add more. Same-question rows
    merge; ids no longer in the store are dropped (with a warning). ``options`` go to
    ``store.deep_memory.train``. Returns the job id; like any training, the new model is
    activated only if it beats the plain store on validation.
    """
    from llama_index_deepmemory.data.datasets import read_query_log
    from llama_index_deepmemory.deep_memory.training_record import drop_missing_ids, merge_query_relevance

    parts = []
    if include_trained:
        previous = store.deep_memory.training_data()
        if previous is None and store.deep_memory.get_model() is not None:
            logger.warning("The active model %s keeps no record of its training data (trained by an earlier version): "
                           "training on the feedback alone", store.deep_memory.get_model())
        elif previous is not None:
            parts.append(previous)
    parts.append((list(queries), [list(pairs) for pairs in relevance]))
    parts.append(read_query_log(check_log_path(log_path)))
    all_queries, all_relevance = drop_missing_ids(store, *merge_query_relevance(*parts))
    return store.deep_memory.train(all_queries, all_relevance, **options)
