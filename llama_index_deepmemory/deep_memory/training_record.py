"""What a Deep Memory model was trained on, kept with it, so that later training adds to it.

Each trained model keeps a :class:`TrainingRecord`: its query texts and relevance (node ids and
weights), persisted in the store's Deep Memory state next to the model. Training on feedback
(``train_on_feedback``, ``deepmemory train``) merges that record with the new data by default,
so a feedback log of a few questions adds to what the model learned instead of replacing it.
:func:`merge_query_relevance` is the one merge: the same question text in several sources becomes
one query whose relevant ids are the union, each keeping its largest weight.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

logger = logging.getLogger(__name__)

RECORD_FORMAT_VERSION = 1
QueryRelevance = tuple[list[str], list[list[tuple[str, float]]]]


def merge_query_relevance(*parts: tuple[Sequence[str], Sequence[Sequence[tuple[str, float]]]]) -> QueryRelevance:
    """Concatenate ``(queries, relevance)`` parts; identical query texts merge (first-seen order,
    union of ids, largest weight per id)."""
    order: list[str] = []
    merged: dict[str, dict[str, float]] = {}
    for queries, relevance in parts:
        if len(queries) != len(relevance):
            raise ValueError(f"{len(queries)} queries but {len(relevance)} relevance rows")
        for query, pairs in zip(queries, relevance):
            if query not in merged:
                order.append(query)
                merged[query] = {}
            row = merged[query]
            for node_id, weight in pairs:
                row[node_id] = max(float(weight), row.get(node_id, float("-inf")))
    return order, [list(merged[q].items()) for q in order]


def drop_missing_ids(store: Any, queries: Sequence[str], relevance: Sequence[Sequence[tuple[str, float]]]
                     ) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """Drop relevant ids no longer in the store (with a warning), and the queries left without any."""
    all_ids = sorted({node_id for pairs in relevance for node_id, _ in pairs})
    missing = set(store.missing_ids(all_ids)) if hasattr(store, "missing_ids") else set()
    if not missing:
        return list(queries), [list(pairs) for pairs in relevance]
    logger.warning("Dropping %d relevant node ids no longer in the store (e.g. %s)", len(missing), sorted(missing)[:3])
    kept = [(q, [p for p in pairs if p[0] not in missing]) for q, pairs in zip(queries, relevance)]
    return [q for q, pairs in kept if pairs], [pairs for _, pairs in kept if pairs]


@dataclass
class TrainingRecord:
    """The queries and relevance one model was trained on."""

    queries: list[str] = field(default_factory=list)
    relevance: list[list[tuple[str, float]]] = field(default_factory=list)

    @classmethod
    def of(cls, queries: Iterable[str], relevance: Iterable[Sequence[tuple[str, float]]]) -> "TrainingRecord":
        return cls([str(q) for q in queries], [[(str(i), float(w)) for i, w in pairs] for pairs in relevance])

    def __len__(self) -> int:
        return len(self.queries)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": RECORD_FORMAT_VERSION, "queries": list(self.queries),
                "relevance": [[[node_id, weight] for node_id, weight in pairs] for pairs in self.relevance]}

    @classmethod
    def from_json(cls, data: Any, where: str = "training record") -> "TrainingRecord":
        """Inverse of :meth:`to_json`; ValueError naming ``where`` when it is malformed or newer."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not a JSON object")
        version = data.get("format_version")
        if version != RECORD_FORMAT_VERSION:
            raise ValueError(f"{where} has format_version {version!r}, this package reads {RECORD_FORMAT_VERSION}"
                             + ("; upgrade llama-index-deepmemory" if isinstance(version, int) and version > 1 else ""))
        try:
            queries = [q for q in data["queries"] if isinstance(q, str)]
            relevance = [[(str(i), float(w)) for i, w in pairs] for pairs in data["relevance"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where} is malformed ({type(exc).__name__}: {exc})") from exc
        if len(queries) != len(data["queries"]) or len(queries) != len(relevance):
            raise ValueError(f"{where} is malformed: {len(data['queries'])} queries, {len(relevance)} relevance rows")
        if not all(math.isfinite(w) for pairs in relevance for _, w in pairs):
            raise ValueError(f"{where} is malformed: a relevance weight is not finite")
        return cls(queries, relevance)
