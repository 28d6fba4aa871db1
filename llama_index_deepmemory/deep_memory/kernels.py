"""Compiled (numba) kernels for one ``deep_memory=True`` query: adapter and memory scores before
the FAISS scan, merge and keyword re-scoring after it.

Why compiled: the scan streams the whole index through the CPU caches, so right after it every
numpy call costs 5-35 µs to fetch its own code and metadata again; the query path made about 40
of them. One kernel per step makes the overhead of ``deep_memory=True`` a few loops over the
model's arrays. Each kernel computes what a numpy reference in its caller computes (tests
compare the two). Callers reach this module through ``base.compiled_kernels()``, which returns
None where numba is not installed (the numpy paths then run).
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
    transformed_out: np.ndarray,  # out (1, d) float32
    scores_out: np.ndarray,  # out (1, n_memory) float32
) -> float:
    """``AdapterMemoryModel.transform_queries`` and ``overrides`` of one query, in place.

    Returns the best memory score (-inf without memory nodes)."""
    query, transformed, scores = queries[0], transformed_out[0], scores_out[0]
    d = query.shape[0]
    sq = np.float32(0.0)
    for i in range(d):
        value = query[i] + _dot_codes(residual_codes[i], query) * residual_scales[i] + bias[i]
        transformed[i] = value
        sq += value * value
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
    best = -np.inf
    for r in range(n_memory):
        if scores[r] > best:
            best = scores[r]
    return best


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
    kept = count
    for j in range(n_over):  # override nodes below the k-th plain score cannot enter
        if over_scores[j] >= last:
            pool_scores[count] = over_scores[j]
            pool_slots[count] = over_slots[j]
            count += 1
    if count < k:
        return -1
    if kept == k and count == k:
        out_scores[:] = plain_scores
        out_slots[:] = plain_slots
        return k
    order = np.argsort(-pool_scores[:count], kind="mergesort")  # stable: plain hits first on ties
    for i in range(k):
        out_scores[i] = pool_scores[order[i]]
        out_slots[i] = pool_slots[order[i]]
    return k


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
    """``AdapterMemoryModel.rerank_rows`` of one query's candidates, then their top k (stable).

    Returns the number written, or -1 when a candidate is padding (slot -1) or not in the keyword
    index (the caller's general path scores those from their text)."""
    n = slots.shape[0]
    n_terms = query_terms.shape[0]
    keyword = np.zeros(n, dtype=np.float32)
    best = np.float32(0.0)
    for i in range(n):
        slot = slots[i]
        if slot < 0 or slot >= rows_by_slot.shape[0] or rows_by_slot[slot] < 0:
            return -1
        row = rows_by_slot[slot]
        total = 0.0  # float64 in posting order, like numpy's bincount
        for p in range(spans[row, 0], spans[row, 1]):
            term = doc_terms[p]
            lo, hi = 0, n_terms
            while lo < hi:  # binary search in the sorted query terms
                mid = (lo + hi) >> 1
                if query_terms[mid] < term:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < n_terms and query_terms[lo] == term:
                total += doc_weights[p]
        keyword[i] = np.float32(total)
        if keyword[i] > best:
            best = keyword[i]
    fused = scores.copy()
    if best > 0:
        scale = np.float32(weight / np.float64(best))
        for i in range(n):
            fused[i] = scores[i] + scale * keyword[i]
    order = np.argsort(-fused, kind="mergesort")  # stable, like the store's general path
    k = min(out_scores.shape[0], n)
    for i in range(k):
        out_scores[i] = fused[order[i]]
        out_slots[i] = slots[order[i]]
    return k



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
    spans: np.ndarray,
    doc_terms: np.ndarray,
    doc_weights: np.ndarray,
    query_terms: np.ndarray,
    weight: float,
    merged_scores: np.ndarray,  # out (1, n) float32: the merged candidates...
    merged_slots: np.ndarray,  # out (1, n) int64
    out_scores: np.ndarray,  # out (1, k) float32: ... and their top k after keyword re-scoring
    out_slots: np.ndarray,  # out (1, k) int64
) -> int:
    """:func:`_merge` then :func:`_keyword_top` of one query, in one call.

    Returns the number of results written to ``out_*``; -1 when the merge needs the general
    path (nothing written), -2 when only the merge succeeded (candidates in ``merged_*``)."""
    if _merge(plain_scores[0], plain_slots[0], over_scores[0], over_slots, over_mask,
              merged_scores[0], merged_slots[0]) < 0:
        return -1
    written = _keyword_top(merged_scores[0], merged_slots[0], rows_by_slot, spans, doc_terms, doc_weights,
                           query_terms, weight, out_scores[0], out_slots[0])
    return -2 if written < 0 else written
