"""Rankings do not depend on k (issue 26, finding 2): a top-k list is the first k of any longer
top-K list, for every model kind (adapter + memory, keyword-only, gated, far-keyword) over every
backend (embedded FAISS, in-memory Qdrant, embedded Chroma, Milvus Lite, a generic text store),
through ``store.query`` (the embedded store's compiled single-query path included) and batches.

Keyword re-scoring covers a fixed head (``LEXICAL_DEPTH`` = 50), so k around 50 is checked; the
corpus has 80 nodes, so K = 80 is the whole ranking and every k < K must be its prefix.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH, AdapterMemoryModel
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import DIM, N_DOCS, KeywordTask, gated_model
from synthetic import far_model
from synthetic import hand_model
from wrapped_checks import ask, faiss_twin, nodes_with_docs

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
K_LONG = N_DOCS
KS = (1, 10, LEXICAL_DEPTH - 1, LEXICAL_DEPTH, LEXICAL_DEPTH + 1, 64)
QUERIES = (0, 5, 12, 55, 101, 133)  # near the training queries (< 20) and far from them


def adapter_memory(task: KeywordTask) -> AdapterMemoryModel:
    model = hand_model(task)
    return AdapterMemoryModel(DIM, weight=model.weight, memory_ids=model.memory_ids, memory_vectors=model.memory_vectors)


def keyword_only(task: KeywordTask) -> AdapterMemoryModel:
    return AdapterMemoryModel(DIM, lexical=LexicalIndex(task.ids, task.doc_texts), lexical_weight=0.6)


MODELS: dict[str, Callable[[KeywordTask], AdapterMemoryModel]] = {
    "adapter+memory": adapter_memory,
    "adapter+memory+keywords": hand_model,
    "keyword-only": keyword_only,
    "gate": lambda task: gated_model(task, threshold=0.5, keywords=True)[0],
    "far-keyword": far_model,
}


@pytest.fixture(scope="module")
def task() -> KeywordTask:
    return KeywordTask(seed=21)


def _qdrant(task: KeywordTask, tmp) -> DeepMemoryVectorStore:
    pytest.importorskip("qdrant_client")
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    return DeepMemoryVectorStore(vector_store=QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="docs"))


def _chroma(task: KeywordTask, tmp) -> DeepMemoryVectorStore:
    chromadb = pytest.importorskip("chromadb")
    from llama_index.vector_stores.chroma import ChromaVectorStore

    collection = chromadb.EphemeralClient().get_or_create_collection("prefix", metadata={"hnsw:space": "cosine"})
    return DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=collection))


def _milvus(task: KeywordTask, tmp) -> DeepMemoryVectorStore:
    pytest.importorskip("milvus_lite")
    from llama_index.vector_stores.milvus import MilvusVectorStore

    engine = MilvusVectorStore(uri=str(tmp / "prefix.db"), dim=DIM, similarity_metric="COSINE",
                               use_async_client=False, overwrite=True)
    return DeepMemoryVectorStore(vector_store=engine)


def _generic(task: KeywordTask, tmp) -> DeepMemoryVectorStore:
    from tiny_store import TinyTextStore

    return DeepMemoryVectorStore(vector_store=TinyTextStore())


BACKENDS = {"faiss": None, "qdrant": _qdrant, "chroma": _chroma, "milvus": _milvus, "generic": _generic}


@pytest.fixture(scope="module", params=list(BACKENDS))
def store(request, task, tmp_path_factory) -> DeepMemoryVectorStore:
    make = BACKENDS[request.param]
    if make is None:
        yield faiss_twin(task)
        return
    store = make(task, tmp_path_factory.mktemp(request.param))
    store.add(nodes_with_docs(task))
    yield store
    client = getattr(store.vector_store, "client", None)
    if request.param == "milvus" and client is not None:
        client.close()


def _activate(store: DeepMemoryVectorStore, name: str, model: AdapterMemoryModel) -> None:
    store.deep_memory.add_model(name, model, activate=True)  # a hand-made model


@pytest.mark.parametrize("kind", list(MODELS))
def test_top_k_is_the_prefix_of_every_longer_top(task, store, kind) -> None:
    model = MODELS[kind](task)
    _activate(store, kind, model)
    keywords = model.rerank_depth > 0
    moved = 0  # queries whose k=10 list would differ if re-scoring covered max(k, 50)
    for i in QUERIES:
        text = task.texts[i] if keywords else None
        long = ask(store, task.queries[i], k=K_LONG, text=text, deep_memory=True)
        assert len(long.ids) == K_LONG
        for k in KS:
            short = ask(store, task.queries[i], k=k, text=text, deep_memory=True)
            assert short.ids == long.ids[:k], f"{kind}: query {i}, top {k} is not the first {k} of the top {K_LONG}"
            np.testing.assert_allclose(short.similarities, long.similarities[:k], rtol=1e-5, atol=1e-6)
        if keywords:
            moved += _rescored_whole_list(model, store, task, i)[:10] != long.ids[:10]
    texts = [task.texts[i] for i in QUERIES] if keywords else None
    queries = task.queries[list(QUERIES)]
    batch_long = store.deep_memory.search_ids(queries, K_LONG, deep_memory=True, texts=texts)
    for k in (10, LEXICAL_DEPTH, LEXICAL_DEPTH + 1):
        batch = store.deep_memory.search_ids(queries, k, deep_memory=True, texts=texts)
        assert batch == [row[:k] for row in batch_long], f"{kind}: batched top {k}"
    if keywords and kind != "gate":  # the old rule (re-score the top max(k, 50)) gave other top 10s here
        assert moved > 0, "no query would tell the two rules apart; the check is too weak"


def _rescored_whole_list(model: AdapterMemoryModel, store, task: KeywordTask, i: int) -> list[str]:
    """The old rule's top K_LONG: the merged (dense) top K_LONG re-scored as a whole."""
    from llama_index_deepmemory.deep_memory.ranking import rank

    queries = store.prepare_queries(task.queries[i : i + 1])
    dense = rank(store, queries, model, K_LONG)[1][0]
    scores = rank(store, queries, model, K_LONG)[0][0]
    plan = model.keyword_plans(queries)[0]
    if plan is None:
        return dense
    fused = plan.rescore(task.texts[i], plan.index.rows_of(dense), scores)
    return [dense[j] for j in np.argsort(-fused, kind="stable")]
