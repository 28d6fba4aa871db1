"""Compiled (numba) kernels for one ``deep_memory=True`` query, each one call where numpy would
make a dozen (right after a vector scan every call is slow): ``adapter_memory_scores`` (adapter
and memory scores, before the search), ``nearest_cosine`` (the query's nearest training query),
``merge_row`` (plain hits merged with the override scores), ``keyword_fused_top`` (BM25 fusion
and order of given candidates) and ``merge_keyword_top`` (both, over hits given as keyword-index
rows, re-scoring a fixed head so that rankings do not depend on ``k``). Each computes what a numpy path computes (tests compare
them). Callers reach this module through ``base.compiled_kernels()``, which returns None where
numba is not installed (the numpy paths then run).
"""

from __future__ import annotations

import logging
import math
import numba
import numpy as np

logger = logging.getLogger(__name__)

_JIT = {"cache": True, "nogil": True}
# reassociation lets LLVM vectorise the dot products; NaN and infinity keep their meaning
_FASTMATH = {"reassoc", "contract"}


@numba.njit(fastmath=_FASTMATH, **_JIT)
def _dot_codes(codes: np.ndarray, b: np.ndarray) -> float:
    """float32 inner product of (d,) int8 codes and a (d,) float32 vector."""
    acc = np.float32(0.0)
    for i in range(codes.shape[0]):
        acc += np.float32(codes[i]) * b[i]
    return acc


@numba.njit(**_JIT)
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


@numba.njit(**_JIT)
def adapter_memory_scores(
    queries: np.ndarray,  # (1, d) float32, as searched
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
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``AdapterMemoryModel.transform_queries`` and ``overrides`` of one query: the transformed
    query (1, d), the memory scores (1, n_memory), and whether the transformed query is finite."""
    query = queries[0]
    d = query.shape[0]
    transformed_out = np.empty((1, d), dtype=np.float32)
    scores_out = np.empty((1, n_memory), dtype=np.float32)
    transformed, scores = transformed_out[0], scores_out[0]
    sq = np.float32(0.0)
    finite = True
    for i in range(d):
        value = query[i] + _dot_codes(residual_codes[i], query) * residual_scales[i] + bias[i]
        transformed[i] = value
        sq += value * value
        finite = finite and math.isfinite(value)
    if unit and sq > 0:
        inverse = np.float32(1.0 / math.sqrt(sq))
        for i in range(d):
            transformed[i] *= inverse
    for r in range(n_memory):
        scores[r] = _dot_codes(score_codes[r], transformed) * score_scales[r]
    if l2:  # -(|q|^2 - 2 q.m + |m|^2)
        for r in range(n_memory):
            scores[r] = scores[r] * np.float32(2.0) - memory_sq[r] - sq
    n_keys = score_codes.shape[0] - n_memory
    if n_keys > 0:
        norm = np.float32(1.0) if unit else np.float32(max(math.sqrt(sq), 1e-12))
        bonus = np.zeros(n_memory, dtype=np.float32)
        hit = False
        for t in range(n_keys):
            sim = _dot_codes(score_codes[n_memory + t], transformed) * score_scales[n_memory + t] / norm
            if sim > key_threshold:
                hit = True
                for p in range(link_ptr[t], link_ptr[t + 1]):
                    value = (sim - key_threshold) * link_weight[p]
                    if value > bonus[link_node[p]]:
                        bonus[link_node[p]] = value
        if hit:
            for r in range(n_memory):
                scores[r] += bonus[r] * key_weight
    return transformed_out, scores_out, finite


_INSERTION_TOP = 64  # a stable top k by insertion up to this k (less code and no sort right after a scan)


@numba.njit(**_JIT)
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


@numba.njit(**_JIT)
def merge_row(
    plain_scores: np.ndarray,  # (n_plain,) float32, descending: one query's plain hits
    plain_keep: np.ndarray,  # (n_plain,) bool: the hit is not an override node (or is forgotten)
    over_scores: np.ndarray,  # (n_over,) float32: the model's scores of its override nodes
    over_usable: np.ndarray,  # (n_over,) bool: stored and allowed
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``ranking.rank``'s merge of one query: the top ``depth`` of the kept plain hits (in their
    order) followed by the usable override nodes (in the model's order), stable. Returns their
    scores (float32) and sources (int64: plain position p, or -1 - j for override j)."""
    n_plain, n_over = plain_scores.shape[0], over_scores.shape[0]
    pool_scores = np.empty(n_plain + n_over, dtype=np.float32)
    pool_sources = np.empty(n_plain + n_over, dtype=np.int64)
    count = 0
    for i in range(n_plain):
        if plain_keep[i]:
            pool_scores[count] = plain_scores[i]
            pool_sources[count] = i
            count += 1
    for j in range(n_over):
        if over_usable[j]:
            pool_scores[count] = over_scores[j]
            pool_sources[count] = -1 - j
            count += 1
    size = min(depth, count)
    out_scores = np.empty(size, dtype=np.float32)
    out_sources = np.empty(size, dtype=np.int64)
    _stable_top(pool_scores[:count], pool_sources[:count], out_scores, out_sources)
    return out_scores, out_sources


@numba.njit(**_JIT)
def keyword_fused_top(
    scores: np.ndarray,  # (n,) float32: the candidates' scores
    rows: np.ndarray,  # (n,) int64: their keyword-index rows (-1: not indexed)
    text_scores: np.ndarray,  # (n,) float32: BM25 of the unindexed candidates from their texts; (0,): none given
    spans: np.ndarray,  # (n_rows + 1, 2) int64: [begin, end) of each row's postings (row -1: empty)
    doc_terms: np.ndarray,  # (n_postings,) int32
    doc_weights: np.ndarray,  # (n_postings,) float32: BM25 weight of the term in the row
    query_terms: np.ndarray,  # (n_terms,) int32, sorted unique
    weight: float,  # score + weight * bm25 / max(bm25 over the candidates)
) -> tuple[int, np.ndarray, np.ndarray]:
    """``KeywordPlan.rescore`` of one query's candidates, then their stable descending order:
    (status, fused scores in that order, candidate positions). Status 0; -1 when a row is
    outside the index, -2 when a candidate is unindexed and no text scores were given (nothing
    computed then)."""
    n = scores.shape[0]
    given = text_scores.shape[0] == n
    empty_scores, empty_positions = np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    for i in range(n):
        if rows[i] < -1 or rows[i] >= spans.shape[0] - 1:
            return -1, empty_scores, empty_positions
        if rows[i] == -1 and not given:
            return -2, empty_scores, empty_positions
    keyword = text_scores.copy() if given else np.zeros(n, dtype=np.float32)
    for i in range(n):
        keyword[i] += _bm25(rows[i], spans, doc_terms, doc_weights, query_terms)
    out_scores = np.empty(n, dtype=np.float32)
    out_positions = np.empty(n, dtype=np.int64)
    _fused_top(scores, keyword, np.arange(n), weight, out_scores, out_positions)
    return 0, out_scores, out_positions


@numba.njit(**_JIT)
def _bm25(row: int, spans: np.ndarray, doc_terms: np.ndarray, doc_weights: np.ndarray, query_terms: np.ndarray) -> np.float32:
    """BM25 of the sorted unique ``query_terms`` for keyword-index ``row`` (row -1: empty, 0)."""
    n_terms = query_terms.shape[0]
    if n_terms == 0:
        return np.float32(0.0)
    first_term, last_term = query_terms[0], query_terms[n_terms - 1]
    total = 0.0  # float64 in posting order, like numpy's bincount
    for p in range(spans[row, 0], spans[row, 1]):
        term = doc_terms[p]
        if term < first_term or term > last_term:
            continue
        lo, hi = 0, n_terms
        while lo < hi:  # binary search in the sorted query terms
            mid = (lo + hi) >> 1
            if query_terms[mid] < term:
                lo = mid + 1
            else:
                hi = mid
        if query_terms[lo] == term:
            total += doc_weights[p]
    return np.float32(total)


@numba.njit(**_JIT)
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


@numba.njit(**_JIT)
def merge_keyword_top(
    plain_scores: np.ndarray,  # (>= n_plain,) float32, descending: one query's plain hits (first n_plain read)
    plain_rows: np.ndarray,  # (n_plain,) int64: their keyword-index rows (-1: not indexed)
    overridden_rows: np.ndarray,  # (n_index_rows,) bool: the rows of the override nodes
    over_scores: np.ndarray,  # (n_over,) float32: the model's scores of its override nodes
    over_usable: np.ndarray,  # (n_over,) bool: stored and allowed
    over_rows: np.ndarray,  # (n_over,) int64: their keyword-index rows (all indexed)
    spans: np.ndarray,  # the postings, as keyword_fused_top reads them
    doc_terms: np.ndarray,
    doc_weights: np.ndarray,
    query_terms: np.ndarray,  # (n_terms,) int32, sorted unique
    weight: float,
    depth: int,  # the re-scored candidates: the merged top ``depth``, whatever ``k``
    k: int,
    asked: int,  # the plain hits the search was asked for (fewer: every allowed node was found)
) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`merge_row` (a plain hit is kept unless its row is an override node's) to the top
    ``max(k, depth)``, :func:`keyword_fused_top` of its first ``depth``, the rest after them in
    merged order, cut to the top ``k``, in one call (so a top ``k`` is the first ``k`` of any
    longer top): (status, scores, sources as merge_row's). Status 0; -2 when an unindexed node
    reaches the top ``depth`` (its keyword score needs its text), -3 when the plain hits may
    miss one of the merged top ``max(k, depth)`` (as ``ranking._plain_search`` judges a row: a
    deeper search is needed); nothing is computed then."""
    reach = max(k, depth)
    n_plain = plain_rows.shape[0]
    nothing = (np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64))
    keep = np.empty(n_plain, dtype=np.bool_)
    kept = 0
    for i in range(n_plain):
        keep[i] = plain_rows[i] < 0 or not overridden_rows[plain_rows[i]]
        kept += keep[i]
    if n_plain >= asked and kept < reach:
        reaching = 0  # usable override scores at or above the last plain hit's
        for j in range(over_scores.shape[0]):
            if n_plain and over_usable[j] and over_scores[j] >= plain_scores[n_plain - 1]:
                reaching += 1
        if n_plain == 0 or kept + reaching < reach:
            return -3, nothing[0], nothing[1]
    top_scores, top_sources = merge_row(plain_scores[:n_plain], keep, over_scores, over_usable, reach)
    size = top_scores.shape[0]
    head = min(depth, size)
    keyword = np.empty(head, dtype=np.float32)
    for i in range(head):
        source = top_sources[i]
        row = plain_rows[source] if source >= 0 else over_rows[-1 - source]
        if row < 0:
            return -2, nothing[0], nothing[1]
        keyword[i] = _bm25(row, spans, doc_terms, doc_weights, query_terms)
    out_size = min(k, size)
    out_scores = np.empty(out_size, dtype=np.float32)
    out_sources = np.empty(out_size, dtype=np.int64)
    fused = min(head, out_size)
    _fused_top(top_scores[:head], keyword, top_sources[:head], weight, out_scores[:fused], out_sources[:fused])
    for i in range(head, out_size):  # past the re-scored head: the merged order
        out_scores[i] = top_scores[i]
        out_sources[i] = top_sources[i]
    return 0, out_scores, out_sources
