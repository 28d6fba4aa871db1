"""End to end: VectorStoreIndex + retriever + query engine over the store, with offline MiniLM."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.llms import MockLLM
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel

TOPICS = {
    "python": "Python lists are mutable sequences; tuples are immutable. Use append to add an item.",
    "cooking": "To bake bread, mix flour, water, yeast and salt, knead the dough and let it rise.",
    "astronomy": "Jupiter is the largest planet in the solar system and has dozens of moons.",
    "football": "A football match has two halves of forty-five minutes and eleven players per side.",
    "music": "A violin has four strings tuned in fifths: G, D, A and E.",
}


@pytest.fixture(scope="module")
def documents():
    return [
        Document(text=text, id_=f"doc-{topic}", metadata={"topic": topic, "length": len(text)})
        for topic, text in TOPICS.items()
    ]


def test_index_retriever_query_engine(minilm, documents, tmp_path):
    store = DeepMemoryVectorStore()
    storage = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=minilm)
    assert len(store) == len(documents)
    assert len(storage.docstore.docs) == 0  # stores_text: no docstore copy needed

    retriever = index.as_retriever(similarity_top_k=2)
    hits = retriever.retrieve("How many moons does the biggest planet have?")
    assert hits[0].node.metadata["topic"] == "astronomy"
    assert hits[0].node.ref_doc_id == "doc-astronomy"
    assert "Jupiter" in hits[0].node.get_content()
    # scores are the cosine similarities of MiniLM embeddings
    q = np.asarray(minilm.get_query_embedding("How many moons does the biggest planet have?"))
    v = np.asarray(minilm.get_text_embedding(hits[0].node.get_content(metadata_mode="embed")))
    assert hits[0].score == pytest.approx(float(q @ v / np.linalg.norm(q) / np.linalg.norm(v)), abs=1e-4)

    only_music = MetadataFilters(filters=[MetadataFilter(key="topic", value="music")])
    hits = index.as_retriever(similarity_top_k=3, filters=only_music).retrieve("planets and moons")
    assert [h.node.metadata["topic"] for h in hits] == ["music"]

    engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=1)
    response = engine.query("What do I need to bake bread?")
    assert response.source_nodes[0].node.metadata["topic"] == "cooking"
    assert isinstance(response.response, str) and response.response

    with pytest.raises(ValueError, match="no active Deep Memory model"):
        index.as_retriever(vector_store_kwargs={"deep_memory": True}).retrieve("bread")
    with pytest.raises(TypeError, match="deep_memroy"):
        index.as_retriever(vector_store_kwargs={"deep_memroy": True}).retrieve("bread")

    store.deep_memory.add_model("id", DeepMemoryModel(384), activate=True)  # identity model
    with_dm = index.as_retriever(similarity_top_k=3, vector_store_kwargs={"deep_memory": True}).retrieve("violin strings")
    plain = index.as_retriever(similarity_top_k=3).retrieve("violin strings")
    assert [h.node.node_id for h in with_dm] == [h.node.node_id for h in plain]

    index.delete_ref_doc("doc-music")
    hits = index.as_retriever(similarity_top_k=5).retrieve("violin strings")
    assert "music" not in {h.node.metadata["topic"] for h in hits} and len(hits) == 4

    persist_dir = str(tmp_path / "storage")
    storage.persist(persist_dir=persist_dir)
    loaded_store = DeepMemoryVectorStore.from_persist_dir(persist_dir, embed_model=minilm)
    assert loaded_store.embed_model is minilm
    loaded_ctx = StorageContext.from_defaults(persist_dir=persist_dir, vector_store=loaded_store)
    loaded = load_index_from_storage(loaded_ctx, embed_model=minilm)
    before = [(h.node.node_id, round(h.score, 5)) for h in index.as_retriever(similarity_top_k=3).retrieve("football")]
    after = [(h.node.node_id, round(h.score, 5)) for h in loaded.as_retriever(similarity_top_k=3).retrieve("football")]
    assert before == after


def test_async_retrieval(minilm, documents):
    async def run():
        store = DeepMemoryVectorStore()
        index = VectorStoreIndex(
            nodes=[], storage_context=StorageContext.from_defaults(vector_store=store), embed_model=minilm
        )
        for document in documents:
            await index.ainsert(document)
        assert len(store) == len(documents)
        return await index.as_retriever(similarity_top_k=1).aretrieve("strings of a violin")

    hits = asyncio.run(run())
    assert hits[0].node.metadata["topic"] == "music"
