"""Exact pruning of a Deep Memory model's memory and key scores for one query, after its plain search.

``kernels.adapter_memory_scores`` scores every memory node and every key of a model from their int8
codes before the plain search (915 KB read per query for SciFact's shape). After the search far
fewer count:

* a key adds its bonus only where its cosine to the query exceeds the model's ``key_threshold``;
* a memory node can only enter the merged top ``depth`` when its score exceeds the ``depth``-th
  kept plain hit's score (kept plain hits precede override nodes on ties).

Each score row's codes ``c`` split as ``16 * hi + lo`` (``hi = c >> 4`` in [-8, 7], ``lo`` in
[0, 15]); the ``hi`` nibbles, packed two to a byte (half the bytes of the codes), bound the row's
product from above:
``q . c <= 16 q . hi + min(7.5 sum(q) + |q| |lo - 7.5|, 15 sum(max(q, 0)))``, plus a slack that
covers float32 rounding. Only rows whose bound passes are scored, from their codes and with the very
arithmetic of ``adapter_memory_scores`` (same bits), so the ranking is the unpruned one
(``tests/deep_memory/test_pruning.py``). :func:`scored_rank_row` then ranks as ``kernels.rank_row``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from llama_index_deepmemory.deep_memory.kernels import _dot_codes, _jit, rank_row

logger = logging.getLogger(__name__)


def nibble_bounds(codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bound arrays of (n, d) int8 score ``codes`` with (n,) float32 ``scales``: (n, h) int8
    packed high nibbles (``h = ceil(d / 2)``; byte ``j`` holds dimension ``j`` in its low nibble and
    ``j + h`` in its high one) and (n, 2) float64 per row: ``|lo - 7.5|`` over the row's dimensions
    and the rounding slack per unit of ``|q|`` (scale included)."""
    n, d = codes.shape
    h = (d + 1) // 2
    wide = codes.astype(np.int16)
    hi = wide >> 4
    lo = wide - (hi << 4)
    padded = np.zeros((n, 2 * h), dtype=np.int16)
    padded[:, :d] = hi
    packed = np.ascontiguousarray(((padded[:, :h] & 15) | (padded[:, h:] << 4)).astype(np.int8))
    spread = np.sqrt(((lo - 7.5) ** 2).sum(axis=1))
    # float32 sums of d terms err by at most d * 2**-24 of the sum of |terms| (|q| |hi|, |q| |c|);
    # four times that, plus 2**-16 for the float64 terms, and |lo| <= 16 sqrt(d)
    gamma = 4.0 * d * 2.0**-24 + 2.0**-16
    magnitude = 16 * np.sqrt((hi.astype(np.float64) ** 2).sum(axis=1)) + np.sqrt(
        (wide.astype(np.float64) ** 2).sum(axis=1)) + 16 * math.sqrt(d)
    slack = gamma * scales.astype(np.float64) * magnitude
    return packed, np.ascontiguousarray(np.stack([spread * (1 + 2.0**-40), slack], axis=1))


@_jit(fastmath=True)
def _nibble_dots(packed: np.ndarray, low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = q . hi`` of every row of the packed high nibbles, ``low`` and ``high`` the
    query's first ``h`` and last dimensions (zero-padded to ``h``). One loop over the rows, so
    the compiler vectorises the inner one (a call per row costs twice as much)."""
    n, h = packed.shape
    for r in range(n):
        acc = np.float32(0.0)
        for j in range(h):
            x = np.int32(packed[r, j])
            acc += np.float32(np.int32(np.int32(x << 28) >> 28)) * low[j] + np.float32(x >> 4) * high[j]
        out[r] = acc


@_jit()
def _upper(dot: np.float32, spread: float, slack: float, scale: np.float32, q_sum: float, q_pos: float,
           q_norm: float) -> np.float32:
    """A float32 at least ``_dot_codes(codes[r], q) * scales[r]`` as float32 arithmetic gives it,
    from the row's ``q . hi`` (``dot``) and bound terms."""
    low = min(7.5 * q_sum + q_norm * spread, 15.0 * q_pos)
    upper = float(scale) * (16.0 * float(dot) + low) + q_norm * slack
    return np.float32(upper + abs(upper) * 2.0**-20)  # the cast rounds by at most 2**-24


@_jit()
def scored_rank_row(
    transformed: np.ndarray,  # (d,) float32: kernels.transform_row's
    plain_scores: np.ndarray,  # ... kernels.rank_row's arguments but the override scores ...
    plain_keep: np.ndarray,
    plain_rows: np.ndarray,
    usable: np.ndarray,  # (n_memory,) bool: rank_row's over_keep
    over_rows: np.ndarray,
    text_scores: np.ndarray,
    spans: np.ndarray,
    doc_terms: np.ndarray,
    doc_weights: np.ndarray,
    query_terms: np.ndarray,
    weight: float,
    head: int,
    depth: int,
    k: int,
    asked: int,
    score_codes: np.ndarray,  # ... then kernels.adapter_memory_scores' model arrays after the adapter ...
    score_scales: np.ndarray,
    n_memory: int,
    memory_sq: np.ndarray,
    l2: bool,
    unit: bool,
    key_weight: np.float32,
    key_threshold: np.float32,
    link_ptr: np.ndarray,
    link_node: np.ndarray,
    link_weight: np.ndarray,
    packed: np.ndarray,  # ... and nibble_bounds(score_codes, score_scales)
    bounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """``kernels.rank_row`` of one query with the override scores ``adapter_memory_scores`` gives,
    computed only where they can count (the rest marked not kept: they cannot reach the merged
    top ``depth``). Returns rank_row's (scores, sources, complete) and the rows scored from their
    codes (memory nodes and keys)."""
    d = transformed.shape[0]
    n_keys = score_codes.shape[0] - n_memory
    # the floor: the lowest of the first `depth` kept plain hits (none: every usable node is scored)
    n_plain, seen, floor, prune = plain_keep.shape[0], 0, np.float32(np.inf), True
    for i in range(n_plain):
        if seen == depth:
            break
        if plain_keep[i]:
            score = plain_scores[i]
            if score != score:
                prune = False
            elif score < floor:
                floor = score
            seen += 1
    prune = prune and depth > 0 and seen == depth
    # the query's terms of the bounds, and its squared norm as adapter_memory_scores sums it
    h = packed.shape[1]
    low = np.zeros(h, dtype=np.float32)
    high = np.zeros(h, dtype=np.float32)
    q_sum = q_pos = q_sq = 0.0
    sq = np.float32(0.0)
    for i in range(d):
        value = transformed[i]
        if i < h:
            low[i] = value
        else:
            high[i - h] = value
        q_sum += value
        q_pos += max(float(value), 0.0)
        q_sq += float(value) * float(value)
        sq += value * value
    q_norm = math.sqrt(q_sq) * (1 + 2.0**-40)
    dots = np.empty(packed.shape[0], dtype=np.float32)
    _nibble_dots(packed, low, high, dots)
    scored = 0
    bonus = np.zeros(n_memory, dtype=np.float32)
    hit = False
    if n_keys > 0:
        norm = np.float32(1.0) if unit else np.float32(max(math.sqrt(sq), 1e-12))
        for t in range(n_keys):
            r = n_memory + t
            if _upper(dots[r], bounds[r, 0], bounds[r, 1], score_scales[r], q_sum, q_pos, q_norm) / norm <= key_threshold:
                continue
            scored += 1
            sim = np.float32(_dot_codes(score_codes[r], transformed) * score_scales[r]) / norm
            if sim > key_threshold:
                hit = True
                for p in range(link_ptr[t], link_ptr[t + 1]):
                    value = (sim - key_threshold) * link_weight[p]
                    if value > bonus[link_node[p]]:
                        bonus[link_node[p]] = value
    over_scores = np.full(n_memory, -np.inf, dtype=np.float32)
    over_keep = np.zeros(n_memory, dtype=np.bool_)
    for r in range(n_memory):
        if not usable[r]:
            continue
        if prune:
            upper = _upper(dots[r], bounds[r, 0], bounds[r, 1], score_scales[r], q_sum, q_pos, q_norm)
            if l2:
                upper = upper * np.float32(2.0) - memory_sq[r] - sq
            if hit:
                upper += bonus[r] * key_weight
            if upper <= floor:
                continue
        scored += 1
        score = np.float32(_dot_codes(score_codes[r], transformed) * score_scales[r])
        if l2:  # -(|q|^2 - 2 q.m + |m|^2)
            score = score * np.float32(2.0) - memory_sq[r] - sq
        if hit:
            score += bonus[r] * key_weight
        over_scores[r] = score
        over_keep[r] = True
    out_scores, out_sources, complete = rank_row(
        plain_scores, plain_keep, plain_rows, over_scores, over_keep, over_rows, text_scores, spans, doc_terms,
        doc_weights, query_terms, weight, head, depth, k, asked)
    return out_scores, out_sources, complete, scored
