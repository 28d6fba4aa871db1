"""Exact inner-product top k of query rows over a float32 matrix, by chunked BLAS products.

One pass over the matrix per call, whatever the number of queries: each chunk of stored rows is
multiplied with every query at once (``sgemm``), and only the scores above each query's current
k-th best survive a comparison (after the first chunk there are few), so no per-chunk sort or
partition of the whole product is needed. Equal scores keep the lower row first, as
:func:`~llama_index_deepmemory.topk.stable_order` over the rows in order would. Faster than a FAISS
flat index for a handful to a few thousand queries on few cores (no per-1024-row heap pass, no
OpenMP barrier per block), and it reads the matrix in place: no second copy of the corpus.
NumPy only.
"""

from __future__ import annotations

import numpy as np

CHUNK_SCORES = 1 << 24  # scores per chunk product (64 MiB of float32): the chunk's rows = this / queries
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 2048, 65536
BLOCK = 256  # columns per block maximum: only blocks whose best beats a query's k-th best are read again
_PAD_ROW = np.iinfo(np.int64).max  # sorts after every real row among equal (-inf) scores


def chunk_rows(n_queries: int) -> int:
    """Stored rows per chunk product for ``n_queries`` query rows."""
    rows = min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, CHUNK_SCORES // max(1, n_queries)))
    return int(max(BLOCK, rows - rows % BLOCK))  # whole blocks of columns


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` rows of ``matrix`` (n, d) by inner product with each query row (m, d).

    Returns scores (m, k') float32, best first, and row indices (m, k') int64, with
    ``k' = min(k, n)``; equal scores in ascending row order (exact, like a full stable sort).
    """
    matrix = np.asarray(matrix)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if matrix.dtype != np.float32:
        raise ValueError(f"exact_top_k searches a float32 matrix, got {matrix.dtype}; convert it once with astype")
    if queries.ndim != 2 or matrix.ndim != 2 or queries.shape[1] != matrix.shape[1]:
        raise ValueError(f"queries {queries.shape} and matrix {matrix.shape} must be 2-D with the same width")
    m, n = len(queries), len(matrix)
    k = max(0, min(int(k), n))
    scores = np.full((m, k), -np.inf, dtype=np.float32)
    rows = np.full((m, k), _PAD_ROW, dtype=np.int64)
    if m == 0 or k == 0:
        return scores, rows
    step = chunk_rows(m)
    buffer = np.empty(m * min(step, n), dtype=np.float32)  # one product's scores, reused
    threshold = np.full(m, -np.inf, dtype=np.float32)  # each query's k-th best so far
    filled = False
    for lo in range(0, n, step):
        chunk = matrix[lo : lo + step]
        product = buffer[: m * len(chunk)].reshape(m, len(chunk))
        np.dot(queries, chunk.T, out=product)
        if not filled:  # the first k rows seen: keep each query's k best of this chunk (ties included)
            width = product.shape[1]
            if width >= k:
                kth = np.partition(product, width - k, axis=1)[:, width - k]
                hit_q, hit_c = np.nonzero(product >= kth[:, None])
            else:
                hit_q, hit_c = np.divmod(np.arange(product.size), width)
        else:  # later rows win only above the k-th best: an equal score loses to the lower row
            hit_q, hit_c = _above(product, threshold)
        if len(hit_q):
            _merge(scores, rows, hit_q, product[hit_q, hit_c], hit_c + lo)
            threshold = scores[:, k - 1]
            filled = bool(np.isfinite(threshold).all())
    return scores, rows


def _above(product: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, column) of the scores above each query's ``threshold``, query-major: the maxima of
    blocks of ``BLOCK`` columns first (one SIMD pass), then only the blocks that beat it."""
    m, width = product.shape
    if width % BLOCK:
        return np.nonzero(product > threshold[:, None])
    blocks = product.reshape(m, width // BLOCK, BLOCK)
    hit_q, hit_b = np.nonzero(blocks.max(axis=2) > threshold[:, None])
    if not len(hit_q):
        return hit_q, hit_b
    which, col = np.nonzero(blocks[hit_q, hit_b] > threshold[hit_q, None])
    return hit_q[which], hit_b[which] * BLOCK + col


def _merge(scores: np.ndarray, rows: np.ndarray, hit_q: np.ndarray, hit_s: np.ndarray, hit_r: np.ndarray) -> None:
    """Merge candidate (query, score, row) triples (``hit_q`` ascending) into the kept top ``k`` in place."""
    k = scores.shape[1]
    touched, starts, counts = np.unique(hit_q, return_index=True, return_counts=True)
    width = k + int(counts.max())
    pool_s = np.full((len(touched), width), -np.inf, dtype=np.float32)
    pool_r = np.full((len(touched), width), _PAD_ROW, dtype=np.int64)
    pool_s[:, :k], pool_r[:, :k] = scores[touched], rows[touched]
    which = np.repeat(np.arange(len(touched)), counts)
    column = k + np.arange(len(hit_q)) - np.repeat(starts, counts)
    pool_s[which, column], pool_r[which, column] = hit_s, hit_r
    order = np.lexsort((pool_r, -pool_s), axis=-1)[:, :k]  # best score first, then the lower row
    scores[touched] = np.take_along_axis(pool_s, order, axis=1)
    rows[touched] = np.take_along_axis(pool_r, order, axis=1)
