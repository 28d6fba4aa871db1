"""Deep Memory over Qdrant (``qdrant-client`` in its in-process modes, never a mock).

Plain results through the wrapper equal Qdrant's own; the same model ranks over Qdrant as over
the embedded FAISS store; training over Qdrant works; filters, deletes and model persistence pass
through, and a second process pointing at the same engine and model folder serves the same results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

pytest.importorskip("qdrant_client")
from llama_index.vector_stores.qdrant import QdrantVectorStore  # noqa: E402
from qdrant_client import QdrantClient  # noqa: E402

from llama_index_deepmemory.engine.ids import ID_KEY, engine_id  # noqa: E402
from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH  # noqa: E402
from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402
from llama_index_deepmemory.wrapped_store import WRAPPED_KEYWORD_DEPTH  # noqa: E402
from synthetic import N_TRAIN, OPTIONS, KeywordTask  # noqa: E402
from synthetic import hand_model  # noqa: E402
from wrapped_checks import (  # noqa: E402
    check_delete_nodes_like_simple, check_filters_like_simple, check_ids_cannot_impersonate, check_threads,
)

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
EVEN = MetadataFilters(filters=[MetadataFilter(key="parity", value=0)])
# fewer validation searches: in-process Qdrant copies every payload it returns, so each costs
QUICK = dict(OPTIONS, epochs=3, validation_folds=2, key_thresholds=(0.8,), key_weights=(0.4,),
             lexical_weights=(0.2, 0.5))


def qdrant_store(client: QdrantClient, task: KeywordTask, **kwargs) -> DeepMemoryVectorStore:
    store = DeepMemoryVectorStore(vector_store=QdrantVectorStore(client=client, collection_name="docs"), **kwargs)
    store.add(task.nodes(metadata=True))
    return store


def ask(store, q, k=10, text=None, filters=None, deep_memory=False):
    query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k, query_str=text, filters=filters)
    return store.query(query, deep_memory=deep_memory)


@pytest.fixture()
def pair(task):
    """The same nodes in the embedded store and in an in-memory Qdrant, with one hand-made model."""
    faiss_store = DeepMemoryVectorStore(keyword_depth=WRAPPED_KEYWORD_DEPTH)  # the wrapped head
    faiss_store.add(task.nodes(metadata=True))
    qdrant = qdrant_store(QdrantClient(":memory:"), task)
    model = hand_model(task, seed=1)
    for store in (faiss_store, qdrant):
        store.deep_memory.add_model("hand", model, activate=True)  # a hand-made model
    return faiss_store, qdrant


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
def test_plain_results_equal_qdrants_own(task, pair, filters) -> None:
    _, store = pair
    engine = store.vector_store
    for q in task.queries[:15]:
        ours = ask(store, q, k=7, filters=filters)
        theirs = engine.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=7, filters=filters))
        assert [engine_id(i) for i in ours.ids] == [n.node_id for n in theirs.nodes] or \
            ours.ids == [n.metadata[ID_KEY] for n in theirs.nodes]
        np.testing.assert_allclose(ours.similarities, theirs.similarities, rtol=1e-5, atol=1e-6)
        assert all(ID_KEY not in n.metadata for n in ours.nodes)  # the engine id travels hidden
        assert [n.text for n in ours.nodes] == [task.doc_texts[task.ids.index(i)] for i in ours.ids]


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_the_same_model_ranks_alike_over_qdrant_and_faiss(task, pair, filters, with_text) -> None:
    faiss_store, qdrant = pair
    for i, q in enumerate(task.queries[:40]):
        text = task.texts[i] if with_text else None
        over_faiss = ask(faiss_store, q, text=text, filters=filters, deep_memory=True)
        over_qdrant = ask(qdrant, q, text=text, filters=filters, deep_memory=True)
        assert over_qdrant.ids == over_faiss.ids, f"query {i}"
        np.testing.assert_allclose(over_qdrant.similarities, over_faiss.similarities, rtol=1e-4, atol=1e-5)
    # and the batched path evaluate uses
    batched = qdrant.deep_memory.search_ids(task.queries[:40], 10, deep_memory=True, texts=task.texts[:40])
    assert batched == faiss_store.deep_memory.search_ids(task.queries[:40], 10, deep_memory=True, texts=task.texts[:40])


@pytest.mark.parametrize("full_softmax_max_nodes", [200_000, 40], ids=["corpus-copied", "mined-through-qdrant"])
def test_training_over_qdrant_matches_training_over_faiss(task, full_softmax_max_nodes) -> None:
    """Same data, same seed: the model trained over Qdrant ranks the held-out queries as the one
    trained over FAISS, and lifts recall@10 over the plain store alike; also when the corpus is
    too large to copy (negatives mined and validation searched through Qdrant's batched search)."""
    results = {}
    options = dict(QUICK, full_softmax_max_nodes=full_softmax_max_nodes)
    for name, store in (("faiss", task.store()), ("qdrant", qdrant_store(QdrantClient(":memory:"), task))):
        store.keyword_depth = LEXICAL_DEPTH  # the model's own head over both (the task's dense ranks are random)
        job = store.deep_memory.train(task.texts[:N_TRAIN], task.relevance[:N_TRAIN],
                                      embedding=task.queries[:N_TRAIN], **options)
        status = store.deep_memory.status(job)
        evaluation = store.deep_memory.evaluate(task.texts[N_TRAIN:], task.relevance[N_TRAIN:],
                                                embedding=task.queries[N_TRAIN:], top_k=(1, 10))
        results[name] = (status["val_after"], evaluation)
    assert results["qdrant"][0] == pytest.approx(results["faiss"][0], abs=1e-6)
    assert results["qdrant"][1] == results["faiss"][1]
    evaluation = results["qdrant"][1]
    assert evaluation["with model"]["recall@10"] > evaluation["without model"]["recall@10"] + 0.2


def test_deletes_filters_and_get_nodes_pass_through(task, pair) -> None:
    _, store = pair
    assert len(store) == len(task.ids)
    store.delete_nodes(["node_0", "node_2"])
    assert len(store) == len(task.ids) - 2
    assert [n.node_id for n in store.get_nodes(["node_2", "node_1", "node_0"])] == ["node_1"]
    assert {n.node_id for n in store.get_nodes(filters=EVEN)} == {i for j, i in enumerate(task.ids) if j % 2 == 0} - {
        "node_0", "node_2"}
    hits = ask(store, task.queries[0], k=len(task.ids), deep_memory=True, text=task.texts[0])
    assert "node_0" not in hits.ids and "node_2" not in hits.ids and len(hits.ids) == len(task.ids) - 2
    store.delete_nodes(filters=EVEN)
    assert all(int(i.split("_")[1]) % 2 for i in ask(store, task.queries[1], k=100).ids)
    store.clear()
    assert len(store) == 0 and ask(store, task.queries[0]).ids == []


def test_empty_doc_ids_return_nothing_and_empty_node_ids_restrict_nothing(task, pair) -> None:
    _, store = pair
    q = task.queries[0]
    assert store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=3, doc_ids=[])).ids == []
    assert len(store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=3, node_ids=[])).ids) == 3
    only = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=3, node_ids=["node_4", "node_9"]),
                       deep_memory=True)
    assert set(only.ids) == {"node_4", "node_9"}


def test_models_persist_in_their_folder_and_a_second_process_serves_the_same(task, tmp_path) -> None:
    engine_dir, model_dir = tmp_path / "qdrant", tmp_path / "models"
    client = QdrantClient(path=str(engine_dir))
    store = qdrant_store(client, task, model_dir=model_dir)
    store.deep_memory.add_model("hand", hand_model(task, seed=2), activate=True)  # saved to model_dir
    active = store.deep_memory.get_model()
    assert active == "hand" and (model_dir / "catalog.json").is_file()
    expected = {
        "active": active,
        "ids": [ask(store, q, text=t, deep_memory=True).ids for q, t in zip(task.queries[N_TRAIN:], task.texts[N_TRAIN:])],
    }
    client.close()  # local Qdrant allows one client per folder
    np.save(tmp_path / "queries.npy", task.queries[N_TRAIN:])
    (tmp_path / "texts.json").write_text(json.dumps(task.texts[N_TRAIN:]))
    script = textwrap.dedent(f"""
        import json, numpy as np
        from qdrant_client import QdrantClient
        from llama_index.core.vector_stores.types import VectorStoreQuery
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from llama_index_deepmemory import DeepMemoryVectorStore
        engine = QdrantVectorStore(client=QdrantClient(path={str(engine_dir)!r}), collection_name="docs")
        store = DeepMemoryVectorStore(vector_store=engine, model_dir={str(model_dir)!r})
        texts = json.load(open({str(tmp_path / 'texts.json')!r}))
        ids = [store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10, query_str=t),
                           deep_memory=True).ids for q, t in zip(np.load({str(tmp_path / 'queries.npy')!r}), texts)]
        print(json.dumps({{"active": store.deep_memory.get_model(), "ids": ids}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_bad_wrapping_is_refused_clearly(tmp_path) -> None:
    from llama_index.core.vector_stores import SimpleVectorStore

    with pytest.raises(ValueError, match="keeps no node text"):
        DeepMemoryVectorStore(vector_store=SimpleVectorStore())
    with pytest.raises(TypeError, match="LlamaIndex vector store"):
        DeepMemoryVectorStore(vector_store=object())
    engine = QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="x")
    with pytest.raises(ValueError, match="index_factory"):
        DeepMemoryVectorStore(vector_store=engine, index_factory="HNSW32")
    with pytest.raises(ValueError, match="model_dir is for stores wrapping"):
        DeepMemoryVectorStore(model_dir=tmp_path)
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no Deep Memory models"):
        DeepMemoryVectorStore(vector_store=engine, model_dir=tmp_path)
    store = DeepMemoryVectorStore(vector_store=engine)
    with pytest.raises(ValueError, match="no active Deep Memory model|train"):
        store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=1), deep_memory=True)


def test_ids_cannot_replace_hide_or_impersonate_a_node(task, pair) -> None:
    check_ids_cannot_impersonate(task, pair[1])


def test_queries_under_threads_while_adding_and_deleting(task, pair) -> None:
    check_threads(task, pair[1], readers=3)  # in-process Qdrant alone raises 'operands could not be broadcast'


def test_delete_nodes_removes_only_the_named_nodes_that_pass_the_filters(task) -> None:
    """The store's delete_nodes puts the ids among an OR group's conditions: every match went."""
    check_delete_nodes_like_simple(task, DeepMemoryVectorStore(
        vector_store=QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="docs")))


def test_filters_select_what_simple_vector_store_selects(task) -> None:
    """Qdrant's MatchExcept (NE, NIN) skipped points missing the key; SimpleVectorStore keeps them."""
    check_filters_like_simple(task, DeepMemoryVectorStore(
        vector_store=QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="docs")))


def test_persisting_to_a_model_dir_never_drops_models_another_store_recorded_there(task, tmp_path: Path) -> None:
    from llama_index_deepmemory.persistence import StaleStoreError

    model_dir = tmp_path / "models"
    first = qdrant_store(QdrantClient(":memory:"), task)
    first.deep_memory.add_model("first", hand_model(task, seed=1), activate=True)
    first.persist(str(model_dir))
    bound = qdrant_store(QdrantClient(":memory:"), task, model_dir=model_dir)
    bound.deep_memory.add_model("second", hand_model(task, seed=2), activate=True)  # recorded in model_dir
    with pytest.raises(StaleStoreError, match=r"keeps Deep Memory model\(s\) \['second'\] this store does not have.*"
                                              r"overwrite=True"):
        first.persist(str(model_dir))
    fresh = qdrant_store(QdrantClient(":memory:"), task, model_dir=model_dir).deep_memory
    assert [(m["name"], m["active"]) for m in fresh.list_models()] == [("first", False), ("second", True)]
    # a model replaced there under a name this store also has is never reverted either
    bound.deep_memory.delete_model("first")
    bound.deep_memory.add_model("first", hand_model(task, seed=3))
    first.deep_memory.add_model("second", hand_model(task, seed=4))
    with pytest.raises(StaleStoreError, match=r"was changed since this store last persisted there.*overwrite=True"):
        first.persist(str(model_dir))
    replaced = qdrant_store(QdrantClient(":memory:"), task, model_dir=model_dir).deep_memory.kept_model("first")
    assert np.array_equal(replaced.to_state()[1]["weight"], hand_model(task, seed=3).to_state()[1]["weight"])
    first.persist(str(model_dir), overwrite=True)  # asked for: replaced
    assert bound.deep_memory.refresh() == "first"
    assert sorted(m["name"] for m in bound.deep_memory.list_models()) == ["first", "second"]
    kept = bound.deep_memory.kept_model("first").to_state()[1]["weight"]
    assert np.array_equal(kept, hand_model(task, seed=1).to_state()[1]["weight"])
