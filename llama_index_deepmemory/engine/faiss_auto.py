"""``index_factory="auto"``: when the embedded store turns approximate, and how it stays accurate.

One rule, checked under the write lock by the add that reaches a size: the store holds HNSW only while
a probe finds recall@10 >= :data:`~llama_index_deepmemory.index.AUTO_MIN_RECALL` against exact search.

* Conversion: the add that reaches :data:`~llama_index_deepmemory.index.AUTO_APPROXIMATE_FROM` nodes
  builds the graph from the stored vectors and probes it at ``ef_search`` 128, doubled up to
  :data:`~llama_index_deepmemory.index.AUTO_EF_CAP` (a given ``ef_search`` only).
* Re-probe: each add that doubles the store since the last probe (20k, 40k, 80k, ...) probes the
  graph again from its ``ef_search``, doubling it up to the cap while it misses.
* A miss at the cap (or at a given ``ef_search``) makes the store exact for good, with a warning that
  names the size, the recall and the override (``index_factory="HNSW32"`` and ``ef_search``).

Probe queries look like real ones: two sets made from :data:`~llama_index_deepmemory.index.PROBE_QUERIES`
sampled stored vectors, one within their neighbourhoods and one off them
(:func:`~llama_index_deepmemory.index.probe_queries`); both must reach the recall, and nothing is
excluded from either top 10.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from llama_index_deepmemory import index as vector_index
from llama_index_deepmemory.index import AUTO, VectorIndex

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.engine.faiss_store import FaissStore

logger = logging.getLogger(__name__)

NEVER = 2**62  # "auto" stays exact: the node count it would try the approximate index again at


def next_probe_at(nodes: int) -> int:
    """The first doubling of ``AUTO_APPROXIMATE_FROM`` above ``nodes`` (the next re-probe size)."""
    at = vector_index.AUTO_APPROXIMATE_FROM
    while at <= nodes:
        at *= 2
    return at


def maintained(store: "FaissStore", index: VectorIndex) -> VectorIndex:
    """``index``, or what ``"auto"`` holds instead after this add (the caller holds the write lock):
    a graph once the store reaches its size, an exact index where a probe misses."""
    if store._index_factory != AUTO:
        return index
    nodes = len(store._table)  # live nodes, counted without listing their slots
    if index.exact:
        if nodes < max(vector_index.AUTO_APPROXIMATE_FROM, store._retry_at):
            return index
        return _convert(store, index, store._table.live_slots())
    if nodes < store._probe_at:
        return index
    live = store._table.live_slots()
    queries = vector_index.probe_queries(index, _sample(live, 2), seed=3)
    ef, recall = vector_index.tuned_ef(index, index, queries, store._ef_search,
                                       start=index.ef_search)
    if ef is None:
        _warn_miss(store, len(live), recall)
        flat = VectorIndex(index.dim, store._metric, "Flat")
        for start in range(0, len(live), vector_index.EXACT_SCAN_BATCH):
            chunk = live[start : start + vector_index.EXACT_SCAN_BATCH]
            flat.add(chunk, index.reconstruct(chunk))
        store._table.free_slots(index.dead_ids().tolist())  # the graph's tombstones: reusable again
        return flat
    store._probe_at = next_probe_at(len(live))
    return index


def _sample(rows: np.ndarray, seed: int) -> np.ndarray:
    size = min(vector_index.PROBE_QUERIES, len(rows))
    return np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))


def _warn_miss(store: "FaissStore", nodes: int, recall: float, probed: int | None = None) -> None:
    """Keep the store exact for good, saying why (``probed``: the nodes of a sampled graph, if not all)."""
    store._retry_at = NEVER
    tried = store._ef_search if store._ef_search is not None else vector_index.AUTO_EF_CAP
    where = f"on {nodes} nodes" if probed is None or probed == nodes else f"on a graph of {probed} of the {nodes} nodes"
    logger.warning(
        "index_factory='auto': %s reaches recall@10 %.3f < %.2f at ef_search=%d %s; search stays "
        "exact from now on (pass index_factory='Flat' to say so, or index_factory='%s' with a chosen "
        "ef_search to accept the approximate index)", vector_index.AUTO_APPROXIMATE_FACTORY, recall,
        vector_index.AUTO_MIN_RECALL, tried, where, vector_index.AUTO_APPROXIMATE_FACTORY)


def _convert(store: "FaissStore", index: VectorIndex, live: np.ndarray) -> VectorIndex:
    """The graph of ``live`` if it passes the probe, else ``index`` (and the store stays exact)."""
    size = vector_index.AUTO_APPROXIMATE_FROM
    # a large first conversion tries a graph of a sample first: a miss then costs a small build
    if len(live) > 2 * size:
        sample = np.sort(np.random.default_rng(0).choice(live, size=size, replace=False))
        if _graph_if_accurate(store, index, sample, len(live)) is None:
            return index
    logger.info("index_factory='auto': converting %d nodes to %s", len(live), vector_index.AUTO_APPROXIMATE_FACTORY)
    graph = _graph_if_accurate(store, index, live, len(live))
    if graph is None:
        return index
    store._probe_at = next_probe_at(len(live))
    return graph


def _graph_if_accurate(store: "FaissStore", index: VectorIndex, rows: np.ndarray, nodes: int) -> VectorIndex | None:
    """A graph of the stored vectors of ``rows`` (sorted slots) with its ``ef_search`` tuned, if the probe
    passes against exact search of the same rows; else None (the store then stays exact)."""
    graph = VectorIndex(index.dim, store._metric, vector_index.AUTO_APPROXIMATE_FACTORY, store._nprobe,
                        store._ef_search, ef_construction=vector_index.AUTO_EF_CONSTRUCTION)
    exact = index if len(rows) == len(store._table) else VectorIndex(index.dim, store._metric, "Flat")
    for start in range(0, len(rows), vector_index.EXACT_SCAN_BATCH):
        chunk = rows[start : start + vector_index.EXACT_SCAN_BATCH]
        vectors = index.reconstruct(chunk)
        graph.add(chunk, vectors)
        if exact is not index:
            exact.add(chunk, vectors)
    queries = vector_index.probe_queries(exact, _sample(rows, 1), seed=2)
    ef, recall = vector_index.tuned_ef(graph, exact, queries, store._ef_search)
    if ef is None:
        _warn_miss(store, nodes, recall, probed=len(rows))
        return None
    return graph
