"""The LangChain face over a store wrapping Qdrant (in-process ``QdrantClient(":memory:")``, never a
mock): LangChain's standard vector store suite passes there too, so the face only translates."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("langchain_tests")
pytest.importorskip("pytest_asyncio")
pytest.importorskip("qdrant_client")
pytest.importorskip("llama_index.vector_stores.qdrant")

from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402
from llama_index.vector_stores.qdrant import QdrantVectorStore  # noqa: E402
from qdrant_client import QdrantClient  # noqa: E402

from llama_index_deepmemory.langchain import DeepMemoryLangChainStore  # noqa: E402
from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402

for _name in dir(VectorStoreIntegrationTests):  # see test_langchain.py: mark the suite's coroutines
    if _name.startswith("test_") and inspect.iscoroutinefunction(getattr(VectorStoreIntegrationTests, _name)):
        pytest.mark.asyncio(getattr(VectorStoreIntegrationTests, _name))

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")


def qdrant_face(embedding) -> DeepMemoryLangChainStore:
    engine = QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="langchain")
    return DeepMemoryLangChainStore(embedding=embedding, vectorstore=DeepMemoryVectorStore(vector_store=engine))


def test_empty_wrapped_store_answers_like_the_embedded_one() -> None:
    db = qdrant_face(VectorStoreIntegrationTests.get_embeddings())
    assert db.get_by_ids(["1"]) == []
    db.delete(["1"])
    assert db.similarity_search("foo", k=1) == []


class TestStandardVectorStoreOverQdrant(VectorStoreIntegrationTests):
    """``langchain-tests``' VectorStoreIntegrationTests against a Qdrant-backed DeepMemoryVectorStore."""

    @pytest.fixture
    def vectorstore(self) -> DeepMemoryLangChainStore:
        return qdrant_face(self.get_embeddings())

    def test_filters_and_mmr_pass_through(self, vectorstore: DeepMemoryLangChainStore) -> None:
        texts = [f"text {i}" for i in range(12)]
        vectorstore.add_texts(texts, [{"i": i, "even": i % 2 == 0} for i in range(12)], ids=None)
        got = vectorstore.similarity_search("text 4", k=12, filter={"$and": [{"i": {"$gte": 3}}, {"i": {"$lt": 9}}]})
        assert sorted(d.metadata["i"] for d in got) == [3, 4, 5, 6, 7, 8]
        assert vectorstore.similarity_search("text 4", k=1)[0].page_content == "text 4"
        assert len(vectorstore.max_marginal_relevance_search("text 4", k=3, fetch_k=8)) == 3
