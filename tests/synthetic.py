"""Seeded synthetic retrieval tasks shared by the Deep Memory tests."""

from __future__ import annotations

import numpy as np
from llama_index.core.schema import TextNode

from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.store import DeepMemoryVectorStore


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class RotationTask:
    """Seeded documents; each query is a rotated, noisy copy of its one relevant document (weight 1)."""

    def __init__(self, n_docs: int = 150, dim: int = 16, n_queries: int = 120, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.docs = normalise(rng.normal(size=(n_docs, dim)))
        rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        targets = rng.integers(0, n_docs, size=n_queries)
        noise = 0.3 * rng.normal(size=(n_queries, dim)) / np.sqrt(dim)
        self.queries = normalise(self.docs[targets] @ rotation.T + noise)
        self.ids = [f"node_{i}" for i in range(n_docs)]
        self.relevance = [[(self.ids[t], 1.0)] for t in targets]
        self.texts = [f"question {i}" for i in range(n_queries)]

    def store(self) -> DeepMemoryVectorStore:
        store = DeepMemoryVectorStore()
        store.add([TextNode(id_=i, text=f"document {i}", embedding=v.tolist()) for i, v in zip(self.ids, self.docs)])
        return store


ROTATION_DOCS, ROTATION_DIM, ROTATION_TRAIN, ROTATION_TEST = 150, 16, 120, 40
ROTATION_FAST = dict(epochs=8, learning_rate=2e-2, batch_size=32, query_memory=False, refit=False)


class SplitRotationTask(RotationTask):
    """The shared rotation task (150 documents, 16 dims) split into 120 training and 40 test queries."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(n_docs=ROTATION_DOCS, dim=ROTATION_DIM, n_queries=ROTATION_TRAIN + ROTATION_TEST, seed=seed)
        self.train = slice(0, ROTATION_TRAIN)
        self.test = slice(ROTATION_TRAIN, ROTATION_TRAIN + ROTATION_TEST)

    def train_args(self) -> tuple[list[str], list, np.ndarray]:
        return self.texts[self.train], self.relevance[self.train], self.queries[self.train]

    def test_args(self) -> tuple[list[str], list, np.ndarray]:
        return self.texts[self.test], self.relevance[self.test], self.queries[self.test]


def brute_force_scores(queries: np.ndarray, docs: np.ndarray, ids: list[str], model=None) -> np.ndarray:
    """The full (queries, docs) score matrix; with a Deep Memory model, queries are transformed
    first and its override columns replace the plain scores, except for queries its gate sends to
    the adapter alone (cosine to every ``gate_keys`` row below ``gate_threshold``)."""
    open_gate = np.ones(len(queries), dtype=bool)
    if model is not None and getattr(model, "gate_threshold", 0.0) > 0 and len(model.memory_ids):
        open_gate = (normalise(queries) @ normalise(model.gate_keys).T).max(axis=1) >= model.gate_threshold
    if model is not None:
        queries = model.transform_queries(queries)
    scores = queries @ docs.T
    if model is not None:
        position = {node: j for j, node in enumerate(ids)}
        over_ids, over_scores = model.overrides(queries)
        for j, node in enumerate(over_ids):
            scores[open_gate, position[node]] = over_scores[open_gate, j]
    return scores


def reference_keyword_weights(model, queries: np.ndarray) -> np.ndarray:
    """Per query, the keyword weight a model serves: ``far_lexical_weight`` where the largest
    cosine to a training query (``gate_keys``) is below ``far_cosine``, else ``lexical_weight``."""
    weights = np.full(len(queries), model.lexical_weight)
    if getattr(model, "far_lexical_weight", 0.0) > 0:
        nearest = (normalise(queries) @ normalise(model.gate_keys).T).max(axis=1)
        weights[nearest < model.far_cosine] = model.far_lexical_weight
    return weights


def served_keyword_weights(model, queries: np.ndarray) -> np.ndarray | None:
    """Per query, the keyword weight the model's plans serve (``keyword_plans``); None when every
    query is served one weight (no far rule or no keyword re-scoring)."""
    if model.far_lexical_weight <= 0 or not model.rerank_depth:
        return None
    return np.array([plan.weight for plan in model.keyword_plans(queries)])


def brute_force_top_k(queries: np.ndarray, docs: np.ndarray, ids: list[str], k: int, model=None) -> np.ndarray:
    """Exact top-k row indices into ``docs`` from :func:`brute_force_scores`."""
    return np.argsort(-brute_force_scores(queries, docs, ids, model), axis=1, kind="stable")[:, :k]


N_DOCS, DIM, N_TRAIN, N_TEST = 80, 64, 100, 40
OPTIONS = dict(epochs=6, learning_rate=2e-2, batch_size=32, refit=False)


class KeywordTask:
    """Seeded documents, each with a unique code word its queries name; query vectors are random,
    so only memory (seen documents) and keyword re-scoring can find the relevant document."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.docs = normalise(rng.normal(size=(N_DOCS, DIM)))
        self.ids = [f"node_{i}" for i in range(N_DOCS)]
        self.doc_texts = [f"report about code{i}x with shared words alpha beta" for i in range(N_DOCS)]
        targets = rng.integers(0, N_DOCS, size=N_TRAIN + N_TEST)
        self.queries = normalise(rng.normal(size=(N_TRAIN + N_TEST, DIM)))
        self.texts = [f"which report mentions code{t}x" for t in targets]
        self.relevance = [[(self.ids[t], 1.0)] for t in targets]

    def nodes(self, metadata: bool = False) -> list[TextNode]:
        """The documents as nodes; with ``metadata``, each carries ``{"parity": i % 2}``."""
        return [
            TextNode(id_=i, text=t, embedding=v.tolist(), metadata={"parity": j % 2} if metadata else {})
            for j, (i, t, v) in enumerate(zip(self.ids, self.doc_texts, self.docs))
        ]

    def store(self, **kwargs) -> DeepMemoryVectorStore:
        store = DeepMemoryVectorStore(**kwargs)
        store.add(self.nodes())
        return store


def gated_model(task: KeywordTask, threshold: float = 0.5, keywords: bool = False) -> tuple:
    """A hand-made ``AdapterMemoryModel`` over ``task`` and its memory rows: 20 memory documents
    pulled strongly towards other documents, each linked to one remembered key (the first 20
    queries, also the gate's keys), a near-identity adapter; with ``keywords``, weight 0.2 (the
    gate's fallback 0.8)."""
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

    rng = np.random.default_rng(5)
    memory = rng.choice(len(task.ids), size=20, replace=False)
    keys = task.queries[:20]
    model = AdapterMemoryModel(
        DIM,
        weight=np.eye(DIM, dtype=np.float32) + 0.1 * rng.normal(size=(DIM, DIM)).astype(np.float32) / np.sqrt(DIM),
        memory_ids=[task.ids[j] for j in memory],
        memory_vectors=normalise(task.docs[memory] + 2.0 * keys),  # memory pulled towards the keys
        key_vectors=keys,
        link_key=np.arange(20),
        link_node=np.arange(20),
        link_weight=np.ones(20, np.float32),
        key_weight=1.0,
        key_threshold=0.6,
        gate_threshold=threshold,
        gate_keys=keys,
        lexical=LexicalIndex(task.ids, task.doc_texts) if keywords else None,
        lexical_weight=0.2 if keywords else 0.0,
        fallback_lexical_weight=0.8 if keywords else 0.0,
    )
    return model, memory


def hand_model(task: KeywordTask, seed: int = 0) -> AdapterMemoryModel:
    """A seeded model with every part: a near-identity adapter, memory for 30 documents (some
    pulled towards other documents) and keyword re-scoring of the stored texts."""
    rng = np.random.default_rng(seed)
    memory = rng.choice(len(task.ids), size=30, replace=False)
    return AdapterMemoryModel(
        DIM,
        weight=np.eye(DIM, dtype=np.float32) + 0.2 * rng.normal(size=(DIM, DIM)).astype(np.float32) / np.sqrt(DIM),
        memory_ids=[task.ids[j] for j in memory],
        memory_vectors=task.docs[memory] + 0.5 * task.docs[rng.permutation(memory)],
        lexical=LexicalIndex(task.ids, task.doc_texts),
        lexical_weight=0.4,
    )


NEAR_WEIGHT, FAR_WEIGHT, FAR_COSINE = 0.02, 0.8, 0.5  # the far-keyword model's weights and cut-off


def far_model(task: KeywordTask, far_weight: float = FAR_WEIGHT) -> AdapterMemoryModel:
    """The hand-made memory model of the gate tests without a gate: memory pulled towards the
    first 20 queries (the "training queries"), a small keyword weight near them, a large one far."""
    model, _ = gated_model(task, threshold=0.0, keywords=True)
    return model.replace(lexical_weight=NEAR_WEIGHT, far_lexical_weight=far_weight, far_cosine=FAR_COSINE,
                         gate_keys=task.queries[:20])
