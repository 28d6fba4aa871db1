"""Deep Memory model classes (numpy at query time) and their safe state round trip."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import (
    DeepMemoryModel,
    KeywordPlan,
    checked_transform,
    checks_own_output,
    compiled_kernels,
)
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.model_parts import (  # noqa: F401 (int8_rows: imported from here)
    _STATE_ARRAYS,
    _STATE_META,
    FIELDS,
    PARTS,
    Adapter,
    Gate,
    Keys,
    Keywords,
    Memory,
    _normalised,
    int8_rows,
    key_anchors,
)

logger = logging.getLogger(__name__)

# kind -> class; every persisted model names its kind in its metadata
MODEL_KINDS: dict[str, type[DeepMemoryModel]] = {DeepMemoryModel.kind: DeepMemoryModel}


def register_model(cls: type[DeepMemoryModel]) -> type[DeepMemoryModel]:
    """Class decorator: make a model kind loadable by :func:`model_from_state`."""
    MODEL_KINDS[cls.kind] = cls
    return cls


def model_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DeepMemoryModel:
    """Rebuild a model from :meth:`DeepMemoryModel.to_state` output, refusing unknown kinds."""
    kind = meta.get("kind")
    cls = MODEL_KINDS.get(str(kind))
    if cls is None:
        raise ValueError(
            f"unknown Deep Memory model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}. "
            "The store was probably written by a newer llama-index-deepmemory: upgrade the package."
        )
    return cls.from_state(meta, arrays)


LEXICAL_PREFIX = "lexical_"  # array names of the keyword index inside a model's state
LEXICAL_DEPTH = 50  # top candidates a model with keyword scores re-scores (SciFact: 50, 100, 200 score alike)
SMALL_BATCH = 8  # queries up to which row_products uses FAISS's single-threaded kernel


def row_products(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``queries @ rows.T`` -> (m, n) float32, for float32 ``queries`` (m, d) and C-contiguous ``rows`` (n, d).

    A few queries go through FAISS's single-threaded SIMD kernel: right after a FAISS scan, a
    multi-threaded BLAS gemv can wait milliseconds for its thread pool (measured at 100k nodes:
    6.3 ms instead of 0.13 ms for 2,000 x 384). Larger batches use BLAS, where threads pay off.
    """
    m, n = queries.shape[0], rows.shape[0]
    if queries.ndim != 2 or queries.shape[1] != rows.shape[1]:
        raise ValueError(f"queries of shape {queries.shape} do not match rows of dimension {rows.shape[1]}")
    if m > SMALL_BATCH or n == 0:
        return queries @ rows.T
    import faiss  # already loaded by the store; lazy so `import llama_index_deepmemory` stays light

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    for i in range(m):
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(out[i]), faiss.swig_ptr(queries[i]), faiss.swig_ptr(rows), rows.shape[1], n
        )
    return out


def _normalise_rows_inplace(x: np.ndarray) -> np.ndarray:
    """C-contiguous float32 ``x`` with unit rows, in place (zero rows stay zero): one FAISS call."""
    import faiss

    if x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous float32 array, got {x.dtype} (contiguous: {x.flags.c_contiguous})")

    faiss.fvec_renorm_L2(x.shape[1], x.shape[0], faiss.swig_ptr(x))
    return x


@register_model
class AdapterMemoryModel(DeepMemoryModel):
    """Linear query adapter plus learned per-node memory, applied with numpy (and FAISS's
    single-threaded kernels for a few queries, see :func:`row_products`).

    * ``transform_queries``: ``q_t = W q + b`` (renormalised for cosine stores).
    * ``W - I``, memory vectors and unit keys are held at 8-bit precision (:func:`int8_rows`:
      int8 codes times a power-of-two scale per row, exact in float32), so one query reads a
      quarter of the bytes; the error per entry is below 1/128 of the row's largest entry.
    * ``overrides``: for the "memory" nodes (those marked relevant in training), the score is
      ``score(q_t, m_n) + key_weight * max_t w_tn * relu(cos(q_t, k_t) - key_threshold)`` where
      ``m_n`` is the node's learned memory vector (its stored vector plus a trained delta) and
      ``k_t`` are remembered (transformed) training queries that marked node ``n`` relevant with
      weight ``w_tn`` (scaled to at most 1 per query).
    * ``rerank`` (when ``lexical_weight > 0``): the top :data:`LEXICAL_DEPTH` candidates of a query
      with text score ``score + lexical_weight * bm25 / max(bm25 over the candidates)``, with
      Okapi BM25 from a keyword index of the stored texts built at training time.
    * ``keyword_plans`` (when ``far_lexical_weight > 0``): a query whose cosine to every
      training query (``gate_keys``, as embedded) is below ``far_cosine`` is re-scored with
      ``far_lexical_weight`` instead: keywords count more where memory knows less.

    Its parts are frozen value objects (:class:`Adapter`, :class:`Memory`, :class:`Keys`,
    :class:`Gate`, :class:`Keywords`), each field also readable by its state name
    (``model.lexical_weight``); a changed model is made with :meth:`replace`. The query-time
    arrays are derived once, at construction.
    """

    kind = "adapter_memory"
    # 2: optional keyword (BM25) index and lexical_weight; 3: gate; 4: far_lexical_weight (each written only when used)
    format_version = 4

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        *,
        adapter: Adapter | None = None,
        memory: Memory | None = None,
        keys: Keys | None = None,
        gate: Gate | None = None,
        keywords: Keywords | None = None,
        **fields: Any,
    ) -> None:
        """Parts as value objects, and/or their fields by state name (``weight``, ``memory_ids``,
        ``lexical``, ``gate_threshold``, ... see :data:`FIELDS`), which win over the parts' own."""
        super().__init__(dim=dim, metric=metric)
        parts = _normalised(self.dim, {"adapter": adapter, "memory": memory, "keys": keys, "gate": gate,
                                       "keywords": keywords}, fields)
        self.adapter: Adapter = parts["adapter"]
        self.memory: Memory = parts["memory"]
        self.keys: Keys = parts["keys"]
        self.gate: Gate = parts["gate"]
        self.keywords: Keywords = parts["keywords"]
        self._prepare_query_path()
        self.fallback = None  # the gate's model (adapter only, own keyword weight), see route()
        if self.gate_threshold > 0 and self.memory_ids:
            self.fallback = AdapterMemoryModel(
                self.dim, self.metric, adapter=self.adapter,
                keywords=Keywords(self.lexical if self.fallback_lexical_weight > 0 else None, self.fallback_lexical_weight),
            )

    def replace(self, **changes: Any) -> "AdapterMemoryModel":
        """A new model with ``changes``: whole parts (``memory=Memory(...)``) or fields by state
        name (``lexical=index, lexical_weight=0.3``); everything else shared with this one."""
        parts = {name: changes.pop(name, getattr(self, name)) for name in PARTS}
        return type(self)(self.dim, self.metric, **parts, **changes)

    def route(self, queries: np.ndarray) -> np.ndarray | None:
        """Per-query gate: a bool mask of the queries :attr:`fallback` ranks instead of this model
        (None: this model ranks all). A query whose cosine to every training query (``gate_keys``,
        as embedded) is below ``gate_threshold`` goes to the fallback: the same adapter without
        memory or query keys and with its own keyword weight, so documents never seen in training
        compete on equal terms."""
        if self.fallback is None or np.shape(queries)[-1] != self.dim:  # the store reports a wrong dimension
            return None
        routed = self._nearest_cosines(queries, self.gate_threshold) < np.float32(self.gate_threshold)
        return routed if routed.any() else None

    def _nearest_cosines(self, queries: np.ndarray, enough: float = np.inf) -> np.ndarray:
        """(m,) float32: each query's largest cosine to a training query (``gate_keys``), or, for
        a single float32 query (the store's case, one compiled call), the first reaching ``enough``."""
        kernels = compiled_kernels()
        if kernels is not None and type(queries) is np.ndarray and queries.shape == self._single_shape and (
            queries.dtype == np.float32
        ):
            cosine = kernels.nearest_cosine(queries[0], self._gate_codes, self._gate_factors, float(enough))
            return np.array([cosine], np.float32)
        q = np.array(queries, dtype=np.float32, order="C")
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", q, q)), np.float32(1e-12))
        return row_products(q, self._gate_unit).max(axis=1) / norms

    def _prepare_query_path(self) -> None:
        """Lay the arrays out for few calls per query: the query path runs right after a FAISS
        scan has flushed the caches, where every call and byte counts. The adapter's difference
        from identity, memory vectors, unit keys and training queries are read as int8 codes
        times a scale per row (a quarter of the bytes; the parts hold the codes' exact values)."""
        eye = np.eye(self.dim, dtype=np.float32)
        self._residual_codes, self._residual_scales = int8_rows(self.weight - eye)
        self._memory_codes, self._memory_scales = int8_rows(self.memory_vectors)
        self._key_codes, self._key_scales = int8_rows(
            _normalise_rows_inplace(np.array(self.key_vectors, dtype=np.float32, order="C")))
        self._gate_codes = self._gate_factors = self._gate_unit = None
        if self.gate_keys is not None:  # codes with each row's scale over its norm (kernel), unit rows (numpy)
            self._gate_codes, scales = int8_rows(self.gate_keys)
            norms = np.sqrt(np.einsum("ij,ij->i", self.gate_keys, self.gate_keys))
            self._gate_factors = np.where(norms > 0, scales / np.maximum(norms, np.float32(1e-30)), 0).astype(np.float32)
            self._gate_unit = np.ascontiguousarray(self._gate_codes * self._gate_factors[:, None], dtype=np.float32)
        self._make_plans()
        self._bias = np.ascontiguousarray(self.bias)
        self._key_weight32, self._key_threshold32 = np.float32(self.key_weight), np.float32(self.key_threshold)
        n_mem = len(self.memory_ids)
        self._use_keys = self.key_weight != 0.0 and len(self.link_key) > 0 and n_mem > 0
        # one matrix, one product: memory vectors in the first n_mem rows, unit keys after, as int8
        # codes and scales for the compiled single-query kernel and as their float32 values
        self._score_codes = np.concatenate([self._memory_codes] + ([self._key_codes] if self._use_keys else []))
        self._score_scales = np.concatenate([self._memory_scales] + ([self._key_scales] if self._use_keys else []))
        self._score_rows = self._score_codes * self._score_scales[:, None]  # (n_mem [+ n_keys], d)
        self._memory_sq = np.einsum("ij,ij->i", self.memory_vectors, self.memory_vectors)
        # links grouped by key (CSR): key t links to nodes _link_node[_link_ptr[t]:_link_ptr[t + 1]]
        order = np.argsort(self.link_key, kind="stable")
        self._link_ptr = np.searchsorted(self.link_key[order], np.arange(len(self.key_vectors) + 1))
        self._link_node_by_key = self.link_node[order]
        self._link_weight_by_key = self.link_weight[order]
        # each key's anchor: a memory row it links to, whose product bounds the key's (model_parts.key_anchors)
        self._key_anchor, self._key_reach = key_anchors(
            self._score_rows[n_mem:], self._score_rows[:n_mem], self.link_key, self.link_node)  # keys: none unless used
        # the compiled kernel's arguments after the queries
        self._single_shape = (1, self.dim)
        self._memory_set = frozenset(self.memory_ids)
        self._kernel_args = (
            self._residual_codes, self._residual_scales, self._bias, self.metric == "cosine",
            self._score_codes, self._score_scales, n_mem, self._memory_sq, self.metric == "l2",
            self._key_weight32, self._key_threshold32, self._link_ptr, self._link_node_by_key,
            self._link_weight_by_key, self._key_anchor, self._key_reach,
        )

    # --- query time ---------------------------------------------------------------------
    def transform_queries(self, queries: np.ndarray) -> np.ndarray:
        out = row_products(np.asarray(queries, dtype=np.float32), self.weight)  # q_t = q . rows of W
        out += self.bias
        if self.metric == "cosine":
            _normalise_rows_inplace(out)
        return out

    @checks_own_output
    def apply(self, queries: np.ndarray) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        """``transform_queries`` and ``overrides`` in one compiled pass over the query rows
        (single queries and batches alike; ``transform_queries`` and ``overrides`` are the numpy
        reference); installs without numba take the numpy path."""
        kernels = compiled_kernels()
        queries = np.asarray(queries)
        if kernels is None or queries.ndim != 2 or queries.shape[1] != self.dim:
            return super().apply(queries)
        transformed, scores, finite = kernels.adapter_memory_scores(
            np.ascontiguousarray(queries, dtype=np.float32), *self._kernel_args)
        if not finite:
            checked_transform(queries, transformed)  # raises the numpy path's error
        return transformed, self.memory_ids, scores

    def override_set(self, ids: Sequence[str]) -> frozenset[str]:
        """The memory ids as a set (made once)."""
        return self._memory_set if ids is self.memory_ids or tuple(ids) == self.memory_ids else frozenset(ids)

    def _add_key_bonus(self, scores: np.ndarray, key_sims: np.ndarray) -> None:
        """Add ``key_weight * max_t w_tn * relu(sim(q, k_t) - threshold)`` to ``scores`` (m, n_mem).

        Only keys above the threshold contribute, usually a handful, so only their links are read.
        """
        rows, keys = np.nonzero(key_sims > self.key_threshold)
        if not len(rows):
            return
        starts = self._link_ptr[keys]
        counts = self._link_ptr[keys + 1] - starts
        total = int(counts.sum())
        if not total:
            return
        # positions of every link of every (row, key) hit, flattened
        offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
        values = np.repeat(key_sims[rows, keys] - self.key_threshold, counts) * self._link_weight_by_key[offsets]
        bonus = np.zeros_like(scores)
        np.maximum.at(bonus, (np.repeat(rows, counts), self._link_node_by_key[offsets]), values)
        bonus *= self.key_weight
        scores += bonus

    def overrides(self, transformed: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
        """The memory node ids (the same tuple on every call) and their (m, n_memory) scores."""
        q = np.asarray(transformed, dtype=np.float32)
        n_mem = len(self.memory_ids)
        if not n_mem:
            return self.memory_ids, np.zeros((q.shape[0], 0), dtype=np.float32)
        products = row_products(q, self._score_rows)  # (m, n_mem [+ n_keys])
        scores = products[:, :n_mem]
        if self.metric == "l2":  # -(|q|^2 - 2 q.m + |m|^2)
            scores *= 2.0
            scores -= self._memory_sq
            scores -= np.einsum("ij,ij->i", q, q)[:, None]
        if self._use_keys:
            key_sims = products[:, n_mem:]
            if self.metric != "cosine":  # cosine queries arrive unit-length from transform_queries
                key_sims = key_sims / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            if key_sims.max() > self.key_threshold:  # usually no key is close enough
                self._add_key_bonus(scores, key_sims)
        return self.memory_ids, scores

    @property
    def rerank_depth(self) -> int:
        """Candidates re-scored with keyword scores (0: this model does not use query texts)."""
        return LEXICAL_DEPTH if self.lexical is not None and self.lexical_weight > 0 else 0

    def keyword_plan(self) -> KeywordPlan | None:
        """BM25 fusion with the keyword index built at training time and ``lexical_weight``
        (None when this model does not re-score)."""
        return self._keyword_plans[0] if self.rerank_depth else None

    def keyword_plans(self, queries: np.ndarray) -> list[KeywordPlan | None]:
        """Each query's plan: :meth:`keyword_plan`, or its ``far_lexical_weight`` twin for a query
        whose cosine to every training query (``gate_keys``, as embedded) is below ``far_cosine``.
        Near a training query memory knows the answer; far from them keywords are the better guide
        to documents training never saw (issue 17)."""
        if not self.rerank_depth:
            return [None] * len(queries)
        near, far = self._keyword_plans
        if far is None:
            return [near] * len(queries)
        close = self._nearest_cosines(queries, self.far_cosine) >= np.float32(self.far_cosine)
        return [near if c else far for c in close.tolist()]

    def _make_plans(self) -> None:
        """The keyword plans of ``lexical_weight`` and ``far_lexical_weight`` (None when off)."""
        words = self.keywords
        near = KeywordPlan(words.index, words.weight, self.memory_ids) if words.index is not None else None
        far = KeywordPlan(words.index, words.far_weight, self.memory_ids) if near and words.far_weight > 0 else None
        self._keyword_plans = (near, far)

    def rerank(
        self,
        query_text: str | None,
        node_ids: Sequence[str],
        scores: np.ndarray,
        node_texts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """``scores`` of one query's candidates plus ``lexical_weight`` times their BM25 scores
        scaled by the best candidate's (unchanged without keyword scores or query text).
        ``node_texts`` (the candidates' current texts) score nodes the keyword index lacks."""
        plan = self.keyword_plan()
        if plan is None or not query_text or not len(node_ids):
            return scores
        return plan.rescore(query_text, plan.index.rows_of(node_ids), scores, node_texts)

    # --- persistence: one table (FIELDS) names every field in the state ---------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, _ = super().to_state()
        meta.update(
            # older installs load what they can: dense models as 1, keyword models as 2
            format_version=(
                4 if self.far_lexical_weight > 0 else 3 if self.gate_threshold > 0 else 2 if self.lexical is not None else 1
            ),
            memory_ids=list(self.memory_ids),
            **{name: getattr(self, name) for name in _STATE_META},
        )
        arrays = {name: getattr(self, name) for name in _STATE_ARRAYS if getattr(self, name) is not None}
        if self.lexical is not None:
            lexical_meta, lexical_arrays = self.lexical.to_state()
            meta["lexical"] = lexical_meta
            arrays.update({f"{LEXICAL_PREFIX}{k}": v for k, v in lexical_arrays.items()})
        return meta, {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "AdapterMemoryModel":
        version = int(meta.get("format_version", 1))
        if version > cls.format_version:
            raise ValueError(
                f"Deep Memory model format_version {version} is newer than supported "
                f"({cls.format_version}); upgrade llama-index-deepmemory."
            )
        missing = [k for k in ("weight", "bias", "memory_vectors") if k not in arrays]
        if missing:
            raise ValueError(f"adapter_memory state lacks arrays {missing}")
        fields: dict[str, Any] = {name: arrays[name] for name in _STATE_ARRAYS if name in arrays}
        fields.update({name: float(meta[name]) for name in _STATE_META if name in meta})
        fields["memory_ids"] = [str(i) for i in meta.get("memory_ids", [])]
        if meta.get("lexical") is not None:
            n = len(LEXICAL_PREFIX)
            fields["lexical"] = LexicalIndex.from_state(
                meta["lexical"], {k[n:]: v for k, v in arrays.items() if k.startswith(LEXICAL_PREFIX)}
            )
        return cls(dim=int(meta["dim"]), metric=str(meta.get("metric", "cosine")), **fields)


def _field(part: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, part), name), doc=f"``{part}.{name}``")


for _name, (_part, _attr) in FIELDS.items():  # model.weight, model.memory_ids, model.lexical, ...
    setattr(AdapterMemoryModel, _name, _field(_part, _attr))
