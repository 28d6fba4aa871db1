"""The narrow interface between the vector store and Deep Memory.

The store knows Deep Memory only through :class:`DeepMemoryModel` (numpy-only at query time,
so querying never imports torch). Deep Memory knows the store only through :class:`StoreView`.

Scores are always "higher is better" in the store's scale: cosine similarity (inner product of
normalised vectors) for ``metric="cosine"``, the inner product for ``"ip"`` and the negative
squared L2 distance for ``"l2"``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

logger = logging.getLogger(__name__)

_kernels_lock = threading.Lock()
_kernels: list[ModuleType | None] = []  # filled once by compiled_kernels()


def compiled_kernels() -> ModuleType | None:
    """The compiled kernels (``deep_memory.kernels``), or None without numba: models then apply
    on numpy (the ranking runs the kernels as plain Python), the same results, slower. Imported on first use, so importing the
    package and querying without Deep Memory never load numba."""
    if not _kernels:
        with _kernels_lock:
            if not _kernels:
                try:
                    from llama_index_deepmemory.deep_memory import kernels
                except Exception as error:  # numba missing, built for another numpy, or no cache dir
                    logger.warning("Deep Memory queries run on numpy (slower): cannot import numba (%s)", error)
                    kernels = None
                if kernels is not None and not kernels.COMPILED:  # imported, but as plain Python: numpy is faster
                    kernels = None
                _kernels.append(kernels)
    return _kernels[0]


def checked_transform(queries: np.ndarray, transformed: Any) -> np.ndarray:
    """A model's transformed ``queries`` as C-contiguous float32, or a clear error when they have
    another shape or hold NaN or infinity."""
    out = np.ascontiguousarray(transformed, dtype=np.float32)
    if out.shape != queries.shape or not math.isfinite(float(out.sum(dtype=np.float64))):
        raise ValueError(
            f"the active Deep Memory model returned transformed queries of shape {out.shape} "
            f"(expected {queries.shape}) or non-finite values; check the query vectors' scale or retrain the model"
        )
    return out


def checked_scores(queries: np.ndarray, ids: Sequence[str], scores: Any) -> np.ndarray:
    """A model's override ``scores`` as float32 (m, len(ids)), or numpy's error when they cannot be."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(queries), len(ids)):
        scores = scores.reshape(len(queries), len(ids))
    return scores


def checks_own_output(apply: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an ``apply`` that returns what :meth:`DeepMemoryModel.apply` guarantees; the store
    checks the results of any other ``apply`` (a subclass's override) itself."""
    apply.checks_own_output = True  # type: ignore[attr-defined]
    return apply


def check_query_texts(texts: Sequence[str | None] | None, n_queries: int) -> list[str | None] | None:
    """``texts`` as a list with one query string (or None) per query vector, or a clear error."""
    if texts is None:
        return None
    if isinstance(texts, (str, bytes)):
        raise TypeError("query texts must be a sequence with one string per query, not a single string")
    texts = list(texts)
    if len(texts) != n_queries:
        raise ValueError(f"got {len(texts)} query texts for {n_queries} query vectors; pass one per query")
    bad = [t for t in texts if t is not None and not isinstance(t, str)]
    if bad:
        raise TypeError(f"query texts must be strings (or None), got e.g. {bad[0]!r}")
    return texts


@dataclass(frozen=True)
class KeywordPlan:
    """A model's keyword re-scoring (step 3 of :class:`DeepMemoryModel`): each candidate of a
    query scores ``score + weight * bm25 / max(bm25 over the query's candidates)``, BM25 from
    ``index`` (:class:`~llama_index_deepmemory.deep_memory.lexical.LexicalIndex`).
    ``override_ids``: the model's override ids, whose index rows the plan keeps
    (:meth:`override_rows`). :meth:`rescore` is the reference; the ranking kernel computes it."""

    index: "LexicalIndex"
    weight: float
    override_ids: tuple[str, ...] = ()
    _rows: dict = field(default_factory=dict, compare=False, repr=False)  # index.n_used -> override_rows

    def rescore(
        self,
        query_text: str | None,
        rows: np.ndarray,
        scores: np.ndarray,
        node_texts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Re-scored ``scores`` of one query's candidates given as ``index`` rows (``rows_of``;
        -1: not indexed, scored from ``node_texts``); unchanged without query text."""
        if not query_text or not len(rows):
            return scores
        keyword = self.index.scores_at(query_text, rows, node_texts)
        best = float(keyword.max())
        if best <= 0:
            return scores
        return np.asarray(scores, dtype=np.float32) + np.float32(self.weight / best) * keyword

    def override_rows(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the index rows of override ``ids`` (-1: unindexed), a flag per index row marking
        them, plus a last cell for row -1, False; the positions of the unindexed ids). Kept for
        :attr:`override_ids` while the index uses the same nodes (``n_used``, which only drops)."""
        own = ids is self.override_ids or tuple(ids) == self.override_ids
        used = self.index.n_used
        kept = self._rows.get(used) if own else None
        if kept is None:
            rows = np.asarray(self.index.rows_of(list(ids)), dtype=np.int64)
            flags = np.zeros(len(self.index) + 1, dtype=bool)
            flags[rows[rows >= 0]] = True
            kept = (rows, flags, np.flatnonzero(rows < 0))
            if own:
                self._rows.clear()
                self._rows[used] = kept
        return kept


class StoreView(Protocol):
    """What Deep Memory may ask of a store.

    A store may also offer ``search_rows(query, k, filters, index)``: one prepared query's plain
    top ``k`` as (scores, the hits' rows in the keyword ``index``, a function from a hit's
    position to its id), or None when it cannot now; the ranking then ranks a keyword query
    without looking up the hits' ids (the embedded store does), and ``search_slots(query, k, filters,
    override_ids)``: a dense query's top ``k`` as (scores, whether each hit is not an override node,
    a function from a hit's position to its id)."""

    @property
    def dim(self) -> int | None:
        """Embedding dimension, or None while the store is empty."""

    @property
    def metric(self) -> str:
        """One of ``"cosine"``, ``"ip"``, ``"l2"``."""

    @property
    def embed_model(self) -> "BaseEmbedding | None":
        """The embedding model queries are embedded with for training/evaluation, if any."""

    def __len__(self) -> int:
        """Number of stored nodes."""

    def missing_ids(self, node_ids: Sequence[str]) -> list[str]:
        """The ids among ``node_ids`` that are not stored (in input order)."""

    def get_vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors ``(n, d) float32`` as searched (normalised when cosine); KeyError if missing."""

    def iter_vectors(self, batch_size: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
        """All stored (ids, vectors) in batches, bounded memory per batch."""

    def prepare_queries(self, vectors: Any) -> np.ndarray:
        """Validate query vectors (dimension, finite) and return ``(m, d) float32`` as searched."""

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int,
        deep_memory: bool = False,
        texts: Sequence[str | None] | None = None,
        filters: Any = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Batched search of prepared queries: scores ``(m, k')`` and node ids, ranked as
        ``query(..., deep_memory=deep_memory)`` ranks them (plain by default; training uses plain).
        ``texts`` are the query strings a model with ``rerank_depth`` uses (like ``query_str``);
        ``filters`` (LlamaIndex ``MetadataFilters``) restrict every query."""

    def usable_ids(self, node_ids: Sequence[str], filters: Any = None) -> np.ndarray:
        """Per id, whether it is stored and passes ``filters`` (bool array, input order)."""

    def texts_of(self, node_ids: Sequence[str]) -> list[str | None]:
        """Current texts of ``node_ids`` (None where not stored)."""

    def iter_texts(self, batch_size: int = 65536) -> Iterator[tuple[list[str], list[str]]]:
        """All stored (ids, texts) in batches; Deep Memory builds its keyword index from them."""


class DeepMemoryModel:
    """A trained Deep Memory model, applied at query time with numpy alone.

    Applying it to prepared query vectors ``q`` (m, d):

    1. ``q_t = transform_queries(q)`` -> (m, d): the query adapter (identity by default).
    2. ``ids, scores = overrides(q_t)`` -> ids (n,), scores (m, n): exact "with memory" scores for a
       small set of nodes (learned per-node memory); every other node scores with the plain
       ``q_t . v`` of the stored index. The store merges both, so stored vectors never change.
    3. When ``rerank_depth > 0`` and the query text is known, the top ``rerank_depth`` merged
       candidates are re-scored by ``rerank`` (e.g. keyword scores), whatever ``k`` (places past
       them keep their merged order, so a top ``k`` is the first ``k`` of any longer top), and
       the top ``k`` kept. A
       model whose re-scoring is BM25 fusion describes it as a :class:`KeywordPlan`
       (``keyword_plan``; ``keyword_plans`` gives one per query where weights differ), which
       stores may compute without per-candidate calls.

    Stores remember which override ids they hold per id sequence (until they change), so a
    model that hands out the same tuple on every call is looked up once; :meth:`override_set`
    gives them as a set.

    Subclasses implement the math and the state round trip; the state is plain JSON plus numpy
    arrays so it can be saved with safetensors (never pickle).
    """

    kind: str = "identity"
    fallback: "DeepMemoryModel | None" = None  # the model :meth:`route` sends queries to

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        self.dim = int(dim)
        self.metric = metric

    def route(self, queries: np.ndarray) -> np.ndarray | None:
        """A bool mask of the prepared ``queries`` that :attr:`fallback` ranks instead of this
        model (a per-query gate), or None: this model ranks every query (the default)."""
        return None

    def transform_queries(self, queries: np.ndarray) -> np.ndarray:
        """(m, d) -> (m, d). Identity here."""
        return queries

    def overrides(self, transformed: np.ndarray) -> tuple[Sequence[str], np.ndarray]:
        """Exact scores for nodes whose score differs from the plain index: ``(ids, scores)``,
        scores float32 (m, len(ids)). None here. Hand out the same ids tuple on every call when
        they do not change (stores then look them up once)."""
        return (), np.zeros((transformed.shape[0], 0), dtype=np.float32)

    @checks_own_output
    def apply(self, queries: np.ndarray) -> tuple[np.ndarray, Sequence[str], np.ndarray]:
        """Steps 1 and 2 in one call, checked: ``q_t`` as finite float32 of the queries' shape,
        ``ids`` and their float32 (m, len(ids)) scores. A model may fuse the steps (one compiled
        pass for a single query): the store checks what an override returns, unless it is marked
        with :func:`checks_own_output`."""
        queries = np.asarray(queries)
        transformed = checked_transform(queries, self.transform_queries(queries))
        ids, scores = self.overrides(transformed)
        return transformed, ids, checked_scores(queries, ids, scores)

    def override_set(self, ids: Sequence[str]) -> frozenset[str]:
        """The override ``ids`` (from :meth:`apply`) as a set; a model with fixed override ids
        may keep it."""
        return frozenset(ids)

    rerank_depth: int = 0  # > 0: the store re-scores this many top candidates of queries with text

    def rerank(
        self,
        query_text: str | None,
        node_ids: Sequence[str],
        scores: np.ndarray,
        node_texts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Final scores of one query's top ``rerank_depth`` candidates (ids, scores from steps 1-2,
        the candidates' current texts), given the query text when the caller has it. Unchanged here."""
        return scores

    def keyword_plan(self) -> KeywordPlan | None:
        """The model's step 3 as BM25 fusion (a model returning a plan must rank alike through
        :meth:`rerank` and the plan), or None (here): the store calls :meth:`rerank`."""
        return None

    def keyword_plans(self, queries: np.ndarray) -> "list[KeywordPlan | None]":
        """Each prepared query's keyword plan (here :meth:`keyword_plan` for all); a model may
        weigh queries apart (``AdapterMemoryModel``: more keyword weight far from training)."""
        return [self.keyword_plan()] * len(queries)

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and named arrays."""
        return {"kind": self.kind, "dim": self.dim, "metric": self.metric}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "DeepMemoryModel":
        """Inverse of :meth:`to_state`."""
        return cls(dim=int(meta["dim"]), metric=str(meta.get("metric", "cosine")))
