"""Compiled (numba) kernels for one ``deep_memory=True`` query: adapter and memory scores before
the FAISS scan; merge and keyword re-scoring after it.

Why compiled: the scan streams the whole index through the CPU caches, so right after it every
numpy call costs 5-35 µs to fetch its own code and metadata again; the query path made about 40
of them. One kernel per step makes the overhead of ``deep_memory=True`` a few loops over the
model's arrays. Each kernel computes what a numpy or Python reference in its caller computes
(tests compare the two). Callers reach this module through ``base.compiled_kernels()``, which
returns None where numba is not installed (the numpy paths then run).
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
def _stable_top(scores: np.ndarray, slots: np.ndarray, out_scores: np.ndarray, out_slots: np.ndarray) -> int:
    """The top ``len(out_scores)`` of (scores, slots) in descending score order, ties (and NaN,
    placed last) in input order, as ``np.argsort(-scores, kind="mergesort")`` ranks them.
    Returns the number written."""
    n, k = scores.shape[0], out_scores.shape[0]
    if k > _INSERTION_TOP:
        order = np.argsort(-scores, kind="mergesort")
        count = min(k, n)
        for i in range(count):
            out_scores[i] = scores[order[i]]
            out_slots[i] = slots[order[i]]
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
            out_slots[j] = out_slots[j - 1]
        out_scores[position] = score
        out_slots[position] = slots[i]
        count = min(count + 1, k)
    return count


@numba.njit(**_JIT)
def _merge(
    plain_scores: np.ndarray,  # (k,) float32, descending: the plain top k of the transformed query
    plain_slots: np.ndarray,  # (k,) int64
    over_scores: np.ndarray,  # (n_over,) float32: the model's scores of its override nodes
    over_slots: np.ndarray,  # (n_over,) int64, all stored
    over_mask: np.ndarray,  # (capacity + 1,) bool: slot -> is an override node
    out_scores: np.ndarray,  # out (k,) float32
    out_slots: np.ndarray,  # out (k,) int64
) -> int:
    """The store's ``_merge_single``: exact top k from k plain hits and the override scores.

    Returns k, or -1 when the k plain hits do not suffice (the caller's general path)."""
    k = plain_slots.shape[0]
    if k == 0 or plain_slots[k - 1] < 0:
        return -1
    last = plain_scores[k - 1]
    n_over = over_slots.shape[0]
    pool_scores = np.empty(k + n_over, dtype=np.float32)
    pool_slots = np.empty(k + n_over, dtype=np.int64)
    count = 0
    for i in range(k):  # plain hits that are not override nodes keep their score
        if not over_mask[plain_slots[i]]:
            pool_scores[count] = plain_scores[i]
            pool_slots[count] = plain_slots[i]
            count += 1
    for j in range(n_over):  # override nodes below the k-th plain score cannot enter
        if over_scores[j] >= last:
            pool_scores[count] = over_scores[j]
            pool_slots[count] = over_slots[j]
            count += 1
    if count < k:
        return -1
    return _stable_top(pool_scores[:count], pool_slots[:count], out_scores, out_slots)


@numba.njit(**_JIT)
def _keyword_top(
    scores: np.ndarray,  # (n,) float32: the candidates' scores
    slots: np.ndarray,  # (n,) int64: their slots
    rows_by_slot: np.ndarray,  # (capacity,) int64: keyword-index row of each slot (-1: not indexed)
    spans: np.ndarray,  # (n_rows + 1, 2) int64: [begin, end) of each row's postings
    doc_terms: np.ndarray,  # (n_postings,) int32
    doc_weights: np.ndarray,  # (n_postings,) float32: BM25 weight of the term in the row
    query_terms: np.ndarray,  # (n_terms,) int32, sorted unique
    weight: float,  # score + weight * bm25 / max(bm25 over the candidates)
    out_scores: np.ndarray,  # out (k,) float32
    out_slots: np.ndarray,  # out (k,) int64
) -> int:
    """``KeywordPlan.rescore`` of one query's candidates, then their top k (stable).

    Returns the number written, or -1 when a candidate is padding (slot -1) or not in the keyword
    index (the caller's general path scores those from their text)."""
    n = slots.shape[0]
    n_terms = query_terms.shape[0]
    # The postings sit in arrays far larger than the caches: gather every address first, so the
    # memory reads of all candidates overlap instead of waiting one after the other.
    begins = np.empty(n, dtype=np.int64)
    ends = np.empty(n, dtype=np.int64)
    for i in range(n):
        slot = slots[i]
        if slot < 0 or slot >= rows_by_slot.shape[0]:
            return -1
        begins[i] = rows_by_slot[slot]
    for i in range(n):
        row = begins[i]
        if row < 0:
            return -1
        begins[i], ends[i] = spans[row, 0], spans[row, 1]
    touched = np.int64(0)
    for i in range(n):  # one read per cache line (16 entries) of each candidate's postings
        for p in range(begins[i], ends[i], 16):
            touched += doc_terms[p] + np.int64(doc_weights[p] != 0)
    keyword = np.zeros(n, dtype=np.float32)
    best = np.float32(0.0)
    first_term = query_terms[0] if n_terms else 0
    last_term = query_terms[n_terms - 1] if n_terms else -1
    for i in range(n):
        total = 0.0  # float64 in posting order, like numpy's bincount
        for p in range(begins[i], ends[i]):
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
        keyword[i] = np.float32(total)
        if keyword[i] > best:
            best = keyword[i]
    fused = scores.copy()
    if best > 0:
        scale = np.float32(weight / np.float64(best))
        for i in range(n):
            fused[i] = scores[i] + scale * keyword[i]
    count = _stable_top(fused, slots, out_scores, out_slots)  # stable, like the store's general path
    return count if touched >= -(1 << 62) else -1  # uses ``touched``, so the reads are not optimised away


@numba.njit(**_JIT)
def merge_overrides(
    plain_scores: np.ndarray,  # (1, k) float32, descending
    plain_slots: np.ndarray,  # (1, k) int64
    over_scores: np.ndarray,  # (1, n_over) float32
    over_slots: np.ndarray,  # (n_over,) int64, all stored
    over_mask: np.ndarray,  # (capacity + 1,) bool
    out_scores: np.ndarray,  # out (1, k) float32
    out_slots: np.ndarray,  # out (1, k) int64
) -> int:
    """:func:`_merge` of one query, on the store's (1, k) arrays: k, or -1 (general path)."""
    return _merge(plain_scores[0], plain_slots[0], over_scores[0], over_slots, over_mask, out_scores[0], out_slots[0])


@numba.njit(**_JIT)
def merge_keyword_top(
    plain_scores: np.ndarray,  # (1, n) float32, descending: the plain top n of the transformed query
    plain_slots: np.ndarray,  # (1, n) int64
    over_scores: np.ndarray,  # (1, n_over) float32
    over_slots: np.ndarray,  # (n_over,) int64, all stored
    over_mask: np.ndarray,  # (capacity + 1,) bool
    rows_by_slot: np.ndarray,  # (capacity,) int64
    spans: np.ndarray,  # the keyword index's postings (LexicalIndex.postings)
    doc_terms: np.ndarray,
    doc_weights: np.ndarray,
    query_terms: np.ndarray,  # the query's sorted unique term ids, int32 (LexicalIndex.query_term_ids)
    weight: float,
    k: int,
) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`_merge` then :func:`_keyword_top` of one query, in one call.

    Returns ``(count, scores, slots)``: the top ``count`` after keyword re-scoring (arrays of
    shape (1, count)); count -2 when only the merge succeeded (the merged candidates, (1, n)),
    -1 when the merge needs the general path (the arrays mean nothing)."""
    n = plain_slots.shape[1]
    merged_scores, merged_slots = np.empty((1, n), dtype=np.float32), np.empty((1, n), dtype=np.int64)
    if _merge(plain_scores[0], plain_slots[0], over_scores[0], over_slots, over_mask,
              merged_scores[0], merged_slots[0]) < 0:
        return -1, merged_scores, merged_slots
    m = min(k, n)
    top_scores, top_slots = np.empty((1, m), dtype=np.float32), np.empty((1, m), dtype=np.int64)
    written = _keyword_top(merged_scores[0], merged_slots[0], rows_by_slot, spans, doc_terms, doc_weights,
                           query_terms, weight, top_scores[0], top_slots[0])
    if written < 0:
        return -2, merged_scores, merged_slots
    return written, top_scores, top_slots
