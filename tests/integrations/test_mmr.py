"""The one MMR module against its peers: LlamaIndex's ``get_top_k_mmr_embeddings`` and LangChain's
``maximal_marginal_relevance`` (relevance = cosine to the query, as they compute it), and plain-loop
references written from the two rules for the store's own scores (Deep Memory's, any real numbers)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings

from llama_index_deepmemory.mmr import langchain_mmr, llama_index_mmr, unit_rows


def _data(seed: int, n: int = 30, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=d), rng.normal(size=(n, d))


def _reference(relevance: list[float], unit: np.ndarray, k: int, lam: float, last_only: bool) -> tuple[list[int], list[float]]:
    """The MMR rule candidate by candidate: redundancy to the last pick (LlamaIndex) or the most
    similar pick (LangChain); ties go to the earlier candidate."""
    picks: list[int] = []
    scores: list[float] = []
    for _ in range(min(k, len(relevance))):
        best, best_score = -1, -np.inf
        for i, rel in enumerate(relevance):
            if i in picks:
                continue
            if not picks:
                score = rel * lam if last_only else rel
            else:
                overlaps = [float(unit[i] @ unit[j]) for j in (picks[-1:] if last_only else picks)]
                score = lam * rel - (1 - lam) * max(overlaps)
            if score > best_score:
                best, best_score = i, score
        picks.append(best)
        scores.append(best_score)
    return picks, scores


@pytest.mark.parametrize("seed", range(4))
def test_llama_index_mmr_is_get_top_k_mmr_embeddings(seed: int) -> None:
    query, vectors = _data(seed)
    unit = unit_rows(vectors)
    cosine = unit @ (query / np.linalg.norm(query))
    for k, threshold in itertools.product((1, 5, 30, 40), (0.0, 0.3, 0.5, 1.0)):
        picks, scores = llama_index_mmr(cosine, unit, k, threshold)
        want_scores, want_ids = get_top_k_mmr_embeddings(
            query.tolist(), vectors.tolist(), similarity_top_k=k, mmr_threshold=threshold
        )
        assert picks == want_ids, (k, threshold)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_langchain_mmr_is_maximal_marginal_relevance(seed: int) -> None:
    query, vectors = _data(seed)
    unit = unit_rows(vectors)
    cosine = unit @ (query / np.linalg.norm(query))
    for k, lam in itertools.product((1, 5, 30, 40), (0.0, 0.25, 0.5, 1.0)):
        want = maximal_marginal_relevance(query, vectors.tolist(), lambda_mult=lam, k=k)
        assert langchain_mmr(cosine, unit, k, lam) == want, (k, lam)


@pytest.mark.parametrize("seed", range(4))
def test_both_rules_on_store_scores(seed: int) -> None:
    """Relevance that is no cosine to any query (Deep Memory's fused scores can exceed 1)."""
    rng = np.random.default_rng(100 + seed)
    unit = unit_rows(rng.normal(size=(25, 6)))
    relevance = rng.normal(size=25) * 1.5
    for k, lam in itertools.product((1, 7, 25, 30), (0.0, 0.4, 1.0)):
        picks, scores = llama_index_mmr(relevance, unit, k, lam)
        want_picks, want_scores = _reference(relevance.tolist(), unit, k, lam, last_only=True)
        assert picks == want_picks
        np.testing.assert_allclose(scores, want_scores, rtol=1e-9, atol=1e-12)
        assert langchain_mmr(relevance, unit, k, lam) == _reference(relevance.tolist(), unit, k, lam, last_only=False)[0]


def test_edges() -> None:
    unit = unit_rows(np.eye(3))
    assert llama_index_mmr(np.array([0.1, 0.2, 0.3]), unit, 0, 0.5) == ([], [])
    assert llama_index_mmr(np.array([]), unit[:0], 3, 0.5) == ([], [])
    assert langchain_mmr(np.array([0.1, 0.2, 0.3]), unit, 0, 0.5) == []
    assert langchain_mmr(np.array([0.1, 0.9, 0.3]), unit, 1, 0.5) == [1]
    assert unit_rows(np.zeros((1, 2))).tolist() == [[0.0, 0.0]]
