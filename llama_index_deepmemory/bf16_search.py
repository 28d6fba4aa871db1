"""Exact inner-product top k through a bfloat16 prefilter (torch, AMX): the same rows and scores as
:func:`~llama_index_deepmemory.exact_search.exact_top_k`, with most of the flops in bf16.

Each chunk of stored rows is multiplied with every query in bfloat16 (a copy of the matrix held by
:class:`Bf16Copy`; on CPUs with AMX this runs ~3x faster than float32 ``sgemm``). A rigorous bound on
how far a bf16 score can be from the float32 score (below) keeps, per query, every row that could
beat the query's current k-th best exact score; only those rows are rescored by float32 ``sgemm`` and
merged exactly as :func:`exact_top_k` merges them (a strictly greater score, equal scores in row
order), so the result is the same. The first chunk is searched in float32 as before (it sets the
exact thresholds).

The bound, per query ``q`` and chunk (rows ``x``; ``~`` the bf16 rounding; ``N`` the dimension):

* float32 ``sgemm`` score ``s`` vs the real dot: ``|e1| <= g ||q|| ||x||``;
* rounding the inputs: ``|q.x - ~q.~x| <= ||q|| ||x - ~x|| + ||q - ~q|| ||~x||`` (Cauchy-Schwarz on
  the rounding errors, whose norms are computed exactly: tighter than ``2u ||q|| ||x||``);
* bf16 products are exact in float32; their float32 accumulation: ``|e2| <= g ||~q|| ||~x||``;
* flushed subnormals (AMX's DAZ/FTZ): an absolute ``4 N 2^-126 (1 + ||q||)(1 + ||x||)``;

with ``g = N 2^-23 / (1 - N 2^-23)`` (twice the round-to-nearest bound: any summation order, even a
truncating one); the sum of these, times ``1 + 2^-20``, is ``B``. A row whose float32 score beats
``T`` has an accumulator above ``t = T - B``; its bf16 output is at least ``t - 2^-7 |t|``
(rounding to bf16, even by truncation, moves a value by at most ``2^-7`` of it, and ``a - 2^-7|a|``
grows with ``a``), which is the float32 number (rounded down) that each bf16 score is compared with.

float32 rescoring reproduces the chunked product's entries when the BLAS computes an entry the same
way whatever the product's shape (OpenBLAS above its small-matrix path: measured; each rescoring
product here has at least 64 columns and 4,096 entries). torch is imported only when a copy is built.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from llama_index_deepmemory import exact_search

logger = logging.getLogger(__name__)

MIN_QUERIES = 8  # fewer query rows: exact_top_k's float32 path (see benchmarks/README.md, the crossover)
MIN_ROWS = 1 << 17  # smaller matrices: the float32 path (a copy is not worth its memory and time)
MAX_K = 1024  # deeper searches: the float32 path (its merge handles any k)
NORM_BLOCK = 256  # rows per stored maximum of the row norms (the bound takes a chunk's maxima)
_GROUP = 64  # queries per rescoring product
_MIN_GROUP = 8  # queries per rescoring product at least (one row would be a gemv, computed otherwise)
_MIN_COLUMNS = 64  # columns per rescoring product at least (keeps the BLAS off its small-matrix path)
_MIN_ENTRIES = 4096  # entries per rescoring product at least (likewise)
_U_OUT = 2.0**-7  # relative error of rounding to bf16, by nearest or by truncation
_SLACK = 1.0 + 2.0**-20  # covers the rounding of the bound's own float64 arithmetic
_FINITE_LIMIT = 1e30  # larger norms: the float32 path (no overflow anywhere in the bound)


def _gamma(n: int) -> float:
    unit = n * 2.0**-23
    return unit / (1.0 - unit)


class Bf16Copy:
    """A bfloat16 copy of a float32 matrix (n, d) with, per block of ``NORM_BLOCK`` rows, the
    largest norm of a rounded row and of a row's rounding error (float64, computed exactly).

    ``usable`` is False when torch, a fast bf16 product (AMX) or finite values are missing: the
    caller then searches in float32."""

    def __init__(self, matrix: np.ndarray, torch_module: Any = None) -> None:
        import torch

        self._torch = torch_module or torch
        n, d = matrix.shape
        self.shape = (n, d)
        self.tensor = torch.empty((n, d), dtype=torch.bfloat16)
        blocks = -(-n // NORM_BLOCK)
        self.row_norm = np.zeros(blocks, dtype=np.float64)  # max ||~x|| per block
        self.error_norm = np.zeros(blocks, dtype=np.float64)  # max ||x - ~x|| per block
        step = NORM_BLOCK * 256
        finite = True
        for lo in range(0, n, step):
            part = np.ascontiguousarray(matrix[lo : lo + step], dtype=np.float32)
            rounded = torch.from_numpy(part).to(torch.bfloat16)
            self.tensor[lo : lo + len(part)] = rounded
            back = rounded.to(torch.float64).numpy()
            finite = finite and bool(np.isfinite(back).all())
            norms = np.sqrt(np.einsum("ij,ij->i", back, back))
            errors = np.sqrt(((part.astype(np.float64) - back) ** 2).sum(axis=1))
            pad = (-len(part)) % NORM_BLOCK
            b0 = lo // NORM_BLOCK
            nb = (len(part) + pad) // NORM_BLOCK
            self.row_norm[b0 : b0 + nb] = np.pad(norms, (0, pad)).reshape(nb, NORM_BLOCK).max(axis=1)
            self.error_norm[b0 : b0 + nb] = np.pad(errors, (0, pad)).reshape(nb, NORM_BLOCK).max(axis=1)
        self.finite = finite and bool((self.row_norm + self.error_norm).max(initial=0.0) < _FINITE_LIMIT)
        self.usable = self.finite and fast_bf16()

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * 2


def fast_bf16() -> bool:
    """Whether torch multiplies bf16 matrices on AMX tiles here (else the float32 path is as fast)."""
    try:
        import torch

        return bool(torch.cpu._is_amx_tile_supported()) and torch.backends.mkldnn.is_available()
    except Exception:  # no torch, an older one, or no such probe
        return False


def worth_it(n_rows: int, n_queries: int, k: int) -> bool:
    """Whether a search of this shape should take the bf16 path (given a usable copy)."""
    return n_rows >= MIN_ROWS and n_queries >= MIN_QUERIES and 0 < k <= MAX_K


@contextmanager
def _torch_threads(torch: Any) -> Iterator[None]:
    """torch uses as many threads as the CPUs this process may run on (as OpenBLAS does for the
    float32 path), whatever a caller set (training sets 1 for its small matrices)."""
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
    """:func:`exact_top_k` of ``queries`` over ``matrix`` (whose bf16 ``copy`` this is), or None
    when this path does not apply (the caller then searches in float32)."""
    m, n = len(queries), len(matrix)
    k = min(int(k), n)
    step = exact_search.chunk_rows(m)
    if not copy.usable or copy.shape != matrix.shape or k < 1 or step >= n or k > step or m < _MIN_GROUP:
        return None
    q64 = queries.astype(np.float64)
    if not np.isfinite(q64).all():
        return None
    torch = copy._torch
    q_bf16 = torch.from_numpy(queries).to(torch.bfloat16)
    back = q_bf16.to(torch.float64).numpy()
    q_norm = np.sqrt(np.einsum("ij,ij->i", q64, q64))
    q_error = np.sqrt(((q64 - back) ** 2).sum(axis=1))
    if q_norm.max(initial=0.0) + q_error.max(initial=0.0) >= _FINITE_LIMIT:
        return None
    gamma = _gamma(matrix.shape[1])
    tiny = 4 * matrix.shape[1] * 2.0**-126
    scores, rows = exact_search.exact_top_k(matrix[:step], queries, k)  # the first chunk, in float32
    threshold = scores[:, k - 1]
    with _torch_threads(torch):
        for lo in range(step, n, step):
            hi = min(n, lo + step)
            b0, b1 = lo // NORM_BLOCK, -(-hi // NORM_BLOCK)
            x_norm, x_error = copy.row_norm[b0:b1].max(), copy.error_norm[b0:b1].max()
            bound = (
                q_norm * x_error + q_error * x_norm + gamma * q_norm * (x_norm + x_error)
                + gamma * (q_norm + q_error) * x_norm + tiny * (1 + q_norm) * (1 + x_norm + x_error)
            ) * _SLACK
            t = threshold.astype(np.float64) - bound
            cut = _down_to_float32(t - _U_OUT * np.abs(t) - tiny)
            product = q_bf16 @ copy.tensor[lo:hi].T  # (m, hi - lo) bf16
            hit_q, hit_c = _at_least(torch, product, torch.from_numpy(cut))
            if not len(hit_q):
                continue
            exact = _rescore(queries, matrix[lo:hi], hit_q, hit_c)
            wins = exact > threshold[hit_q]  # as exact_top_k: a later row must beat the k-th best
            if wins.any():
                exact_search._merge(scores, rows, hit_q[wins], exact[wins], hit_c[wins] + lo)
                threshold = scores[:, k - 1]
    return scores, rows


def _down_to_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 at most each float64 value."""
    out = values.astype(np.float32)
    over = out.astype(np.float64) > values
    out[over] = np.nextafter(out[over], np.float32(-np.inf))
    return out


def _at_least(torch: Any, product: Any, cut: Any) -> tuple[np.ndarray, np.ndarray]:
    """(query, column) where the bf16 ``product`` (m, w) is at least the query's ``cut`` (float32),
    query-major: block maxima first, then only the blocks that reach it."""
    m, width = product.shape
    full = width - width % exact_search.BLOCK
    cut_col = cut[:, None]
    parts_q, parts_c = [], []
    if full:
        blocks = product[:, :full].reshape(m, full // exact_search.BLOCK, exact_search.BLOCK)
        hit = torch.nonzero(blocks.amax(dim=2).float() >= cut_col)
        if len(hit):
            hq, hb = hit[:, 0], hit[:, 1]
            inside = torch.nonzero(blocks[hq, hb].float() >= cut[hq][:, None])
            parts_q.append(hq[inside[:, 0]])
            parts_c.append(hb[inside[:, 0]] * exact_search.BLOCK + inside[:, 1])
    if full < width:
        tail = torch.nonzero(product[:, full:].float() >= cut_col)
        parts_q.append(tail[:, 0])
        parts_c.append(tail[:, 1] + full)
    if not parts_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    hit_q = torch.cat(parts_q).numpy()
    hit_c = torch.cat(parts_c).numpy()
    if len(parts_q) > 1:  # the tail's hits after the blocks': back to query-major order
        order = np.lexsort((hit_c, hit_q))
        hit_q, hit_c = hit_q[order], hit_c[order]
    return hit_q.astype(np.int64, copy=False), hit_c.astype(np.int64, copy=False)


def _rescore(queries: np.ndarray, chunk: np.ndarray, hit_q: np.ndarray, hit_c: np.ndarray) -> np.ndarray:
    """float32 scores of the (query, column) pairs (``hit_q`` ascending), each an entry of an
    ``sgemm`` product of a group of queries with the union of their columns."""
    out = np.empty(len(hit_q), dtype=np.float32)
    touched, starts = np.unique(hit_q, return_index=True)
    bounds = list(starts) + [len(hit_q)]
    width = len(chunk)
    for g in range(0, len(touched), _GROUP):
        lo, hi = bounds[g], bounds[min(g + _GROUP, len(touched))]
        group = touched[g : g + _GROUP]
        rows = group
        if len(group) < _MIN_GROUP:  # pad with other queries (their entries are not read)
            others = np.setdiff1d(np.arange(min(len(queries), _MIN_GROUP + len(group))), group)
            rows = np.concatenate([group, others[: _MIN_GROUP - len(group)]])
        columns, where = np.unique(hit_c[lo:hi], return_inverse=True)
        wanted = max(_MIN_COLUMNS, -(-_MIN_ENTRIES // len(rows)))
        if len(columns) < min(wanted, width):  # pad with other columns: a product the BLAS computes as a big one
            extra = np.setdiff1d(np.arange(min(width, wanted + len(columns))), columns)[: wanted - len(columns)]
            columns = np.concatenate([columns, extra])
        product = np.dot(queries[rows], chunk[columns].T)
        row_of = np.searchsorted(group, hit_q[lo:hi])
        out[lo:hi] = product[row_of, where]
    return out


def bound_check(matrix: np.ndarray, copy: Bf16Copy, queries: np.ndarray) -> float:
    """The largest ratio of |bf16 score - float32 score| to its allowance (the bound ``B`` plus the
    output rounding) over every pair: below 1 when the bound holds (a test and a diagnostic)."""
    torch = copy._torch
    q_bf16 = torch.from_numpy(queries).to(torch.bfloat16)
    approx = (q_bf16 @ copy.tensor.T).to(torch.float64).numpy()
    exact = np.dot(queries, matrix.T).astype(np.float64)
    q64 = queries.astype(np.float64)
    back = q_bf16.to(torch.float64).numpy()
    q_norm = np.sqrt((q64**2).sum(1))[:, None]
    q_error = np.sqrt(((q64 - back) ** 2).sum(1))[:, None]
    x_norm, x_error = copy.row_norm.max(), copy.error_norm.max()
    gamma = _gamma(matrix.shape[1])
    bound = q_norm * x_error + q_error * x_norm + gamma * q_norm * (x_norm + x_error) + gamma * (q_norm + q_error) * x_norm
    allowance = bound + _U_OUT * (np.abs(exact) + bound) + 1e-30
    return float((np.abs(approx - exact) / allowance).max())
