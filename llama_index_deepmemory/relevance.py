"""The one ``Relevance`` type and its validation: which nodes answer each query, with weights.

``relevance[i]`` lists the relevant nodes of query ``i`` as ``(node_id, weight)`` pairs. Every
entry point that takes relevance (``deep_memory.train``/``evaluate``, training itself, the data
readers and converters) checks it here, so the rules and the error messages are the same
everywhere:

* one relevance list per query, and at least one query;
* queries (when given) are non-empty strings;
* each entry is a ``(node_id, weight)`` pair (a bare ``node_id``, weight 1, where a caller
  allows it): the id a non-empty string, the weight a finite number >= 0;
* each query has at least one weight > 0; an id listed twice keeps its largest weight;
* with ``known_ids``, every id must be known (a collection, or a ``missing_ids`` function
  such as ``StoreView.missing_ids``).

Why a weight of 0 is accepted (>= 0, not > 0): it means "judged, not relevant", as in TREC and
BEIR qrels and in :mod:`llama_index_deepmemory.metrics`, so judgements can be passed on as they
are; a 0-weight node is neither a training target nor a hit. A relevance list written with such a
node (``write_query_log``) reads back unchanged (:func:`check_pair` serves the query-log readers
and the metrics as well, with the same rule and messages).
"""

from __future__ import annotations

import logging
import math
import numbers
import reprlib
from typing import Any, Callable, Collection, Iterable, Sequence

logger = logging.getLogger(__name__)

Relevance = list[list[tuple[str, float]]]
"""Per query, its relevant ``(node_id, weight)`` pairs (validated: see the module docstring)."""

KnownIds = Collection[str] | Callable[[Sequence[str]], list[str]]

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 200, 200


def shown(value: Any) -> str:
    """``repr(value)`` for error messages, shortened (nested values are cut at 3 levels, so a deep
    one never raises RecursionError)."""
    return _REPR.repr(value)


def validate_relevance(
    queries: Iterable[str] | None,
    relevance: Iterable[Iterable[Any]],
    *,
    known_ids: KnownIds | None = None,
    bare_ids: bool = False,
    n_queries: int | None = None,
) -> tuple[list[str] | None, Relevance]:
    """``(queries, relevance)`` checked and normalised: queries as a list (None stays None),
    relevance as lists of ``(str, float)`` pairs. Raises ValueError/TypeError naming the
    position, the observed value and the fix.

    Args:
        queries: the query strings, or None where the caller has only vectors (training).
        relevance: one iterable of entries per query.
        known_ids: ids every entry must name: a collection, or a function returning the ids
            among its argument that are missing (``store.missing_ids``).
        bare_ids: also accept a bare node id as an entry (weight 1.0).
        n_queries: the number of queries when ``queries`` is None (e.g. query vectors).
    """
    if queries is not None:
        queries = _as_list(queries, "queries")
    rows = _as_list(relevance, "relevance")
    if queries is not None:
        for i, query in enumerate(queries):
            _check_query(query, i)
        n_queries = len(queries)
    if n_queries is not None and n_queries != len(rows):
        raise ValueError(
            f"got {n_queries} queries but {len(rows)} relevance lists; queries and relevance must have the "
            "same length (one relevance list per query)"
        )
    clean = [_check_row(row, i, bare_ids) for i, row in enumerate(rows)]
    if known_ids is not None:
        _check_known(clean, known_ids, queries)
    return queries, clean


def _as_list(values: Any, name: str) -> list[Any]:
    """A non-empty list from a list, tuple, array or other iterable (a lone string is refused)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        what = "strings" if name == "queries" else "lists of (node_id, weight) pairs, one per query"
        raise TypeError(f"{name} must be a list of {what}, got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty: pass at least one query and its relevant node ids")
    return values


def _check_query(query: Any, i: int) -> None:
    if not isinstance(query, str):
        raise TypeError(f"queries[{i}] is a {type(query).__name__} ({query!r}), expected a non-empty string")
    if not query.strip():
        raise ValueError(f"queries[{i}] is an empty string ({query!r}); pass the question's text")


def check_weight(weight: Any, where: str, node_id: str | None = None) -> float:
    """``weight`` as a float when it is a finite number >= 0, else ValueError naming ``where``."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
        node = f" gives node {node_id!r}" if node_id is not None else " gives"
        raise ValueError(
            f"{where}{node} the weight {shown(weight)}; weights must be numbers, finite and >= 0 in each "
            "(node_id, weight) pair (0: listed but not relevant; use 1.0 for plain relevance)"
        )
    return float(weight)


def check_pair(entry: Any, where: str, bare_ids: bool = False) -> tuple[str, float]:
    """One entry as ``(node_id, weight)``: a pair (or, with ``bare_ids``, a bare id: weight 1)
    with a non-empty string id and a weight :func:`check_weight` accepts."""
    if bare_ids and isinstance(entry, str):
        node_id, weight = entry, 1.0
    elif isinstance(entry, (tuple, list)) and len(entry) == 2:
        node_id, weight = entry
    else:
        bare = " or a node id" if bare_ids else ""
        raise ValueError(
            f"{where} is {shown(entry)}; each entry must be a (node_id, weight) pair{bare} with a numeric weight, "
            "e.g. ('node_1', 1.0)"
        )
    if not isinstance(node_id, str) or not node_id:
        raise ValueError(f"{where}: the node id must be a non-empty string, got {shown(node_id)}")
    return node_id, check_weight(weight, where, node_id)


def has_relevant(weights: Iterable[float]) -> bool:
    """Whether any weight is > 0 (a query needs at least one relevant node)."""
    return any(w > 0 for w in weights)


def _check_row(row: Any, i: int, bare_ids: bool) -> list[tuple[str, float]]:
    """One query's entries as ``(id, weight)`` pairs, duplicates merged (largest weight kept)."""
    entries = list(row) if isinstance(row, Iterable) and not isinstance(row, (str, bytes)) else row
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"relevance[{i}] is {row!r}; each query needs a non-empty list of (node_id, weight) pairs, "
            "e.g. [('node_1', 1.0)]"
        )
    weights: dict[str, float] = {}
    for j, entry in enumerate(entries):
        node_id, weight = check_pair(entry, f"relevance[{i}][{j}]", bare_ids)
        weights[node_id] = max(weight, weights.get(node_id, 0.0))
    if not has_relevant(weights.values()):
        raise ValueError(
            f"relevance[{i}] has no node with a positive weight: {entries!r}; give at least one relevant "
            "node a weight > 0"
        )
    return list(weights.items())


def _check_known(rows: Relevance, known_ids: KnownIds, queries: list[str] | None) -> None:
    ids = list(dict.fromkeys(node for row in rows for node, _ in row))
    if callable(known_ids):
        missing = set(known_ids(ids))
    else:
        known = known_ids if isinstance(known_ids, (set, frozenset, dict)) else set(known_ids)
        missing = {node for node in ids if node not in known}
    if not missing:
        return
    for i, row in enumerate(rows):
        unknown = [node for node, _ in row if node in missing]
        if unknown:
            query = f" (query {queries[i]!r})" if queries is not None else ""
            raise ValueError(
                f"relevance[{i}]{query} names unknown ids {unknown[:5]} ({len(missing)} unknown id(s) in all); "
                "use the ids of stored nodes (node.node_id)"
            )
