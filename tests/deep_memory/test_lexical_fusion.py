"""Deep Memory's keyword (BM25) re-scoring, end to end on a real DeepMemoryVectorStore.

Seeded task: every document carries a unique code word; each query names its document's code
word while its vector is random, so dense search (and memory of training queries) cannot find
documents never seen in training, and keyword re-scoring can. Rankings are checked against a
NumPy reference built from the model's own parts (transform, overrides, BM25 of the top 50).
"""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH
from llama_index_deepmemory.deep_memory import training
from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import DIM, N_DOCS, N_TRAIN, OPTIONS, KeywordTask, brute_force_scores, normalise, reference_keyword_weights

@pytest.fixture(scope="module")
def task() -> KeywordTask:
    return KeywordTask()


@pytest.fixture(scope="module")
def trained(task: KeywordTask):
    store = task.store()
    job = store.deep_memory.train(
        task.texts[:N_TRAIN], task.relevance[:N_TRAIN], embedding=task.queries[:N_TRAIN], **OPTIONS
    )
    return store, store.deep_memory.status(job)


@pytest.fixture()
def trained_copy(task: KeywordTask, trained):
    """A new store holding the trained Deep Memory state (its own model objects: tests may change them)."""
    store = task.store()
    store.deep_memory.load_state(*trained[0].deep_memory.to_state())
    return store


def reference_ids(task: KeywordTask, model, q: np.ndarray, text: str | None, k: int, allowed=None) -> list[str]:
    """Dense Deep Memory scores of every node (or of those ``allowed``), then (with text) BM25
    re-scoring of the top 50 with the query's keyword weight, the rest after them in dense order."""
    scores = brute_force_scores(q[None, :], task.docs, task.ids, model)[0]
    order = np.argsort(-scores, kind="stable")
    if allowed is not None:
        order = order[np.isin(np.array(task.ids)[order], allowed)]
    if text is None:
        return [task.ids[j] for j in order[:k]]
    top, tail = order[:LEXICAL_DEPTH], order[LEXICAL_DEPTH:k]  # the store re-scores the top 50, whatever k
    keyword = model.lexical.scores(text, [task.ids[j] for j in top])
    weight = reference_keyword_weights(model, q[None, :])[0]
    fused = scores[top] + (weight * keyword / keyword.max() if keyword.max() > 0 else 0)
    return ([task.ids[top[j]] for j in np.argsort(-fused, kind="stable")] + [task.ids[j] for j in tail])[:k]


def query_ids(store, q, k, text=None):
    query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k, query_str=text)
    return store.query(query, deep_memory=True).ids


def test_keyword_rescoring_is_chosen_and_lifts_unseen_documents(task: KeywordTask, trained) -> None:
    store, record = trained
    assert record["info"]["lexical_weight"] > 0, record
    model = store.deep_memory.active_model()
    assert model is not None and model.rerank_depth == LEXICAL_DEPTH
    result = store.deep_memory.evaluate(
        task.texts[N_TRAIN:], task.relevance[N_TRAIN:], top_k=(1, 10), embedding=task.queries[N_TRAIN:]
    )
    # a random query vector ranks its document first 1 time in 80; its code word does it whenever
    # the document is among the 50 dense candidates (about 50/80 of the time)
    assert result["without model"]["recall@1"] < 0.1
    assert result["with model"]["recall@1"] > 0.4


@pytest.mark.parametrize("k", [1, 5, 60])
def test_store_query_matches_the_reference(task: KeywordTask, trained, k: int) -> None:
    store, _ = trained
    model = store.deep_memory.active_model()
    for i in range(N_TRAIN, N_TRAIN + 12):
        q, text = task.queries[i], task.texts[i]
        assert query_ids(store, q, k, text) == reference_ids(task, model, q, text, k)
        # without query_str the model is applied without keywords
        assert query_ids(store, q, k) == reference_ids(task, model, q, None, k)


def test_keyword_queries_rank_in_one_call_from_the_second_at_an_unchanged_store(
    task: KeywordTask, trained_copy
) -> None:
    """From the second keyword query at an unchanged store the embedded store hands out its hits'
    keyword rows (one compiled call ranks them), with the results of the generic steps; a write
    that makes the index forget a node starts over."""
    store = trained_copy
    backend, model = store._backend, store.deep_memory.active_model()
    served, search_rows = [], backend._search_rows

    def recording(*args):
        hits = search_rows(*args)
        served.append(hits is not None)
        return hits

    backend._search_rows = recording

    def check(i: int) -> None:  # the store itself offers no search_rows: rank() takes its steps
        q, text = task.queries[i], task.texts[i]
        got = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, query_str=text),
                          deep_memory=True)
        scores, ids = rank(backend, backend.prepare_queries(q), model, 5, texts=[text])
        assert got.ids == ids[0]
        np.testing.assert_allclose(got.similarities, scores[0], rtol=1e-6)

    for i in range(N_TRAIN, N_TRAIN + 4):
        check(i)
    assert served == [False, True, True, True]
    allowed = task.ids[::2]  # restricted to half the nodes: 40 hits, fewer than asked
    q, text = task.queries[N_TRAIN], task.texts[N_TRAIN]
    got = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, query_str=text,
                                       node_ids=allowed), deep_memory=True)
    assert served[-1] and got.ids == reference_ids(task, model, q, text, 5, allowed)
    used = model.lexical.n_used
    j = next(i for i, node in enumerate(task.ids) if node not in model.memory_ids)  # a plain node
    store.add([TextNode(id_=task.ids[j], text=task.doc_texts[j], embedding=task.docs[j].tolist())])
    assert model.lexical.n_used == used - 1  # re-added: scored from its current text from now on
    for i in range(N_TRAIN + 4, N_TRAIN + 7):
        check(i)
    assert served[5:] == [False, True, True]


def test_a_top_candidate_missing_from_the_keyword_index_costs_no_second_scan(task: KeywordTask, trained_copy) -> None:
    """A node added after training reaches the top: the one-call path hands its search to the
    generic steps, which score the node from its text without scanning again."""
    store = trained_copy
    backend, model = store._backend, store.deep_memory.active_model()
    q, text = task.queries[N_TRAIN], task.texts[N_TRAIN]
    store.add([TextNode(id_="late", text=text, embedding=q.tolist())])
    scans, search = [], backend._search
    backend._search = lambda *args: scans.append(1) or search(*args)
    for _ in range(3):
        assert query_ids(store, q, 5, text)[0] == "late"
    assert backend._slot_rows[3] is not None and len(scans) == 3  # the slot rows were used, one scan a query
    assert query_ids(store, q, 5, text) == rank(backend, backend.prepare_queries(q), model, 5, texts=[text])[1][0]


def test_texts_are_read_only_for_candidates_the_keyword_index_lacks(task: KeywordTask, trained_copy) -> None:
    """Indexed candidates are scored from the keyword index alone; a node added after training
    is read once, by id, and scored from its text."""
    store = trained_copy
    model = store.deep_memory.active_model()
    j = next(i for i, node in enumerate(task.ids) if node not in model.memory_ids)
    q, text = task.docs[j], f"which report mentions code{j}x"
    backend, asked = store._backend, []
    read = backend._texts_of

    def recording(node_ids):
        asked.append(list(node_ids))
        return read(node_ids)

    backend._texts_of = recording
    expected = reference_ids(task, model, q, text, 10)
    for _ in range(3):  # by id, then from the store's per-slot cache of keyword rows
        assert query_ids(store, q, 10, text) == expected and asked == []
    store.add([TextNode(id_="late", text=task.doc_texts[j], embedding=q.tolist())])
    ids = query_ids(store, q, 10, text)
    assert asked == [["late"]] and set(ids[:2]) == {"late", task.ids[j]}
    assert query_ids(store, q, 10, text) == query_ids(store, q, 10, text) == ids
    assert asked == [["late"]] * 3


def test_batched_search_with_texts_equals_store_queries(task: KeywordTask, trained) -> None:
    store, _ = trained
    vectors, texts = task.queries[N_TRAIN:], task.texts[N_TRAIN:]
    expected = [query_ids(store, q, 10, t) for q, t in zip(vectors, texts)]
    assert store.deep_memory.search_ids(vectors, 10, deep_memory=True, texts=texts) == expected
    assert store.deep_memory.search_ids(vectors, 10, deep_memory=True, texts=texts, batch_size=7) == expected
    with pytest.raises(ValueError, match="query texts for"):
        store.deep_memory.search_ids(vectors, 10, deep_memory=True, texts=texts[:-1])


def test_keyword_index_survives_persist_and_load(task: KeywordTask, trained, tmp_path) -> None:
    store, _ = trained
    store.persist(str(tmp_path / "store"))
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"))
    model = loaded.deep_memory.active_model()
    assert model.lexical is not None and model.lexical_weight == store.deep_memory.active_model().lexical_weight
    for i in range(N_TRAIN, N_TRAIN + 5):
        q, text = task.queries[i], task.texts[i]
        assert query_ids(loaded, q, 5, text) == query_ids(store, q, 5, text)


@pytest.mark.parametrize("option", [{"lexical": False}, {"lexical_max_nodes": N_DOCS - 1}])
def test_dense_models_without_keywords_when_asked_or_too_large(task: KeywordTask, option: dict) -> None:
    store = task.store()
    job = store.deep_memory.train(
        task.texts[:N_TRAIN], task.relevance[:N_TRAIN], embedding=task.queries[:N_TRAIN], **option, **OPTIONS
    )
    assert store.deep_memory.status(job)["info"]["lexical_weight"] == 0
    assert store.deep_memory.list_models()  # a model was kept
    for kept in store.deep_memory.list_models():
        assert store.deep_memory.kept_model(kept["name"]).rerank_depth == 0


def test_bad_keyword_inputs_are_refused(task: KeywordTask) -> None:
    with pytest.raises(ValueError, match="lexical_weights"):
        TrainOptions.from_kwargs({"lexical_weights": (0.1, 0.0)})
    with pytest.raises(ValueError, match="lexical must be"):
        TrainOptions.from_kwargs({"lexical": "yes"})
    store = task.store()
    with pytest.raises(ValueError, match="query texts for"):
        train_model(store, task.queries[:10], task.relevance[:10], options=TrainOptions(), query_texts=task.texts[:9])


def test_models_saved_before_keyword_scores_still_load(trained) -> None:
    """A format-1 model state (no keyword index) loads as a dense model; a newer format is refused."""
    from llama_index_deepmemory.deep_memory.models import model_from_state

    store, _ = trained
    meta, arrays = store.deep_memory.active_model().to_state()
    old_meta = {k: v for k, v in meta.items() if k not in ("lexical", "lexical_weight", "far_lexical_weight", "far_cosine")} | {"format_version": 1}
    old_arrays = {k: v for k, v in arrays.items() if not k.startswith("lexical_")}
    old = model_from_state(old_meta, old_arrays)
    assert old.lexical is None and old.rerank_depth == 0
    with pytest.raises(ValueError, match="upgrade"):
        model_from_state(meta | {"format_version": 99}, arrays)


def test_nodes_added_or_rewritten_after_training_are_scored_from_their_current_text(
    task: KeywordTask, trained_copy, tmp_path
) -> None:
    """The keyword index is built at training; a node added later is scored from its text, and a
    node re-added with a new text stops using the text it was indexed with (also after a reload)."""
    store = trained_copy
    model = store.deep_memory.active_model()
    assert model.lexical_weight > 0
    j = next(i for i, node in enumerate(task.ids) if node not in model.memory_ids)  # a plain node
    target, text, q = task.ids[j], f"which report mentions code{j}x", task.docs[j]
    # a twin of it added after training, with the same text and vector: the same final score
    store.add([TextNode(id_="twin", text=task.doc_texts[j], embedding=q.tolist())])
    result = store.query(
        VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, query_str=text), deep_memory=True
    )
    by_id = dict(zip(result.ids, result.similarities))
    assert by_id["twin"] == pytest.approx(by_id[target], abs=1e-5)
    assert by_id[target] > max(v for node, v in by_id.items() if node not in (target, "twin"))
    # the target re-added with an unrelated text loses its keyword bonus
    before = model.lexical.scores(text, [target])[0]
    store.add([TextNode(id_=target, text="nothing relevant here", embedding=q.tolist())])
    assert before > 0
    assert model.lexical.scores(text, [target], ["nothing relevant here"])[0] == 0
    result = store.query(
        VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=2, query_str=text), deep_memory=True
    )
    assert result.ids[0] == "twin"  # same vector, but only the twin still mentions the code word
    store.persist(str(tmp_path / "store"))
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store")).deep_memory.active_model()
    assert loaded.lexical.scores(text, [target])[0] == 0  # still forgotten: no text given, no score


def test_a_memory_node_rewritten_after_training_loses_its_keyword_score(task: KeywordTask, trained_copy) -> None:
    """A memory (override) node re-added with an unrelated text keeps its learned score but no
    longer earns keyword score from its old text (the compiled one-call ranking steps aside)."""
    store = trained_copy
    model = store.deep_memory.active_model()
    target = next(node for node in model.memory_ids if node in task.ids)
    j = task.ids.index(target)
    q, text = task.docs[j], f"which report mentions code{j}x"

    def similarity(query_str):
        result = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=len(task.ids),
                                              query_str=query_str), deep_memory=True)
        return dict(zip(result.ids, result.similarities))[target]

    dense = similarity(None)
    assert similarity(text) > dense + 1e-3  # its code word earns keyword score
    store.add([TextNode(id_=target, text="nothing relevant here", embedding=q.tolist())])  # its stored vector
    assert similarity(None) == pytest.approx(dense, abs=1e-6)
    assert similarity(text) == pytest.approx(dense, abs=1e-6)


def test_nodes_rewritten_while_a_job_trains_are_forgotten_by_its_keyword_index(
    task: KeywordTask, monkeypatch
) -> None:
    """A node re-added after the job read the stored texts (but before its model is kept) must not
    keep its old keyword score in that model: the job's index forgets it when the model is kept."""
    store = task.store()
    target, text = task.ids[3], "which report mentions code3x"
    build_lexical = training._build_lexical

    def build_then_rewrite(view):  # runs in the job's thread, right after the texts were read
        index = build_lexical(view)
        store.add([TextNode(id_=target, text="nothing relevant here", embedding=task.docs[3].tolist())])
        return index

    monkeypatch.setattr(training.run, "_build_lexical", build_then_rewrite)  # where the run calls it
    store.deep_memory.train(task.texts[:N_TRAIN], task.relevance[:N_TRAIN], embedding=task.queries[:N_TRAIN], **OPTIONS)
    model = store.deep_memory.active_model()
    assert model.lexical_weight > 0
    assert model.lexical.scores(text, [target])[0] == 0  # its indexed (old) text is no longer used
    assert model.lexical.scores(text, [target], ["nothing relevant here"])[0] == 0
    assert model.lexical.scores("which report mentions code4x", [task.ids[4]])[0] > 0  # others kept
    assert store.deep_memory._rewritten_during == {}  # the job's change log is gone with the job


def test_a_model_of_another_dimension_is_refused(task: KeywordTask, trained) -> None:
    store, _ = trained
    other = DeepMemoryVectorStore()
    other.add([TextNode(id_="a", text="code1x", embedding=[1.0, 0.0, 0.0])])
    other.deep_memory.add_model("m", store.deep_memory.active_model(), activate=True)
    with pytest.raises(ValueError, match="trained for 64-dimensional vectors"):
        other.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=1), deep_memory=True)
    with pytest.raises(TypeError, match="single string"):
        store.deep_memory.active_model().lexical.scores("code1x", ["node_1"], "one text")


def test_keywords_alone_win_when_training_adds_nothing_clear() -> None:
    """One question per document (as in an FAQ): memory cannot help held-out questions, so the
    trained adapter and memory must beat keywords on the plain store by more than one standard
    error to be kept; here they cannot, and the model is the plain store plus keyword scores."""
    rng = np.random.default_rng(5)
    task = KeywordTask(seed=5)
    targets = rng.permutation(N_DOCS)
    task.texts = [f"which report mentions code{t}x" for t in targets]
    task.relevance = [[(task.ids[t], 1.0)] for t in targets]
    task.queries = normalise(rng.normal(size=(N_DOCS, DIM)))
    store = task.store()
    job = store.deep_memory.train(task.texts, task.relevance, embedding=task.queries, **OPTIONS)
    info = store.deep_memory.status(job)["info"]
    assert info["keywords_only"] is True and info["lexical_weight"] > 0, info
    model = store.deep_memory.active_model()
    assert model is not None and len(model.memory_ids) == 0 and model.key_weight == 0
    np.testing.assert_array_equal(model.weight, np.eye(DIM, dtype=np.float32))
