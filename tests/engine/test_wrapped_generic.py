"""Deep Memory over any LlamaIndex store that keeps text: a minimal one written here (brute-force
NumPy search, equality filters, ``get_nodes`` by id only: it cannot list its nodes).

Plain results through the wrapper equal the store's own; the same model ranks over it as over the
embedded FAISS store; keyword statistics come from the nodes added through the wrapper (the
``iter_texts`` fallback), and a store without ``get_nodes`` is refused at construction.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from llama_index.core.vector_stores.types import BasePydanticVectorStore

from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.training import _build_lexical
from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import N_TRAIN, OPTIONS, hand_model
from tiny_store import TinyTextStore
from wrapped_checks import (
    EVEN, ask, check_ids_cannot_impersonate, check_plain_equals_engine, check_ranks_like_faiss, check_restrictions,
    faiss_twin, nodes_with_docs, with_model,
)


QUICK = dict(OPTIONS, epochs=2, validation_folds=2, key_thresholds=(0.8,), key_weights=(0.4,), lexical_weights=(0.5,))


@pytest.fixture()
def pair(task):
    faiss_store = faiss_twin(task)
    tiny = DeepMemoryVectorStore(vector_store=TinyTextStore())
    tiny.add(nodes_with_docs(task))
    with_model(task, faiss_store, tiny)
    return faiss_store, tiny


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
def test_plain_results_equal_the_stores_own(task, pair, filters) -> None:
    check_plain_equals_engine(task, pair[1], filters)


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_the_same_model_ranks_alike_over_the_store_and_faiss(task, pair, filters, with_text) -> None:
    check_ranks_like_faiss(task, *pair, filters, with_text, n_queries=25)


def test_node_and_doc_restrictions(task, pair) -> None:
    check_restrictions(task, *pair)


def test_keyword_statistics_come_from_the_nodes_added_through_the_wrapper(task, pair, caplog) -> None:
    faiss_store, tiny = pair
    with caplog.at_level(logging.WARNING):
        listed = [(i, t) for ids, texts in tiny.iter_texts(batch_size=32) for i, t in zip(ids, texts)]
    assert listed == list(zip(task.ids, task.doc_texts))
    assert "cannot list its nodes" in caplog.text and f"the {len(task.ids)} nodes added" in caplog.text
    built = _build_lexical(tiny)  # what training builds from the store's texts
    expected = LexicalIndex(task.ids, task.doc_texts)
    (meta, arrays), (want_meta, want_arrays) = built.to_state(), expected.to_state()
    assert meta == want_meta and arrays.keys() == want_arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], want_arrays[key])
    # a model keyed with those statistics ranks over the store as the FAISS-keyed one over FAISS
    model = hand_model(task, seed=3)
    over_faiss = [ask(faiss_store, q, text=t, deep_memory=True).ids for q, t in zip(task.queries[:20], task.texts[:20])]
    tiny.deep_memory.add_model("keyed", hand_model(task, seed=3).replace(lexical=built), activate=True)
    faiss_store.deep_memory.add_model("keyed", model, activate=True)
    assert [ask(tiny, q, text=t, deep_memory=True).ids for q, t in zip(task.queries[:20], task.texts[:20])] == \
        [ask(faiss_store, q, text=t, deep_memory=True).ids for q, t in zip(task.queries[:20], task.texts[:20])]
    assert over_faiss != [ask(faiss_store, q, text=t, deep_memory=True).ids
                          for q, t in zip(task.queries[:20], task.texts[:20])]  # another model: the check bites


def test_deletes_pass_through_and_deleted_nodes_leave_the_keyword_statistics(task, pair) -> None:
    _, tiny = pair
    tiny.delete_nodes(["node_0", "node_2"])
    assert len(tiny) == len(task.ids) - 2  # counted from the nodes added through the wrapper
    assert [n.node_id for n in tiny.get_nodes(["node_2", "node_1", "node_0"])] == ["node_1"]
    hits = ask(tiny, task.queries[0], k=len(task.ids), deep_memory=True, text=task.texts[0])
    assert "node_0" not in hits.ids and "node_2" not in hits.ids and len(hits.ids) == len(task.ids) - 2
    assert "node_0" not in {i for ids, _ in tiny.iter_texts() for i in ids}
    tiny.delete("doc_1")
    assert not set(ask(tiny, task.queries[1], k=100, deep_memory=True, text=task.texts[1]).ids) & {
        f"node_{j}" for j in range(10, 20)}
    tiny.delete_nodes(filters=EVEN)
    left = ask(tiny, task.queries[1], k=100).ids
    assert left and all(int(i.split("_")[1]) % 2 for i in left)
    tiny.clear()
    assert len(tiny) == 0 and ask(tiny, task.queries[0]).ids == []


def test_training_over_a_store_that_cannot_list_matches_training_over_faiss(task) -> None:
    """Training reads the nodes added through the wrapper back by id (the store cannot list them):
    same data, same seed, the same validation and held-out evaluation as training over FAISS."""
    results = {}
    # the model's own keyword head (50) in both: on this task dense ranks are random, so only a wide
    # head lifts keyword matches (the wrapped default is a smaller head, see test_keyword_depth.py)
    faiss_store = faiss_twin(task)
    faiss_store.keyword_depth = LEXICAL_DEPTH
    tiny = DeepMemoryVectorStore(vector_store=TinyTextStore(), keyword_depth=LEXICAL_DEPTH)
    for name, store in (("faiss", faiss_store), ("tiny", tiny)):
        if name == "tiny":
            store.add(nodes_with_docs(task))
        job = store.deep_memory.train(task.texts[:N_TRAIN], task.relevance[:N_TRAIN],
                                      embedding=task.queries[:N_TRAIN], **QUICK)
        evaluation = store.deep_memory.evaluate(task.texts[N_TRAIN:], task.relevance[N_TRAIN:],
                                                embedding=task.queries[N_TRAIN:], top_k=(1, 10))
        results[name] = (store.deep_memory.status(job)["val_after"], evaluation)
    assert results["tiny"][0] == pytest.approx(results["faiss"][0], abs=1e-6)
    assert results["tiny"][1] == results["faiss"][1]
    assert results["tiny"][1]["with model"]["recall@10"] > results["tiny"][1]["without model"]["recall@10"] + 0.2


def test_a_store_without_get_nodes_is_refused_naming_it() -> None:
    class NoGetNodes(TinyTextStore):
        get_nodes = BasePydanticVectorStore.get_nodes

    with pytest.raises(ValueError, match=r"NoGetNodes does not implement get_nodes\(node_ids=\.\.\.\)"):
        DeepMemoryVectorStore(vector_store=NoGetNodes())


def test_ids_cannot_replace_hide_or_impersonate_a_node(task, pair) -> None:
    check_ids_cannot_impersonate(task, pair[1])


def test_the_add_guard_reads_owners_a_batch_at_a_time(task, pair, monkeypatch) -> None:
    """Stores bind each id of a read (PostgreSQL: 65,535 parameters a statement): an add's owner
    check reads ``OWNER_BATCH`` ids at a time and still catches every impersonation."""
    from llama_index_deepmemory.engine import generic

    monkeypatch.setattr(generic, "OWNER_BATCH", 3)
    check_ids_cannot_impersonate(task, pair[1])


def test_a_node_delete_nodes_kept_stays_listed(task, pair) -> None:
    """The store cannot list: the wrapper lists the nodes added through it, and forgot a node named
    to delete_nodes that the filters kept (still stored and found, yet gone from the listing, the
    count and the keyword statistics)."""
    tiny = pair[1]
    n = len(task.ids)
    tiny.delete_nodes(["node_1", "node_2"], filters=EVEN)  # node_1 is odd: kept
    assert len(tiny) == n - 1
    listed = {node.node_id for node in tiny.get_nodes()}
    assert "node_1" in listed and "node_2" not in listed and len(listed) == n - 1
    assert "node_1" in {i for ids, _ in tiny._backend.iter_texts() for i in ids}
    assert ask(tiny, task.docs[1], k=1).ids == ["node_1"]


def test_a_document_delete_leaves_the_listing(task, pair) -> None:
    """The store cannot list: the nodes of a deleted document stayed in the count and the keyword
    statistics (the nodes added through the wrapper, never told of the delete)."""
    tiny = pair[1]
    tiny.delete("doc_0")  # node_0 .. node_9
    gone = {f"node_{j}" for j in range(10)}
    assert len(tiny) == len(task.ids) - 10
    assert not gone & {node.node_id for node in tiny.get_nodes()}
    assert not gone & {i for ids, _ in tiny._backend.iter_texts() for i in ids}
