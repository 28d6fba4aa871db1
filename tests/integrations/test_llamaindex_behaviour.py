"""LlamaIndex behaviour a new user runs into, checked against ``SimpleVectorStore`` where it has an
answer: empty ``doc_ids``, indexes holding image or index nodes, MMR, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import ImageNode, IndexNode, TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

from llama_index_deepmemory.store import DeepMemoryVectorStore
from hash_embedding import HashEmbedding
from synthetic import normalise


def mixed_nodes() -> list:
    return [
        TextNode(id_="t1", text="cats purr softly"),
        TextNode(id_="t2", text="dogs bark loudly"),
        TextNode(id_="t3", text="birds sing early"),
        ImageNode(id_="img", text="a photo of cats", image_url="file:///cat.png"),
        IndexNode(id_="idx", text="summary of pets", index_id="pets"),
    ]


def test_empty_doc_ids_return_nothing_while_empty_node_ids_restrict_nothing() -> None:
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"n{i}", text=str(i), embedding=[1.0, float(i)]) for i in range(4)])
    query = VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=3)
    query.doc_ids = []
    assert store.query(query).ids == []
    query.doc_ids, query.node_ids = None, []
    assert len(store.query(query).ids) == 3


def test_an_index_with_image_and_index_nodes_retrieves_text_nodes_too() -> None:
    """LlamaIndex lists an index's image/index nodes as ``node_ids`` for text-keeping stores; that
    must not hide the text nodes (SimpleVectorStore returns all of them)."""
    embed = HashEmbedding()
    results = {}
    for name, store in (("ours", DeepMemoryVectorStore()), ("simple", SimpleVectorStore())):
        index = VectorStoreIndex(mixed_nodes(), storage_context=StorageContext.from_defaults(vector_store=store),
                                 embed_model=embed)
        results[name] = sorted(n.node.node_id for n in index.as_retriever(similarity_top_k=5).retrieve("cats"))
    assert results["ours"] == results["simple"] == ["idx", "img", "t1", "t2", "t3"]
    # an explicit restriction that names text nodes still restricts
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=n.node_id, text=n.text, embedding=embed.get_text_embedding(n.text)) for n in mixed_nodes()[:3]])
    query = VectorStoreQuery(query_embedding=embed.get_query_embedding("cats"), similarity_top_k=5, node_ids=["t2", "t3"])
    assert sorted(store.query(query).ids) == ["t2", "t3"]


@pytest.mark.parametrize("threshold", [None, 0.2, 0.8])
def test_mmr_equals_simple_vector_store(threshold) -> None:
    rng = np.random.default_rng(7)
    vectors = normalise(rng.normal(size=(40, 12)))
    vectors[1] = normalise(vectors[0:1] + 0.05 * rng.normal(size=(1, 12)))[0]  # a near duplicate
    nodes = [TextNode(id_=f"n{i}", text=f"t{i}", embedding=v.tolist()) for i, v in enumerate(vectors)]
    ours, simple = DeepMemoryVectorStore(), SimpleVectorStore()
    ours.add(nodes)
    simple.add(nodes)
    kwargs = {} if threshold is None else {"mmr_threshold": threshold}
    for q in normalise(rng.normal(size=(8, 12))):
        query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=6, mode=VectorStoreQueryMode.MMR)
        expected = simple.query(query, **kwargs)
        got = ours.query(query, mmr_prefetch_k=40, **kwargs)
        assert got.ids == expected.ids
        np.testing.assert_allclose(got.similarities, expected.similarities, rtol=1e-5, atol=1e-5)


def test_mmr_with_deep_memory_reorders_the_deep_memory_ranking() -> None:
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

    rng = np.random.default_rng(3)
    vectors = normalise(rng.normal(size=(30, 8)))
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=v.tolist()) for i, v in enumerate(vectors)])
    q = vectors[9]
    # memory scores n5 twice as high as the query's own vector: it leads the Deep Memory ranking
    store.deep_memory.add_model("m", AdapterMemoryModel(8, memory_ids=["n5"], memory_vectors=2 * q[None, :]),
                                activate=True)
    plain = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=30), deep_memory=True)
    assert plain.ids[:2] == ["n5", "n9"]
    mmr = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, mode="mmr"),
                      deep_memory=True, mmr_threshold=1.0)
    assert mmr.ids == plain.ids[:5]  # threshold 1: relevance alone, i.e. the Deep Memory order
    diverse = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, mode="mmr"),
                          deep_memory=True)
    assert diverse.ids[0] == "n5" and diverse.ids != plain.ids[:5]
    with pytest.raises(ValueError, match="mmr_threshold"):
        store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, mode="mmr"), mmr_threshold=2)


def test_pickling_is_refused_with_the_way_to_save() -> None:
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_="a", text="x", embedding=[1.0, 0.0])])
    with pytest.raises(TypeError, match="persist"):
        pickle.dumps(store)
    assert store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=1)).ids == ["a"]


def test_text_resource_fields_survive_add_get_and_persist(tmp_path) -> None:
    """A Document's / Node's ``text_resource`` keeps its path, url and mimetype (not just its text)."""
    from llama_index.core.schema import Document, MediaResource, Node

    vector = [1.0, 0.5, 0.25, 0.1]
    nodes = [
        Document(id_="d", text_resource=MediaResource(text="hello", path="/a/b.txt", mimetype="text/plain",
                                                      url="http://example.com/b.txt"), embedding=vector),
        Node(id_="n", text_resource=MediaResource(text="hi", mimetype="text/html"),
             image_resource=MediaResource(url="http://example.com/i.png"), metadata={"k": 1}, embedding=vector),
        Node(id_="e", text_resource=MediaResource(text="", mimetype="text/plain"), embedding=vector),
        Document(id_="p", text="plain", embedding=vector),
    ]
    store = DeepMemoryVectorStore()
    store.add(nodes)
    store.persist(str(tmp_path / "store"))
    reloaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), load_recorded_embedding=False)
    for source in (store, reloaded):
        got = {node.node_id: node for node in source.get_nodes([n.node_id for n in nodes])}
        for node in nodes:
            assert type(got[node.node_id]) is type(node)
            assert got[node.node_id].model_dump(exclude={"embedding"}) == node.model_dump(exclude={"embedding"})
            assert got[node.node_id].hash == node.hash


def test_index_node_obj_comes_back_as_the_node_it_was(tmp_path) -> None:
    """An IndexNode's ``obj`` node is rebuilt as LlamaIndex's own stores do (``IndexNode.from_dict``), not
    left a dict."""
    inner = TextNode(id_="inner", text="the referenced chunk", metadata={"page": 2})
    node = IndexNode(id_="x", text="summary", index_id="inner", obj=inner, embedding=[1.0, 0.5, 0.25, 0.1])
    store = DeepMemoryVectorStore()
    store.add([node])
    store.persist(str(tmp_path / "store"))
    reloaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), load_recorded_embedding=False)
    for source in (store, reloaded):
        (got,) = source.get_nodes(["x"])
        assert isinstance(got.obj, TextNode) and got.obj == inner
        assert got.model_dump(exclude={"embedding"}) == node.model_dump(exclude={"embedding"})
