"""FAISS wrapper: int64 row ids, add/remove/search with an optional allow-list, reconstruct.

Knows nothing of LlamaIndex. Every vector is addressed by an int64 *row id* chosen by the caller
(the store uses its node-table slot). Scores are "higher is better": the inner product for
``"cosine"`` (vectors are normalised by the caller) and ``"ip"``, and the negative squared L2
distance for ``"l2"``.

Index families (``faiss.index_factory`` strings):

* ``"Flat"``: exact search, wrapped in ``IndexIDMap2``; removal compacts in place.
* ``"HNSW<M>"``: approximate graph search in ``IndexIDMap2`` (``efSearch`` defaults to
  :data:`DEFAULT_EF_SEARCH`). HNSW cannot remove vectors, so removed rows become tombstones,
  excluded from every search, and the graph is rebuilt once tombstones outnumber live rows.
  :meth:`VectorIndex.search_all_exact` scans its flat storage exactly (training reads that).
* ``"IVF<nlist>,..."``: inverted lists with native ids and a hash-table direct map (so removal and
  ``reconstruct`` work). Needs training: the first ``add`` must bring at least ``nlist`` vectors.

Approximate searches that return fewer hits than requested (a very selective allow-list with HNSW,
too few probed lists with IVF) fall back to exact scoring of the allowed rows, so callers always
get ``min(k, allowed)`` results.

``AUTO`` (``"auto"``, the store's default) is not a factory string: the store holds a ``"Flat"``
index below :data:`AUTO_APPROXIMATE_FROM` nodes and converts it to
:data:`AUTO_APPROXIMATE_FACTORY` (``efConstruction`` :data:`AUTO_EF_CONSTRUCTION`) when an add reaches
that size (``bench_ann_threshold.py``), if the graph finds :data:`AUTO_MIN_RECALL` of the exact top 10
of query-like probe vectors (:func:`probe_queries`, :func:`tuned_ef`); the store re-probes at each
doubling (``engine/faiss_auto.py``); data without neighbourhood structure stays exact.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from llama_index_deepmemory.scoring import METRICS, plain_scores
from llama_index_deepmemory.topk import top_k

logger = logging.getLogger(__name__)

EXACT_SCAN_BATCH = 65536  # rows reconstructed per batch by the exact fallback
_FAMILIES = ("flat", "hnsw", "ivf")
AUTO = "auto"  # the store's default: exact Flat, then HNSW from AUTO_APPROXIMATE_FROM nodes
AUTO_APPROXIMATE_FROM = 20_000  # nodes from which "auto" holds an approximate index
AUTO_APPROXIMATE_FACTORY = "HNSW32"
DEFAULT_EF_SEARCH = 128  # HNSW search breadth when ef_search is None (recall@10 >= 0.95: README)
AUTO_MIN_RECALL = 0.95  # recall@10 the graph must reach on probe queries to replace (or stay over) Flat
AUTO_EF_CAP = 1024  # the largest ef_search "auto" raises to; a miss there makes the store exact
AUTO_EF_CONSTRUCTION = 80  # efConstruction of the "auto" graph (FAISS: 40; benchmarks/README, issue 29)
PROBE_QUERIES = 100  # stored vectors the probe samples (two query-like vectors each: probe_queries)


def probe_queries(exact: "VectorIndex", rows: np.ndarray, seed: int) -> list[np.ndarray]:
    """Two sets of query-like vectors made from the stored vectors ``v`` of ``rows`` (none a stored vector
    that finds itself); "auto" needs both to reach its recall:

    * within the neighbourhood: ``2/3 v + 2/3 a - 1/3 b``, ``a`` and ``b`` two of the 10 nearest other
      stored vectors (weights summing to 1, squares summing to 1: a local cluster's mean and spread, as a
      fresh draw from it has; close to real queries on clustered data, optimistic on structureless data);
    * off it: ``v`` moved in a random direction orthogonal to it until its cosine (distance for
      ``"ip"``/``"l2"``) to ``v`` is that of ``v``'s nearest other stored vector (close to real queries
      on structureless data, pessimistic on clustered data).

    Renormalised for ``"cosine"``."""
    stored = exact.reconstruct(rows).astype(np.float64)
    _, near = exact.search_all_exact(stored.astype(np.float32), 11)
    rng = np.random.default_rng(seed)
    picked = np.empty((len(rows), 3), dtype=np.int64)
    for i, (row, hits) in enumerate(zip(rows.tolist(), near.tolist())):
        others = [h for h in hits if h >= 0 and h != row] or [row]
        picked[i, 0] = others[0]
        picked[i, 1:] = rng.choice(others, size=2, replace=len(others) < 2)
    nearest, a, b = (exact.reconstruct(picked[:, j]).astype(np.float64) for j in range(3))
    inside = (2 * stored + 2 * a - b) / 3
    noise = rng.normal(size=stored.shape)
    if exact.metric == "cosine":
        cos = np.clip(np.sum(stored * nearest, axis=1, keepdims=True), 0.05, 1.0)
        noise -= np.sum(noise * stored, axis=1, keepdims=True) * stored
        noise /= np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
        outside = cos * stored + np.sqrt(1.0 - cos**2) * noise
        inside /= np.maximum(np.linalg.norm(inside, axis=1, keepdims=True), 1e-12)
    else:
        step = np.linalg.norm(stored - nearest, axis=1, keepdims=True)
        outside = stored + step * noise / np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    return [inside.astype(np.float32), outside.astype(np.float32)]


def probe_recall(approx: "VectorIndex", queries: np.ndarray, truth: np.ndarray) -> float:
    """recall@k of ``approx`` for ``queries`` against ``truth``, their exact top k row ids (-1: none)."""
    _, got = approx.search(queries, truth.shape[1])
    total = 0.0
    for want, have in zip(truth.tolist(), got.tolist()):
        want = [r for r in want if r >= 0]
        total += len(set(want) & set(have)) / max(1, len(want))
    return total / max(1, len(queries))


def tuned_ef(approx: "VectorIndex", exact: "VectorIndex", query_sets: list[np.ndarray], given: int | None,
             start: int | None = None, k: int = 10) -> tuple[int | None, float]:
    """The first ``ef_search`` (``given``, else ``start`` doubled up to :data:`AUTO_EF_CAP`) at which
    ``approx`` reaches :data:`AUTO_MIN_RECALL` recall@k on every query set against exact search of
    ``exact`` (its flat storage for a graph), left set on it, and that (lowest) recall; (None, the last
    recall) if none does."""
    steps = [given] if given is not None else [start or DEFAULT_EF_SEARCH]
    while given is None and steps[-1] < AUTO_EF_CAP:
        steps.append(min(2 * steps[-1], AUTO_EF_CAP))
    truths = [exact.search_all_exact(queries, k)[1] for queries in query_sets]
    recall = 0.0
    for ef in steps:
        approx.set_ef_search(ef)
        recall = min(probe_recall(approx, q, t) for q, t in zip(query_sets, truths))
        logger.info("HNSW probe: recall@%d %.3f at ef_search=%d over %d nodes", k, recall, ef, approx.ntotal)
        if recall >= AUTO_MIN_RECALL:
            return ef, recall
    return None, recall


def _faiss() -> Any:
    import faiss  # lazy: keeps `import llama_index_deepmemory` light

    return faiss


def _faiss_metric(metric: str) -> int:
    faiss = _faiss()
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _family_of(index: Any) -> str:
    faiss = _faiss()
    try:
        if faiss.extract_index_ivf(index) is not None:
            return "ivf"
    except (RuntimeError, ValueError):
        pass
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return type(index).__name__


def build_faiss_index(dim: int, metric: str, factory: str) -> Any:
    """``faiss.index_factory`` with clear errors; only the flat / HNSW / IVF families."""
    faiss = _faiss()
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"index_factory must be a non-empty string such as 'Flat', got {factory!r}")
    if factory.strip().upper().startswith("IDMAP"):
        raise ValueError(
            f"index_factory={factory!r}: leave out 'IDMap'; the store maps node ids to FAISS ids itself"
        )
    try:
        index = faiss.index_factory(int(dim), factory, _faiss_metric(metric))
    except RuntimeError as exc:
        raise ValueError(
            f"index_factory={factory!r} is not a valid faiss.index_factory string for dim={dim}: "
            f"{str(exc).splitlines()[-1]}. Examples: 'Flat', 'HNSW32', 'IVF1024,Flat'."
        ) from None
    family = _family_of(index)
    if family not in _FAMILIES:
        raise ValueError(
            f"index_factory={factory!r} builds a {family}, which is not supported; use a Flat, "
            "HNSW<M> or IVF<nlist>,... index (e.g. 'Flat', 'HNSW32', 'IVF1024,Flat')."
        )
    return index


_FACTORY_PROBE_DIMS = (96, 128, 256, 384, 512, 768, 1024, 1536, 3072)


def check_factory(dim: int | None, metric: str, factory: str) -> None:
    """Validate a factory string now: against ``dim``, or (dim=None) against common dimensions,
    leaving the check for the actual dimension to the first add."""
    if dim is not None:
        build_faiss_index(dim, metric, factory)
        return
    first_error: ValueError | None = None
    for probe in _FACTORY_PROBE_DIMS:
        try:
            build_faiss_index(probe, metric, factory)
            return
        except ValueError as exc:
            first_error = first_error or exc
            if "not supported" in str(exc) or "IDMap" in str(exc):
                break
    raise ValueError(
        f"index_factory={factory!r} could not be built for any common embedding dimension "
        f"{_FACTORY_PROBE_DIMS} ({first_error}). If it needs a particular dimension, pass dim= "
        "so it is checked against that."
    ) from None


class VectorIndex:
    """One FAISS index addressed by int64 row ids, with scores in "higher is better" form."""

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        factory: str = "Flat",
        nprobe: int | None = None,
        ef_search: int | None = None,
        faiss_index: Any = None,
        ef_construction: int | None = None,
    ) -> None:
        faiss = _faiss()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.dim = int(dim)
        self.metric = metric
        self.factory = factory
        self.nprobe = nprobe
        self.ef_search = ef_search
        if faiss_index is None:
            base = build_faiss_index(self.dim, metric, factory)
            self.family = _family_of(base)
            if self.family == "ivf":
                faiss.extract_index_ivf(base).set_direct_map_type(faiss.DirectMap.Hashtable)
                faiss_index = base
            else:
                faiss_index = faiss.IndexIDMap2(base)
        else:
            inner = faiss_index.index if isinstance(faiss_index, faiss.IndexIDMap2) else faiss_index
            inner = faiss.downcast_index(inner)
            self.family = _family_of(inner)
            if faiss_index.d != self.dim:
                raise ValueError(f"stored FAISS index has dim {faiss_index.d}, expected {self.dim}")
        self.faiss_index = faiss_index
        self.ef_construction = None  # HNSW: the graph's efConstruction (kept by compaction and files)
        if self.family == "hnsw":
            hnsw = faiss.downcast_index(faiss_index.index).hnsw
            if ef_construction is not None and not faiss_index.ntotal:
                hnsw.efConstruction = int(ef_construction)
            self.ef_construction = int(hnsw.efConstruction)
        self._apply_search_knobs()
        self._dead = np.zeros(0, dtype=bool)  # tombstones by row id (HNSW only)
        self.n_dead = 0
        if self.family == "hnsw" and self.faiss_index.ntotal:
            self._dead = np.zeros(int(self.all_ids().max()) + 1, dtype=bool)

    # --- configuration -------------------------------------------------------------------
    def _apply_search_knobs(self) -> None:
        faiss = _faiss()
        if self.family == "ivf":
            ivf = faiss.extract_index_ivf(self.faiss_index)
            if self.nprobe is not None:
                ivf.nprobe = int(self.nprobe)
        elif self.family == "hnsw":
            ef = DEFAULT_EF_SEARCH if self.ef_search is None else self.ef_search
            faiss.downcast_index(self.faiss_index.index).hnsw.efSearch = int(ef)

    def set_ef_search(self, ef_search: int | None) -> None:
        """HNSW search breadth (None: :data:`DEFAULT_EF_SEARCH`)."""
        self.ef_search = ef_search
        self._apply_search_knobs()

    @property
    def ntotal(self) -> int:
        """Vectors held by FAISS, tombstones included."""
        return int(self.faiss_index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.faiss_index.is_trained)

    @property
    def exact(self) -> bool:
        """Whether :meth:`search` is exact (a flat index)."""
        return self.family == "flat"

    @property
    def removes_physically(self) -> bool:
        """Whether :meth:`remove` frees the row ids for reuse (False for HNSW tombstones)."""
        return self.family != "hnsw"

    def min_training_size(self) -> int:
        """Vectors the first add must bring when the index needs training (0 when it does not)."""
        if self.is_trained:
            return 0
        if self.family == "ivf":
            return int(_faiss().extract_index_ivf(self.faiss_index).nlist)
        return 1

    def all_ids(self) -> np.ndarray:
        """Every row id held by FAISS (tombstones included), int64."""
        faiss = _faiss()
        if self.family == "ivf":
            ivf = faiss.extract_index_ivf(self.faiss_index)
            parts = []
            invlists = ivf.invlists
            for list_no in range(ivf.nlist):
                size = invlists.list_size(list_no)
                if size:
                    ptr = invlists.get_ids(list_no)
                    parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64, copy=False)

    # --- writes --------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (n, d) float32 under ``ids``; trains an untrained index first."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not self.is_trained:
            need = self.min_training_size()
            if len(vectors) < need:
                raise ValueError(
                    f"index_factory={self.factory!r} must be trained on the first add, which needs "
                    f"at least {need} vectors (about {39 * need} recommended); got {len(vectors)}. "
                    "Add more nodes in the first batch, or use index_factory='Flat'."
                )
            logger.info("training %s on %d vectors", self.factory, len(vectors))
            self.faiss_index.train(vectors)
        self.faiss_index.add_with_ids(vectors, ids)
        if self.family == "hnsw" and len(ids):
            self._grow_dead(int(ids.max()) + 1)

    def _grow_dead(self, size: int) -> None:
        if size > len(self._dead):
            grown = np.zeros(max(size, 2 * len(self._dead)), dtype=bool)
            grown[: len(self._dead)] = self._dead
            self._dead = grown

    def remove(self, ids: np.ndarray) -> None:
        """Remove rows (physically, or as tombstones for HNSW)."""
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if self.family == "hnsw":
            fresh = ids[~self._dead[ids]]
            self._dead[fresh] = True
            self.n_dead += len(np.unique(fresh))
        elif self.family == "ivf":
            self.faiss_index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
        else:
            self.faiss_index.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)))

    def dead_ids(self) -> np.ndarray:
        """Row ids of HNSW tombstones (empty for other families)."""
        return np.flatnonzero(self._dead).astype(np.int64)

    def needs_compaction(self) -> bool:
        """True when HNSW tombstones outnumber live rows (and are not a handful)."""
        return self.n_dead > 1024 and self.n_dead * 2 > self.ntotal

    def compact(self) -> np.ndarray:
        """Rebuild an HNSW index without its tombstones; returns the freed row ids."""
        if self.family != "hnsw" or not self.n_dead:
            return np.zeros(0, dtype=np.int64)
        ids = self.all_ids()
        dead_mask = self._dead[ids]
        live, freed = ids[~dead_mask], ids[dead_mask]
        fresh = VectorIndex(self.dim, self.metric, self.factory, self.nprobe, self.ef_search,
                            ef_construction=self.ef_construction)
        for start in range(0, len(live), EXACT_SCAN_BATCH):
            chunk = live[start : start + EXACT_SCAN_BATCH]
            fresh.add(chunk, self.reconstruct(chunk))
        self.faiss_index = fresh.faiss_index
        self._dead = np.zeros_like(self._dead)
        self.n_dead = 0
        return freed

    def reset(self) -> None:
        """Remove every vector; a trained IVF index keeps its training (FAISS ``reset``)."""
        if self.family == "ivf":
            self.faiss_index.reset()
        else:
            self.faiss_index = VectorIndex(self.dim, self.metric, self.factory, self.nprobe, self.ef_search,
                                           ef_construction=self.ef_construction).faiss_index
        self._dead = np.zeros(0, dtype=bool)
        self.n_dead = 0

    # --- reads ---------------------------------------------------------------------------
    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, d) float32 for row ids (approximate for compressed IVF codes)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.faiss_index.reconstruct_batch(ids)

    def _to_scores(self, distances: np.ndarray) -> np.ndarray:
        return -distances if self.metric == "l2" else distances

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query among ``allowed`` rows (a bool mask by row id; None = all live).

        ``allowed`` must exclude removed rows (the store derives it from its live rows).

        Returns scores (m, k) float32, descending, and row ids (m, k) int64, ``-1`` padded when
        fewer rows are allowed than ``k``.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is None and self.n_dead:
            allowed = ~self._dead
        params = None
        bitmap = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            params = self._search_params(selector)
        if params is None:
            distances, ids = self.faiss_index.search(queries, k)
        else:
            distances, ids = self.faiss_index.search(queries, k, params=params)
        del bitmap  # the selector borrowed it until here
        return self._to_scores(distances), ids

    def _search_params(self, selector: Any) -> Any:
        faiss = _faiss()
        if self.family == "ivf":
            ivf = faiss.extract_index_ivf(self.faiss_index)
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(ivf.nprobe))
        if self.family == "hnsw":
            hnsw = faiss.downcast_index(self.faiss_index.index).hnsw
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(hnsw.efSearch))
        return faiss.SearchParameters(sel=selector)

    def search_all_exact(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search`, exact whatever the family: an HNSW index scans its flat storage (no
        copy of the vectors), IVF reconstructs the allowed rows in batches."""
        if self.family == "flat":
            return self.search(queries, k, allowed)
        if allowed is None:
            allowed = ~self._dead if self.n_dead else None
        if self.family != "hnsw":
            return self.search_exact(queries, k, self.all_ids() if allowed is None else np.flatnonzero(allowed))
        faiss = _faiss()
        storage = faiss.downcast_index(faiss.downcast_index(self.faiss_index.index).storage)
        row_of = faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64, copy=False)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is None:
            distances, inner = storage.search(queries, k)
        else:
            ok = np.zeros(len(row_of), dtype=bool)
            inside = row_of < len(allowed)
            ok[inside] = allowed[row_of[inside]]
            bitmap = np.packbits(ok, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            distances, inner = storage.search(queries, k, params=faiss.SearchParameters(sel=selector))
            del bitmap
        rows = np.where(inner >= 0, row_of[np.maximum(inner, 0)], -1)
        return self._to_scores(distances), rows

    def search_exact(
        self, queries: np.ndarray, k: int, candidates: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` among ``candidates`` (row ids) by reconstructing them in batches."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = len(queries)
        best_scores = np.full((m, 0), -np.inf, dtype=np.float32)
        best_ids = np.zeros((m, 0), dtype=np.int64)
        for start in range(0, len(candidates), EXACT_SCAN_BATCH):
            chunk = np.asarray(candidates[start : start + EXACT_SCAN_BATCH], dtype=np.int64)
            scores = plain_scores(queries, self.reconstruct(chunk), self.metric).astype(np.float32, copy=False)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_ids = np.concatenate([best_ids, np.broadcast_to(chunk, (m, len(chunk)))], axis=1)
            best_scores, best_ids = top_k(best_scores, best_ids, k)
        return pad_results(best_scores, best_ids, k)

    # --- persistence ---------------------------------------------------------------------
    def write(self, path: str) -> None:
        """Write the FAISS index in FAISS's own binary format (no pickle)."""
        _faiss().write_index(self.faiss_index, path)

    @classmethod
    def read(
        cls,
        path: str,
        dim: int,
        metric: str,
        factory: str,
        nprobe: int | None,
        ef_search: int | None,
        dead_ids: np.ndarray,
    ) -> "VectorIndex":
        """Inverse of :meth:`write`; ``dead_ids`` are the HNSW tombstones to restore."""
        faiss = _faiss()
        raw = faiss.read_index(path)
        index = cls(dim, metric, factory, nprobe, ef_search, faiss_index=raw)
        if len(dead_ids):
            index._grow_dead(int(dead_ids.max()) + 1)
            index._dead[dead_ids] = True
            index.n_dead = len(np.unique(dead_ids))
        return index


def pad_results(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (m, n<k) results to (m, k) with -inf scores and -1 ids."""
    m, n = scores.shape
    if n >= k:
        return scores, ids
    pad_s = np.full((m, k - n), -np.inf, dtype=np.float32)
    pad_i = np.full((m, k - n), -1, dtype=np.int64)
    return np.concatenate([scores, pad_s], axis=1), np.concatenate([ids, pad_i], axis=1)
