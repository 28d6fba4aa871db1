"""Peer methods for the quality benchmark, all on the same cached embeddings.

Each peer takes normalised document vectors, training queries with their relevance (indices into
the documents) and returns a function ranking new query vectors: ``rank(queries, k) -> (m, k)``
document indices. Peers are benchmark-only dependencies (the ``benchmark`` extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
import tempfile
import types
from pathlib import Path
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

Ranker = Callable[[np.ndarray, int], np.ndarray]
IndexRelevance = list[list[tuple[int, float]]]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores per row, best first (stable for ties)."""
    part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def no_adapter(docs: np.ndarray) -> Ranker:
    """Plain cosine search."""
    return lambda queries, k: top_k(queries @ docs.T, k)


def linear_adapter(
    docs: np.ndarray,
    queries: np.ndarray,
    relevance: IndexRelevance,
    *,
    epochs: int = 20,
    learning_rate: float = 1e-3,
    temperature: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
) -> Ranker:
    """Query-only linear adapter (identity init, no regularisation, fixed epochs), listwise
    softmax over the whole corpus with every relevant document as target."""
    import torch

    torch.manual_seed(seed)
    d = docs.shape[1]
    doc_t = torch.from_numpy(docs)
    q_t = torch.from_numpy(queries)
    targets = torch.zeros((len(queries), len(docs)))
    for i, rel in enumerate(relevance):
        total = sum(w for _, w in rel)
        for j, w in rel:
            targets[i, j] += w / total
    weight = torch.nn.Parameter(torch.eye(d))
    optimizer = torch.optim.Adam([weight], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(queries), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            qt = torch.nn.functional.normalize(q_t[rows] @ weight.T, dim=1)
            loss = -(targets[rows] * torch.log_softmax(qt @ doc_t.T / temperature, dim=1)).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    w = weight.detach().numpy()
    return lambda new_queries, k: top_k((new_queries @ w.T) @ docs.T, k)


def nudge_n(
    docs: np.ndarray,
    queries: np.ndarray,
    relevance: IndexRelevance,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> Ranker:
    """NUDGE-N (PyPI ``nudge-ft``): edits document vectors; gamma chosen on a validation split
    carved from the training queries."""
    import torch
    from nudge import NUDGEN

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(queries))
    n_val = max(1, int(round(validation_fraction * len(queries))))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    def part(idx: np.ndarray) -> dict:
        return {"q_embs": queries[idx], "q_ans_indx": [[j for j, _ in relevance[i]] for i in idx]}

    with contextlib.redirect_stdout(io.StringIO()):  # nudge prints its progress
        tuned = NUDGEN(device=torch.device("cpu")).finetune_embeddings(docs, part(train_idx), part(val_idx))
    tuned = np.asarray(tuned, dtype=np.float32)
    return lambda new_queries, k: top_k(new_queries @ tuned.T, k)


def _load_llamaindex_adapter_engine():
    """``EmbeddingAdapterFinetuneEngine`` without running ``llama_index.finetuning.__init__``
    (it imports mistralai/cohere integrations the benchmark does not need)."""
    name = "llama_index.finetuning.embeddings.adapter"
    if name in sys.modules:
        return sys.modules[name].EmbeddingAdapterFinetuneEngine
    spec = importlib.util.find_spec("llama_index.embeddings.adapter")
    if spec is None:
        raise ImportError("llama-index-embeddings-adapter is not installed (pip install .[benchmark])")
    import llama_index

    root = next(Path(p) / "finetuning" for p in llama_index.__path__ if (Path(p) / "finetuning").is_dir())
    for pkg, path in (("llama_index.finetuning", root), ("llama_index.finetuning.embeddings", root / "embeddings")):
        if pkg not in sys.modules:
            module = types.ModuleType(pkg)
            module.__path__ = [str(path)]
            sys.modules[pkg] = module
    if "llama_index.finetuning.types" not in sys.modules:
        from abc import ABC, abstractmethod

        stub = types.ModuleType("llama_index.finetuning.types")

        class BaseEmbeddingFinetuneEngine(ABC):
            @abstractmethod
            def finetune(self) -> None: ...

            @abstractmethod
            def get_finetuned_model(self, **model_kwargs): ...

        stub.BaseEmbeddingFinetuneEngine = BaseEmbeddingFinetuneEngine
        sys.modules["llama_index.finetuning.types"] = stub
    module = importlib.import_module(name)
    return module.EmbeddingAdapterFinetuneEngine


def _cached_embedding(texts: list[str], vectors: np.ndarray):
    """A LlamaIndex embedding answering from precomputed vectors (same model, no re-encoding)."""
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class CachedEmbedding(BaseEmbedding):
        _table: dict = PrivateAttr()

        def __init__(self, table: dict) -> None:
            super().__init__(model_name="cached-minilm")
            self._table = table

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._table[query]

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._table[text]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._table[query]

    return CachedEmbedding({t: v.tolist() for t, v in zip(texts, vectors)})


def llamaindex_adapter(
    docs: np.ndarray,
    doc_texts: list[str],
    queries: np.ndarray,
    query_texts: list[str],
    relevance: IndexRelevance,
    *,
    epochs: int = 4,
) -> Ranker:
    """LlamaIndex ``EmbeddingAdapterFinetuneEngine`` (linear adapter, its defaults, ``epochs``)."""
    engine_cls = _load_llamaindex_adapter_engine()
    common = sys.modules["llama_index.finetuning.embeddings.common"]
    corpus = {f"d{j}": doc_texts[j] for j in range(len(doc_texts))}
    qdict = {f"q{i}": text for i, text in enumerate(query_texts)}
    relevant = {f"q{i}": [f"d{j}" for j, _ in rel] for i, rel in enumerate(relevance)}
    dataset = common.EmbeddingQAFinetuneDataset(queries=qdict, corpus=corpus, relevant_docs=relevant)
    base = _cached_embedding(list(doc_texts) + list(query_texts), np.concatenate([docs, queries]))
    with tempfile.TemporaryDirectory() as out:
        engine = engine_cls(dataset, base, epochs=epochs, model_output_path=out, device="cpu", dim=docs.shape[1])
        engine.finetune()
        finetuned = engine.get_finetuned_model()  # AdapterEmbeddingModel, loads the saved adapter
        adapter = getattr(finetuned, "_adapter", None) or engine.model
    import torch

    def rank(new_queries: np.ndarray, k: int) -> np.ndarray:
        with torch.no_grad():
            transformed = adapter.forward(torch.from_numpy(new_queries)).numpy()
        return top_k(transformed @ docs.T, k)

    return rank


PEERS = ("none", "linear", "nudge", "llamaindex", "bm25", "hybrid")


def _keyword_index(doc_texts: list[str]):
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    return LexicalIndex([str(i) for i in range(len(doc_texts))], doc_texts)


def bm25(doc_texts: list[str], query_texts: list[str]) -> Ranker:
    """Okapi BM25 alone (our LexicalIndex, k1=0.9, b=0.4); ranks ``query_texts`` (the vectors
    passed to the ranker are ignored)."""
    index = _keyword_index(doc_texts)

    def rank(queries: np.ndarray, k: int) -> np.ndarray:
        return np.stack([top_k(index.scores(text, index.ids)[None, :], k)[0] for text in query_texts])

    return rank


def dense_bm25_hybrid(
    docs: np.ndarray,
    doc_texts: list[str],
    train_vectors: np.ndarray,
    train_texts: list[str],
    relevance: IndexRelevance,
    query_texts: list[str],
    depth: int = 50,
) -> Ranker:
    """Untrained hybrid: plain cosine top ``depth`` re-scored with ``weight * bm25 / max bm25``
    (what our model does, without the adapter or memory); the weight is the best of our default
    grid (``TrainOptions.lexical_weights``) on the training queries by nDCG@10."""
    from llama_index_deepmemory.deep_memory.training import TrainOptions
    from llama_index_deepmemory.metrics import ndcg_at_k

    weights = TrainOptions().lexical_weights

    index = _keyword_index(doc_texts)

    def candidates(vectors: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query's plain top ``depth`` rows, their cosine and their BM25 scores (row i = doc i)."""
        products = vectors @ docs.T
        rows = top_k(products, depth)
        keyword = np.stack([index.scores_at(text, row) for row, text in zip(rows, texts)])
        return rows, np.take_along_axis(products, rows, axis=1), keyword

    def fused_top(rows: np.ndarray, dense: np.ndarray, keyword: np.ndarray, weight: float, k: int) -> np.ndarray:
        ranked = []
        for row, scores, words in zip(rows, dense, keyword):
            fused = scores + (weight / words.max() * words if words.max() > 0 else 0.0)
            ranked.append(row[np.argsort(-fused, kind="stable")[:k]])
        return np.stack(ranked)

    as_ids = [[(str(j), w) for j, w in rel] for rel in relevance]
    train = candidates(train_vectors, train_texts)  # the same for every weight
    best = max(
        weights,
        key=lambda w: ndcg_at_k([[str(j) for j in row] for row in fused_top(*train, w, 10)], as_ids, 10),
    )
    logger.info("hybrid keyword weight chosen on the training queries: %s", best)
    return lambda queries, k: fused_top(*candidates(queries, query_texts), best, k)


def import_peer(name: str) -> None:
    """Import a peer's libraries up front so that training times exclude import time."""
    import torch  # noqa: F401

    if name == "nudge":
        import nudge  # noqa: F401
    elif name == "llamaindex":
        _load_llamaindex_adapter_engine()
        importlib.import_module("llama_index.finetuning.embeddings.adapter_utils")
