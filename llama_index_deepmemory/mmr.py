"""Maximal marginal relevance over a store's ranked candidates, as each face's ecosystem defines it.

Both faces re-order candidates the store already ranked (plain or with Deep Memory), so relevance is
the store's score, not a fresh cosine to the query; redundancy is the cosine between candidates.

* :func:`llama_index_mmr`: LlamaIndex's rule (``SimpleVectorStore``'s ``mode="mmr"``): redundancy
  is the similarity to the *last* pick. It runs LlamaIndex's own ``get_top_k_mmr_embeddings`` with
  a similarity function that reads the store's scores.
* :func:`langchain_mmr`: LangChain's rule (``maximal_marginal_relevance``): redundancy is the
  *largest* similarity to any pick. LangChain's utility computes relevance as the cosine to the
  query embedding and takes no scores, so the same greedy loop is written here once; with plain
  cosine scores it picks what LangChain's picks (tests/integrations/test_mmr.py compares the two).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

_QUERY = -1  # stands for the query in get_top_k_mmr_embeddings' similarity function


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (n, d) as float64 rows of length 1 (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def llama_index_mmr(
    relevance: np.ndarray, unit_vectors: np.ndarray, k: int, threshold: float
) -> tuple[list[int], list[float]]:
    """LlamaIndex's MMR: first the most relevant candidate, then each time the one maximising
    ``threshold * relevance - (1 - threshold) * cosine(candidate, last pick)``. Returns the picks
    (positions) and their MMR scores, as ``get_top_k_mmr_embeddings`` does."""
    from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings

    relevance = np.asarray(relevance, dtype=np.float64)
    n = len(relevance)
    if k <= 0 or n == 0:  # get_top_k_mmr_embeddings reads a top-k of 0 as "all"
        return [], []
    overlap_of: dict[int, np.ndarray] = {}

    def similarity(a: int, b: int) -> float:
        if a == _QUERY:
            return relevance[b]
        if b not in overlap_of:  # one matrix-vector product per pick, not one dot per pair
            overlap_of.clear()
            overlap_of[b] = unit_vectors @ unit_vectors[b]
        return overlap_of[b][a]

    scores, picks = get_top_k_mmr_embeddings(
        _QUERY, list(range(n)), similarity_fn=similarity, similarity_top_k=min(int(k), n), mmr_threshold=threshold
    )
    return [int(i) for i in picks], [float(s) for s in scores]


def langchain_mmr(relevance: np.ndarray, unit_vectors: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """LangChain's MMR: first the most relevant candidate, then each time the one maximising
    ``lambda_mult * relevance - (1 - lambda_mult) * max cosine(candidate, picks)``; the picks
    (positions), at most ``k``."""
    relevance = np.asarray(relevance, dtype=np.float64)
    k = min(int(k), len(relevance))
    if k <= 0:
        return []
    picked = [int(np.argmax(relevance))]
    redundancy = unit_vectors @ unit_vectors[picked[0]]
    while len(picked) < k:
        mmr = lambda_mult * relevance - (1.0 - lambda_mult) * redundancy
        mmr[picked] = -np.inf
        best = int(np.argmax(mmr))
        picked.append(best)
        redundancy = np.maximum(redundancy, unit_vectors @ unit_vectors[best])
    return picked
