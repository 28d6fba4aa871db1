"""Compiled (numba) kernels of Deep Memory ranking, over plain arrays:

* ``adapter_memory_scores``: a model's transformed queries and memory scores (``AdapterMemoryModel.apply``,
  single queries and batches alike);
* ``nearest_cosine``: a query's nearest training query (the gate, far keywords);
* ``rank_row``: THE ranking of one query row (merge of plain hits and override scores, the
  "searched deep enough" test, BM25 fusion of the fixed re-scored head, top k). Every ranking
  (``deep_memory.ranking.rank``: single queries, batches, training's validation, every backend)
  runs it; numpy references live in the tests only;
* ``kept_rows``: which plain hits given as keyword-index rows are not override nodes (its input);
  ``rank_indexed_row`` runs both for a keyword query whose hits are all indexed.

Without numba (an install that cannot import it) the same functions run as plain Python: the
same results, slower.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

try:
    import numba

    COMPILED = True
except ImportError as _error:  # pragma: no cover - numba is a dependency
    numba = None
    COMPILED = False
    logger.warning("Deep Memory ranking runs as plain Python (slow): cannot import numba (%s)", _error)

# reassociation lets LLVM vectorise the dot products; NaN and infinity keep their meaning
_FASTMATH = {"reassoc", "contract"}


def _jit(fastmath: bool = False) -> Callable[[Any], Any]:
    """``numba.njit`` (cached, without the GIL), or the plain function without numba."""
    if numba is None:  # pragma: no cover
        return lambda function: function
    return numba.njit(cache=True, nogil=True, **({"fastmath": _FASTMATH} if fastmath else {}))


@_jit(fastmath=True)
def _dot_codes(codes: np.ndarray, b: np.ndarray) -> float:
    """float32 inner product of (d,) int8 codes and a (d,) float32 vector."""
    acc = np.float32(0.0)
    for i in range(codes.shape[0]):
        acc += np.float32(codes[i]) * b[i]
    return acc


@_jit(fastmath=True)
def _dot_rows(codes: np.ndarray, first: int, stop: int, b: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:
    """``out[r - first] = _dot_codes(codes[r], b) * scales[r]`` for rows ``first..stop-1``, four
    rows per pass over ``b`` (each row's sum in the order ``_dot_codes`` takes: the same bits)."""
    d = codes.shape[1]
    r = first
    while r + 4 <= stop:
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for i in range(d):
            x = b[i]
            a0 += np.float32(codes[r, i]) * x
            a1 += np.float32(codes[r + 1, i]) * x
            a2 += np.float32(codes[r + 2, i]) * x
            a3 += np.float32(codes[r + 3, i]) * x
        out[r - first] = a0 * scales[r]
        out[r + 1 - first] = a1 * scales[r + 1]
        out[r + 2 - first] = a2 * scales[r + 2]
        out[r + 3 - first] = a3 * scales[r + 3]
        r += 4
    while r < stop:
        out[r - first] = _dot_codes(codes[r], b) * scales[r]
        r += 1


@_jit()
def nearest_cosine(query: np.ndarray, codes: np.ndarray, factors: np.ndarray, enough: float) -> float:
    """The largest cosine of a (d,) float32 ``query`` to rows given as (n, d) int8 ``codes``
    times (n,) float32 ``factors`` (each row's scale over its norm), or the first one reaching
    ``enough`` (the caller only asks whether one does): the training queries of
    ``AdapterMemoryModel.keyword_plans`` and ``route``."""
    sq = np.float32(0.0)
    for i in range(query.shape[0]):
        sq += query[i] * query[i]
    norm = max(math.sqrt(sq), 1e-12)
    best = -np.inf
    for r in range(codes.shape[0]):
        best = max(best, _dot_codes(codes[r], query) * factors[r] / norm)
        if best >= enough:
            break
    return best


@_jit()
def adapter_memory_scores(
    queries: np.ndarray,  # (m, d) float32, as searched
    residual_codes: np.ndarray,  # (d, d) int8: W = I + residual_codes * residual_scales[:, None]
    residual_scales: np.ndarray,  # (d,) float32 (powers of two)
    bias: np.ndarray,  # (d,) float32
    unit: bool,  # cosine store: renormalise the transformed query
    score_codes: np.ndarray,  # (n_memory + n_keys, d) int8: memory vectors, then unit keys ...
    score_scales: np.ndarray,  # (n_memory + n_keys,) float32: ... times these scales (powers of two)
    n_memory: int,
    memory_sq: np.ndarray,  # (n_memory,) float32 squared norms (l2 only)
    l2: bool,
    key_weight: np.float32,
    key_threshold: np.float32,
    link_ptr: np.ndarray,  # (n_keys + 1,) int64, CSR by key
    link_node: np.ndarray,  # (n_links,) int64
    link_weight: np.ndarray,  # (n_links,) float32
    key_anchor: np.ndarray,  # (n_keys,) int64: a memory row near each key (-1: none) ...
    key_reach: np.ndarray,  # (n_keys,) float64: ... and |key - anchor| plus rounding slack, per unit |q|
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``AdapterMemoryModel.transform_queries`` and ``overrides`` of each query row: the
    transformed queries (m, d), the memory scores (m, n_memory), and whether every transformed
    query is finite.

    A key counts only where its cosine to the query exceeds ``key_threshold``; one whose anchor's
    product plus ``|q| key_reach`` cannot (``model_parts.key_anchors``: the bound covers float32 rounding)
    is skipped unscored, so the scores are those of scoring every key, bit for bit."""
    m, d = queries.shape
    transformed_out = np.empty((m, d), dtype=np.float32)
    scores_out = np.empty((m, n_memory), dtype=np.float32)
    n_keys = score_codes.shape[0] - n_memory
    bonus = np.zeros(n_memory, dtype=np.float32)
    residual = np.empty(d, dtype=np.float32)
    finite = True
    for row in range(m):
        query, transformed, scores = queries[row], transformed_out[row], scores_out[row]
        _dot_rows(residual_codes, 0, d, query, residual_scales, residual)  # (W - I) q, four rows a pass
        sq = np.float32(0.0)
        for i in range(d):
            value = query[i] + residual[i] + bias[i]
            transformed[i] = value
            sq += value * value
            finite = finite and math.isfinite(value)
        if unit and sq > 0:
            inverse = np.float32(1.0 / math.sqrt(sq))
            for i in range(d):
                transformed[i] *= inverse
        _dot_rows(score_codes, 0, n_memory, transformed, score_scales, scores)  # q.m, the anchors' products
        hit = False
        if n_keys > 0:
            norm = np.float32(1.0) if unit else np.float32(max(math.sqrt(sq), 1e-12))
            q_sq = 0.0
            for i in range(d):
                q_sq += float(transformed[i]) * float(transformed[i])
            q_norm = math.sqrt(q_sq) * (1 + 2.0**-40)
            for t in range(n_keys):
                anchor = key_anchor[t]
                if anchor >= 0:  # q.k <= q.m_anchor + |q| |k - m_anchor|: skip a key that cannot pass
                    upper = (float(scores[anchor]) + q_norm * key_reach[t]) / float(norm)
                    if upper + abs(upper) * 2.0**-20 <= key_threshold:
                        continue
                r = n_memory + t
                sim = np.float32(_dot_codes(score_codes[r], transformed) * score_scales[r]) / norm
                if sim > key_threshold:
                    if not hit:
                        bonus[:] = 0
                    hit = True
                    for p in range(link_ptr[t], link_ptr[t + 1]):
                        value = (sim - key_threshold) * link_weight[p]
                        if value > bonus[link_node[p]]:
                            bonus[link_node[p]] = value
        if l2:  # -(|q|^2 - 2 q.m + |m|^2)
            for r in range(n_memory):
                scores[r] = scores[r] * np.float32(2.0) - memory_sq[r] - sq
        if hit:
            for r in range(n_memory):
                scores[r] += bonus[r] * key_weight
    return transformed_out, scores_out, finite


_INSERTION_TOP = 64  # a stable top k by insertion up to this k (less code and no sort right after a scan)


@_jit()
def _stable_top(scores: np.ndarray, sources: np.ndarray, out_scores: np.ndarray, out_sources: np.ndarray) -> int:
    """The top ``len(out_scores)`` of (scores, sources) in descending score order, ties (and NaN,
    placed last) in input order, as ``np.argsort(-scores, kind="stable")`` ranks them.
    Returns the number written."""
    n, k = scores.shape[0], out_scores.shape[0]
    if k > _INSERTION_TOP:
        order = np.argsort(-scores, kind="mergesort")
        count = min(k, n)
        for i in range(count):
            out_scores[i] = scores[order[i]]
            out_sources[i] = sources[order[i]]
        return count
    count = 0
    for i in range(n):
        score = scores[i]
        position = count
        # move up past lower scores, and past NaN unless this score is NaN too
        while position > 0 and (out_scores[position - 1] < score
                                or (out_scores[position - 1] != out_scores[position - 1] and score == score)):
            position -= 1
        if position >= k:
            continue
        for j in range(min(count, k - 1), position, -1):
            out_scores[j] = out_scores[j - 1]
            out_sources[j] = out_sources[j - 1]
        out_scores[position] = score
        out_sources[position] = sources[i]
        count = min(count + 1, k)
    return count


@_jit()
def _bm25(begin: int, end: int, doc_terms: np.ndarray, doc_weights: np.ndarray, query_terms: np.ndarray) -> np.float32:
    """BM25 of the sorted unique ``query_terms`` for the postings ``begin:end`` of one keyword-index
    row. A row's terms rise strictly (``LexicalIndex`` builds and loads them so), so one forward
    merge with the query's terms finds the matches, in posting order, and stops past the query's
    last term."""
    n_terms = query_terms.shape[0]
    if n_terms == 0:
        return np.float32(0.0)
    last_term = query_terms[n_terms - 1]
    total = 0.0  # float64 in posting order, like numpy's bincount
    t = 0
    for p in range(begin, end):
        term = doc_terms[p]
        if term > last_term:
            break
        while query_terms[t] < term:  # stops: term <= last_term
            t += 1
        if query_terms[t] == term:
            total += doc_weights[p]
    return np.float32(total)


@_jit()
def _fused_top(
    scores: np.ndarray, keyword: np.ndarray, sources: np.ndarray, weight: float,
    out_scores: np.ndarray, out_sources: np.ndarray,
) -> int:
    """``scores + weight * keyword / max(keyword)`` (``scores`` when no keyword score is
    positive): its stable top ``len(out_scores)`` with their ``sources``. Returns the number written."""
    best = np.float32(0.0)
    for i in range(keyword.shape[0]):
        if keyword[i] > best:
            best = keyword[i]
    fused = scores.copy()
    if best > 0:
        scale = np.float32(weight / np.float64(best))
        for i in range(scores.shape[0]):
            fused[i] = scores[i] + scale * keyword[i]
    return _stable_top(fused, sources, out_scores, out_sources)




_NO_SCORES = np.zeros(0, dtype=np.float32)


@_jit()
def rank_row(
    plain_scores: np.ndarray,  # (>= n_plain,) float32, descending: one query's plain hits (first n_plain read)
    plain_keep: np.ndarray,  # (n_plain,) bool: the hit is not an override node (or is forgotten)
    plain_rows: np.ndarray,  # (n_plain,) int64: the hits' keyword-index rows (-1: not indexed); read for the head only
    over_scores: np.ndarray,  # (n_over,) float32: the model's scores of its override nodes
    over_keep: np.ndarray,  # (n_over,) bool: stored, allowed (and not forgotten)
    over_rows: np.ndarray,  # (n_over,) int64: their keyword-index rows; read for the head only
    text_scores: np.ndarray,  # (n_plain + n_over,) float32: BM25 of unindexed candidates from their texts; (0,): none
    spans: np.ndarray,  # (n_index_rows + 1, 2) int64: [begin, end) of each row's postings (row -1: empty)
    doc_terms: np.ndarray,  # (n_postings,) int32
    doc_weights: np.ndarray,  # (n_postings,) float32: BM25 weight of the term in the row
    query_terms: np.ndarray,  # (n_terms,) int32, sorted unique
    weight: float,  # head scores + weight * bm25 / max(bm25 over the head)
    head: int,  # candidates re-scored with keywords: the merged top ``head``, whatever ``k`` (0: none)
    depth: int,  # merged candidates needed (>= head, >= k)
    k: int,  # returned
    asked: int,  # plain hits the search was asked for (fewer came: every allowed node was found)
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The ranking of one query: the stable top ``depth`` of the kept plain hits (in their order)
    and the kept override nodes (in the model's order); its first ``head`` re-scored with BM25
    fusion and re-ordered, the rest after them in merged order; cut to ``k``, so a top ``k`` is
    the first ``k`` of any longer top. Returns (scores float32, sources int64: plain position
    ``p`` or ``-1 - j`` for override ``j``, complete). ``complete`` is False (nothing computed)
    when an unfetched node may belong to the merged top ``depth``: fewer than ``depth`` kept hits
    came back from a full search and the usable override scores reaching the last hit's score
    do not make up the difference (every unfetched node scores at most that): search deeper."""
    n_plain, n_over = plain_keep.shape[0], over_scores.shape[0]
    kept = 0
    for i in range(n_plain):
        kept += plain_keep[i]
    if n_plain >= asked and kept < depth:
        reaching = 0
        for j in range(n_over):
            if n_plain and over_keep[j] and over_scores[j] >= plain_scores[n_plain - 1]:
                reaching += 1
        if n_plain == 0 or kept + reaching < depth:
            return _NO_SCORES.copy(), np.empty(0, dtype=np.int64), False
    pool_scores = np.empty(n_plain + n_over, dtype=np.float32)
    pool_sources = np.empty(n_plain + n_over, dtype=np.int64)
    count = 0
    for i in range(n_plain):
        if plain_keep[i]:
            pool_scores[count] = plain_scores[i]
            pool_sources[count] = i
            count += 1
    for j in range(n_over):
        if over_keep[j]:
            pool_scores[count] = over_scores[j]
            pool_sources[count] = -1 - j
            count += 1
    size = min(depth, count)
    top_scores = np.empty(size, dtype=np.float32)
    top_sources = np.empty(size, dtype=np.int64)
    _stable_top(pool_scores[:count], pool_sources[:count], top_scores, top_sources)
    out_size = min(k, size)
    out_scores = np.empty(out_size, dtype=np.float32)
    out_sources = np.empty(out_size, dtype=np.int64)
    fused = min(head, out_size)
    if fused > 0:
        n_head = min(head, size)
        given = text_scores.shape[0] == n_plain + n_over
        keyword = np.empty(n_head, dtype=np.float32)
        # the head's postings in three passes, so the memory reads of different rows overlap
        # (one row after the other, each waits for the last): where each row's postings lie ...
        begins = np.empty(n_head, dtype=np.int64)
        ends = np.empty(n_head, dtype=np.int64)
        for i in range(n_head):
            source = top_sources[i]
            row = plain_rows[source] if source >= 0 else over_rows[-1 - source]
            begins[i], ends[i] = spans[row, 0], spans[row, 1]
        n_terms = query_terms.shape[0]
        if n_terms:  # ... rows whose terms all lie outside the query's (score 0) made empty ...
            first_term, last_term = query_terms[0], query_terms[n_terms - 1]
            for i in range(n_head):
                if begins[i] < ends[i] and (doc_terms[begins[i]] > last_term or doc_terms[ends[i] - 1] < first_term):
                    ends[i] = begins[i]
        for i in range(n_head):  # ... and the scores
            source = top_sources[i]
            at = source if source >= 0 else n_plain - 1 - source
            keyword[i] = _bm25(begins[i], ends[i], doc_terms, doc_weights, query_terms) + (
                text_scores[at] if given else np.float32(0.0))
        _fused_top(top_scores[:n_head], keyword, top_sources[:n_head], weight, out_scores[:fused], out_sources[:fused])
    for i in range(fused, out_size):  # past the re-scored head: the merged order
        out_scores[i] = top_scores[i]
        out_sources[i] = top_sources[i]
    return out_scores, out_sources, True


@_jit()
def kept_rows(rows: np.ndarray, overridden: np.ndarray) -> tuple[np.ndarray, bool]:
    """Which plain hits, given as keyword-index ``rows``, ``rank_row`` keeps: those whose row is
    not flagged in ``overridden`` (one flag per index row and a last one, False, that row -1
    reads); and whether a hit is unindexed (row -1). One call where numpy would make three."""
    keep = np.empty(rows.shape[0], dtype=np.bool_)
    unindexed = False
    for i in range(rows.shape[0]):
        keep[i] = not overridden[rows[i]]
        unindexed = unindexed or rows[i] < 0
    return keep, unindexed


@_jit()
def rank_indexed_row(
    plain_scores: np.ndarray, plain_rows: np.ndarray, overridden: np.ndarray, over_scores: np.ndarray,
    over_keep: np.ndarray, over_rows: np.ndarray, spans: np.ndarray, doc_terms: np.ndarray, doc_weights: np.ndarray,
    query_terms: np.ndarray, weight: float, head: int, depth: int, k: int, asked: int,
) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """``kept_rows`` and ``rank_row`` of one keyword query whose plain hits are all indexed, in one
    call (each call right after a graph search costs ~10-20 µs). Returns rank_row's (scores,
    sources, complete) and True; or nothing computed and False where a hit is unindexed (row -1:
    the caller scores it from its text)."""
    keep, unindexed = kept_rows(plain_rows, overridden)
    if unindexed:
        return _NO_SCORES.copy(), np.empty(0, dtype=np.int64), False, False
    out_scores, out_sources, complete = rank_row(
        plain_scores, keep, plain_rows, over_scores, over_keep, over_rows, _NO_SCORES, spans, doc_terms, doc_weights,
        query_terms, weight, head, depth, k, asked)
    return out_scores, out_sources, complete, True
