"""Exact inner-product top k through a bfloat16 prefilter (torch, AMX): the same rows and scores as
:func:`~llama_index_deepmemory.exact_search.exact_top_k`, with most of the flops in bf16.

Each chunk of stored rows is multiplied with every query in bfloat16 (a copy of the matrix held by
:class:`Bf16Copy`; on CPUs with AMX this runs ~3x faster than float32 ``sgemm``). A rigorous bound on
how far a bf16 score can be from the float32 score (below) keeps, per query, every row that could
reach the query's final k-th best float32 score; only those rows are rescored by float32 ``sgemm`` and
merged as :func:`exact_top_k` merges them (best score first, equal scores in row order), so the
result is the same. The thresholds are lower bounds on each query's k-th best float32 score: the
k-th best of the candidates' least possible float32 scores so far.

The bound, per query ``q`` and chunk (rows ``x``; ``~`` the bf16 rounding; ``N`` the dimension):

* float32 ``sgemm`` score ``s`` vs the real dot: ``|e1| <= g ||q|| ||x||``;
* rounding the inputs: ``|q.x - ~q.~x| <= ||q|| ||x - ~x|| + ||q - ~q|| ||~x||`` (Cauchy-Schwarz on
  the rounding errors; ``||q - ~q||`` computed, ``||x - ~x|| <= 2^-8 ||x||`` plus a subnormal step
  per value, the copy keeping only an upper bound on ``||x||`` per 256 rows);
* bf16 products are exact in float32; their float32 accumulation: ``|e2| <= g ||~q|| ||~x||``;
* flushed subnormals (AMX's DAZ/FTZ): an absolute ``4 N 2^-126 (1 + ||q||)(1 + ||x||)``;

with ``g = N 2^-23 / (1 - N 2^-23)`` (twice the round-to-nearest bound: any summation order, even a
truncating one); the sum of these, times ``1 + 2^-20``, is ``B``. A row whose float32 score beats
``T`` has an accumulator above ``t = T - B``; its bf16 output is at least ``t - 2^-7 |t|``
(rounding to bf16, even by truncation, moves a value by at most ``2^-7`` of it, and ``a - 2^-7|a|``
grows with ``a``), which is the float32 number (rounded down) that each bf16 score is compared with.

float32 rescoring reproduces the chunked product's entries when the BLAS computes an entry the same
way whatever the product's shape: OpenBLAS does above its small-matrix path (measured: below ~2^19
multiply-adds it rounds otherwise), so every float32 product here, and every chunk product of
:func:`exact_top_k` this path stands for, has at least ``_BIG_PRODUCT`` multiply-adds (a small last
chunk is multiplied as :func:`exact_top_k` multiplies it). torch is imported only when a copy is built.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from llama_index_deepmemory import exact_search

logger = logging.getLogger(__name__)
_THREADS_LOCK = threading.RLock()

MIN_QUERIES = 2  # fewer query rows: exact_top_k's float32 path (one row is a gemv there, not an sgemm entry)
MIN_ROWS = 1 << 17  # smaller matrices: the float32 path (a copy is not worth its memory and time); at
# 131,072 x 384 bf16 already takes 0.5-0.9x the float32 time from 8 query rows (2 rows: equal)
MAX_K = 1024  # deeper searches: the float32 path (its merge handles any k)
NORM_BLOCK = 256  # rows per stored maximum of the row norms (the bound takes a chunk's maxima)
_GROUP = 64  # queries per rescoring product past _ONE_GROUP (more: more entries computed and not read; fewer:
# more calls, each costing milliseconds on a busy machine when the BLAS wakes its second thread)
_ONE_GROUP = 128  # up to this many queries: one rescoring product for them all
_MIN_GROUP = 8  # query rows per rescoring product at least (zeros pad it; one row would be a gemv)
_MIN_COLUMNS = 64  # columns per rescoring product at least (keeps the BLAS off its small-matrix path)
_BIG_PRODUCT = 1 << 21  # multiply-adds per product at least: OpenBLAS computes an entry the same way in
# any such product (measured: its small-matrix kernel, below ~2^19 here, rounds differently)
BF16_CHUNK_SCORES = 1 << 24  # bf16 scores per chunk product: its rows = this / queries (whole blocks)
_U_IN = 2.0**-8  # relative error of rounding a float32 to the nearest bf16 (8 significant bits)
_U_OUT = 2.0**-7  # relative error of rounding to bf16, by nearest or by truncation
_SLACK = 1.0 + 2.0**-20  # covers the rounding of the bound's own float64 arithmetic
_FINITE_LIMIT = 1e30  # larger norms: the float32 path (no overflow anywhere in the bound)
_SCORE_LIMIT = 2.0**127  # larger possible scores: the float32 path (bf16 outputs overflow sooner)


def _gamma(n: int) -> float:
    """Relative error bound of a float32 sum of ``n`` products (twice round-to-nearest's unit)."""
    unit = n * 2.0**-23
    return unit / (1.0 - unit)


class Bf16Copy:
    """A bfloat16 copy of a float32 matrix (n, d) with, per block of ``NORM_BLOCK`` rows, an upper
    bound on the largest row norm (float64).

    ``usable`` is False when a fast bf16 product (AMX) or finite values are missing: the caller
    then searches in float32."""

    def __init__(self, matrix: np.ndarray) -> None:
        import torch

        self._torch = torch
        n, d = matrix.shape
        self.shape = (n, d)
        self.tensor = torch.empty((n, d), dtype=torch.bfloat16)
        self.row_norm = np.zeros(-(-n // NORM_BLOCK), dtype=np.float64)  # max ||x|| per block
        step = NORM_BLOCK * 256
        with _torch_threads(torch):
            for lo in range(0, n, step):
                part = np.ascontiguousarray(matrix[lo : lo + step], dtype=np.float32)
                self.tensor[lo : lo + len(part)].copy_(torch.from_numpy(part))  # round to nearest even
                b0 = lo // NORM_BLOCK
                self.row_norm[b0 : b0 + -(-len(part) // NORM_BLOCK)] = _block_max(_norms(part))
        # NaN norms fail the comparison too; an infinite bf16 value needs an infinite or huge row
        self.usable = bool((self.row_norm < _FINITE_LIMIT).all()) and fast_bf16()
        logger.debug("bf16 copy of %d x %d rows (%d MiB), usable: %s", n, d, self.nbytes >> 20, self.usable)

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * 2


def _norms(rows: np.ndarray) -> np.ndarray:
    """Upper bounds on the Euclidean norms of float32 ``rows`` (float64): a float32 sum of ``d``
    squares is within ``d 2^-23`` of the real one (relative, any order), inside the factor added;
    underflowed squares within the absolute term."""
    squares = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
    return np.sqrt(squares * (1.0 + rows.shape[1] * 2.0**-22)) * (1.0 + 2.0**-12) + 2.0**-55


def _block_max(values: np.ndarray) -> np.ndarray:
    pad = (-len(values)) % NORM_BLOCK
    return np.pad(values, (0, pad)).reshape(-1, NORM_BLOCK).max(axis=1)


@functools.lru_cache(maxsize=1)
def fast_bf16() -> bool:
    """Whether torch multiplies bf16 matrices on AMX tiles here (else the float32 path is as fast;
    asked once per process)."""
    try:
        import torch

        return bool(torch.cpu._is_amx_tile_supported()) and torch.backends.mkldnn.is_available()
    except Exception:  # no torch, an older one, or no such probe
        return False


def worth_it(n_rows: int, dim: int, n_queries: int, k: int) -> bool:
    """Whether a search of this shape should take the bf16 path (given a usable copy): large enough
    to gain from it, and of a shape :func:`prefiltered_top_k` takes, so a caller builds no copy it
    would never use."""
    return n_rows >= MIN_ROWS and n_queries >= MIN_QUERIES and k <= MAX_K and applies(n_rows, dim, n_queries, k)


def applies(n_rows: int, dim: int, n_queries: int, k: int) -> bool:
    """Whether :func:`prefiltered_top_k` gives :func:`exact_top_k`'s result for this shape: several
    chunks of at least ``k`` rows, and float32 products large enough to round as its chunks' do
    (a faster path only from ``worth_it``'s sizes, but exact from these)."""
    if n_queries < 2 or k < 1:  # one query row is a gemv in exact_top_k, not an sgemm entry
        return False
    step = exact_search.chunk_rows(n_queries)
    return step < n_rows and min(k, n_rows) <= step and n_queries * step * dim >= _BIG_PRODUCT


@contextmanager
def _torch_threads(torch: Any) -> Iterator[None]:
    """torch uses as many threads as the CPUs this process may run on (as OpenBLAS does for the
    float32 path), whatever a caller set (training sets 1 for its small matrices)."""
    with _THREADS_LOCK:  # torch's thread count is process-wide: concurrent searches set and restore it in turn
        before = torch.get_num_threads()
        wanted = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if wanted != before:
            torch.set_num_threads(wanted)
        try:
            yield
        finally:
            if wanted != before:
                torch.set_num_threads(before)


def prefiltered_top_k(
    matrix: np.ndarray, copy: Bf16Copy, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`exact_top_k` of ``queries`` (float32, C order) over ``matrix`` (whose bf16 ``copy``
    this is), or None when this path does not apply (the caller then searches in float32).

    Two phases, so the BLAS runs few large products (a product split over two threads costs
    milliseconds to start on a busy machine): bf16 products keep the candidates, then one float32
    rescoring of the survivors per group of queries picks the exact top ``k``."""
    m, n = len(queries), len(matrix)
    k = min(int(k), n)
    step = exact_search.chunk_rows(m)  # exact_top_k's chunks: their products' rounding is the reference
    d = matrix.shape[1]
    if not copy.usable or copy.shape != matrix.shape or not applies(n, d, m, k):
        return None
    prepared = _prepared_queries(copy, queries)
    if prepared is None:
        return None
    tail = (n // step) * step if (n % step) and m * (n % step) * d < _BIG_PRODUCT else n
    width = max(BF16_CHUNK_SCORES // m, k + exact_search.BLOCK)
    width = min(tail, width - width % exact_search.BLOCK)  # whole blocks of columns (or every row)
    scores, rows = _exact_top(matrix, queries, k, *_candidates(copy, *prepared, k, width, tail))
    if tail < n:  # a small last chunk: exact_top_k's own float32 product of it (the same rounding)
        product = np.dot(queries, matrix[tail:].T)
        hit_q, hit_c = exact_search._above(product, scores[:, k - 1])
        if len(hit_q):
            exact_search._merge(scores, rows, hit_q, product[hit_q, hit_c], hit_c + tail)
    return scores, rows


def _prepared_queries(copy: Bf16Copy, queries: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """The queries in bf16 (a tensor), upper bounds on their norms and on their rounding errors'
    norms (float64), or None for values the bound does not cover (non-finite, huge)."""
    q64 = queries.astype(np.float64)
    if not np.isfinite(q64).all():
        return None
    torch = copy._torch
    q_bf16 = torch.from_numpy(queries).to(torch.bfloat16)
    q_norm = np.sqrt(np.einsum("ij,ij->i", q64, q64)) * _SLACK
    q_error = np.sqrt(((q64 - q_bf16.double().numpy()) ** 2).sum(axis=1)) * _SLACK
    if q_norm.max(initial=0.0) + q_error.max(initial=0.0) >= _FINITE_LIMIT:
        return None
    if q_norm.max(initial=0.0) * copy.row_norm.max(initial=0.0) * (1 + 2.0**-6) >= _SCORE_LIMIT:
        return None  # a product bf16 may round to inf while float32 keeps it finite
    return q_bf16, q_norm, q_error


def _chunk_bound(copy: Bf16Copy, lo: int, hi: int, q_norm: np.ndarray, q_error: np.ndarray) -> np.ndarray:
    """Per query, ``B`` for the rows ``lo:hi``: how far a bf16 accumulator can be from the float32
    score (module docstring), float64."""
    d = copy.shape[1]
    gamma, tiny = _gamma(d), 4 * d * 2.0**-126
    b0, b1 = lo // NORM_BLOCK, -(-hi // NORM_BLOCK)
    largest = copy.row_norm[b0:b1].max()
    x_error = _U_IN * largest + math.sqrt(d) * 2.0**-126  # rounding each value: 2^-8 of it, or a subnormal's step
    x_norm = largest + x_error
    return (
        q_norm * x_error + q_error * x_norm + gamma * q_norm * (x_norm + x_error)
        + gamma * (q_norm + q_error) * x_norm + tiny * (1 + q_norm) * (1 + x_norm + x_error)
    ) * _SLACK


def _cut(threshold: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """The float32 a bf16 score must reach for its float32 score to reach ``threshold`` (each
    accumulator within ``bound`` of the float32 score, each output within ``_U_OUT`` of it)."""
    t = threshold.astype(np.float64) - bound
    return _down_to_float32(t - _U_OUT * np.abs(t) - 2.0**-126)


def _lowest(approx: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """The least float32 score a bf16 output ``approx`` can stand for (``bound`` as in :func:`_cut`)."""
    a = approx.astype(np.float64)
    acc = np.where(a >= 0, a / (1 + _U_OUT), a / (1 - _U_OUT))
    return _down_to_float32(acc - bound - 2.0**-126)


def _candidates(
    copy: Bf16Copy, q_bf16: Any, q_norm: np.ndarray, q_error: np.ndarray, k: int, step: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Phase one, bf16 only, over rows ``0:end`` in chunks of ``step`` (the rest is left to the
    caller): every row whose float32 score may reach its query's final k-th best, as (query, row,
    bf16 score, bound), query-major per chunk, and each query's final lower bound on its k-th best
    float32 score: the k-th best of the candidates' least possible scores (k rows score at least
    that; in the first chunk, the least possible score of its k-th best bf16 score)."""
    torch = copy._torch
    m = len(q_bf16)
    floor_scores = np.full((m, k), -np.inf, dtype=np.float32)
    floor_rows = np.full((m, k), exact_search._PAD_ROW, dtype=np.int64)
    threshold = np.full(m, -np.inf)
    buffer = torch.empty(m * step, dtype=torch.bfloat16)
    parts: list[tuple[np.ndarray, ...]] = []
    with _torch_threads(torch):
        for lo in range(0, end, step):
            hi = min(end, lo + step)
            bound = _chunk_bound(copy, lo, hi, q_norm, q_error)
            product = buffer[: m * (hi - lo)].view(m, hi - lo)
            torch.matmul(q_bf16, copy.tensor[lo:hi].T, out=product)
            bits = product.view(torch.int16).numpy()
            if lo == 0:  # the first chunk: k rows at least its k-th best bf16 score each
                _bf16_keys(bits)
                kth = np.partition(bits, hi - k, axis=1)[:, hi - k].copy()
                threshold = _lowest(_keys_to_float32(kth), bound)
                hit_q, hit_c, approx = _at_least(bits, _cut(threshold, bound), keyed=True)
            else:
                hit_q, hit_c, approx = _at_least(bits, _cut(threshold, bound))
            if not len(hit_q):
                continue
            parts.append((hit_q, hit_c + lo, approx, bound[hit_q]))
            exact_search._merge(floor_scores, floor_rows, hit_q, _lowest(approx, bound[hit_q]), hit_c + lo)
            threshold = np.maximum(threshold, floor_scores[:, k - 1])
    return (*(np.concatenate(column) for column in zip(*parts)), threshold)


def _exact_top(
    matrix: np.ndarray, queries: np.ndarray, k: int, hit_q: np.ndarray, hit_r: np.ndarray, approx: np.ndarray,
    bound: np.ndarray, threshold: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Phase two: the candidates that still may reach the final threshold, rescored in float32,
    their top ``k`` (best score first, then the lower row)."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), exact_search._PAD_ROW, dtype=np.int64)
    keep = approx >= _cut(threshold[hit_q], bound)
    hit_q, hit_r = hit_q[keep], hit_r[keep]
    order = np.lexsort((hit_r, hit_q))
    hit_q, hit_r = hit_q[order], hit_r[order]
    exact = _rescore(queries, matrix, hit_q, hit_r)
    exact_search._merge(scores, rows, hit_q, exact, hit_r)
    return scores, rows


def _down_to_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 at most each float64 value."""
    out = values.astype(np.float32)
    over = out.astype(np.float64) > values
    out[over] = np.nextafter(out[over], np.float32(-np.inf))
    return out


def _bf16_keys(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (int16) as int16 keys in the order of their values (in place): negative
    values' magnitude bits flipped, so -0.0 is -1, just below +0.0."""
    bits ^= (bits >> 15) & np.int16(0x7FFF)
    return bits


def _ceil_keys(cut: np.ndarray) -> np.ndarray:
    """The key of the smallest bf16 at least each float32 ``cut`` (-1, the key of -0.0, for a zero):
    a bf16 score reaches ``cut`` exactly when its key reaches this."""
    bits = cut.astype(np.float32).view(np.uint32)
    high = (bits >> 16).astype(np.uint16)
    up = (bits & 0xFFFF).astype(bool) & ((bits >> 31) == 0)  # positive with low bits: round up
    high = (high + up).astype(np.uint16)  # truncation is already the ceiling of a negative value
    keys = _bf16_keys(high.view(np.int16).copy())
    keys[(high & 0x7FFF) == 0] = -1  # +0.0 or -0.0: both zeros reach it
    return keys


def _keys_to_float32(keys: np.ndarray) -> np.ndarray:
    """float32 values of bf16 keys (:func:`_bf16_keys`; the map is its own inverse)."""
    bits = _bf16_keys(keys.copy())
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _at_least(
    product: np.ndarray, cut: np.ndarray, keyed: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, column) where the bf16 ``product`` (m, w; int16 bit patterns, or their keys when
    ``keyed``; overwritten by keys where a cut is not positive) is at least the query's float32
    ``cut``, query-major, and the float32 values there."""
    keys = _ceil_keys(cut)
    if not keyed and not (cut > 0).all():  # positive bf16 patterns are ordered as int16 already; others are not
        _bf16_keys(product)
        keyed = True
    hit_q, hit_c = exact_search._above(product, (keys.astype(np.int32) - 1).astype(np.int16))
    found = product[hit_q, hit_c]
    if keyed:
        return hit_q, hit_c, _keys_to_float32(found)
    return hit_q, hit_c, (found.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _rescore(queries: np.ndarray, chunk: np.ndarray, hit_q: np.ndarray, hit_c: np.ndarray) -> np.ndarray:
    """float32 scores of the (query, row of ``chunk``) pairs (``hit_q`` ascending), each an entry of
    an ``sgemm`` product of a group of queries with the union of their rows (few, large products)."""
    out = np.empty(len(hit_q), dtype=np.float32)
    touched, starts = np.unique(hit_q, return_index=True)
    bounds = np.append(starts, len(hit_q))
    width = len(chunk)
    size = len(touched) if len(touched) <= _ONE_GROUP else _GROUP
    for g in range(0, len(touched), size):
        lo, hi = bounds[g], bounds[min(g + size, len(touched))]
        group = touched[g : g + size]
        block = queries[group]
        if len(group) < _MIN_GROUP:  # pad with zero queries (their entries are not read)
            block = np.concatenate([block, np.zeros((_MIN_GROUP - len(group), queries.shape[1]), np.float32)])
        columns, where = np.unique(hit_c[lo:hi], return_inverse=True)
        wanted = max(_MIN_COLUMNS, -(-_BIG_PRODUCT // (len(block) * queries.shape[1])))
        if len(columns) < min(wanted, width):  # pad with other columns: a product the BLAS computes as a big one
            extra = np.setdiff1d(np.arange(min(width, wanted + len(columns))), columns)[: wanted - len(columns)]
            columns = np.concatenate([columns, extra])
        product = np.dot(block, chunk[columns].T)
        row_of = np.searchsorted(group, hit_q[lo:hi])
        out[lo:hi] = product[row_of, where]
    return out


def bound_check(matrix: np.ndarray, copy: Bf16Copy, queries: np.ndarray) -> float:
    """The largest ratio of |bf16 score - float32 score| to its allowance (the bound ``B`` plus the
    output rounding) over every pair: below 1 when the bound holds (a test and a diagnostic)."""
    q_bf16, q_norm, q_error = _prepared_queries(copy, queries)
    approx = (q_bf16 @ copy.tensor.T).double().numpy()
    exact = np.dot(queries, matrix.T).astype(np.float64)
    bound = _chunk_bound(copy, 0, len(matrix), q_norm, q_error)[:, None]
    allowance = bound + _U_OUT * (np.abs(exact) + bound) + 2.0**-126
    return float((np.abs(approx - exact) / allowance).max())
