"""The per-query keyword weight (issue 17): queries far from every training query (raw cosine
below ``far_cosine``) are re-scored with ``far_lexical_weight``, the others with ``lexical_weight``.
Checked against brute-force NumPy rankings through ``rank``, the store's compiled single-query
path and its batches; training's validation judges the rule it serves."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH, AdapterMemoryModel, model_from_state
from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.deep_memory.training import TrainOptions
from llama_index_deepmemory.evaluation import model_contents
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import (DIM, FAR_COSINE, FAR_WEIGHT, N_TRAIN, NEAR_WEIGHT, OPTIONS, KeywordTask, brute_force_scores,
                       far_model, reference_keyword_weights, served_keyword_weights)

EVEN = MetadataFilters(filters=[MetadataFilter(key="parity", value=0)])


def reference_ids(task: KeywordTask, model, queries: np.ndarray, texts: list[str], k: int, allowed=None) -> list[list[str]]:
    """Brute force: Deep Memory scores of every (allowed) node, BM25 re-scoring of the top
    50 with each query's weight (``reference_keyword_weights``), the rest after them in Deep Memory order."""
    scores = brute_force_scores(queries, task.docs, task.ids, model)
    weights = reference_keyword_weights(model, queries)
    out = []
    for row, text, weight in zip(scores, texts, weights):
        order = np.argsort(-row, kind="stable")
        if allowed is not None:
            order = order[np.isin(np.array(task.ids)[order], allowed)]
        top, tail = order[:LEXICAL_DEPTH], order[LEXICAL_DEPTH:k]
        keyword = model.lexical.scores(text, [task.ids[j] for j in top])
        fused = row[top] + (weight * keyword / keyword.max() if keyword.max() > 0 else 0)
        out.append(([task.ids[top[j]] for j in np.argsort(-fused, kind="stable")] + [task.ids[j] for j in tail])[:k])
    return out


@pytest.fixture(scope="module")
def served() -> tuple[KeywordTask, DeepMemoryVectorStore, AdapterMemoryModel]:
    task = KeywordTask(seed=8)
    store = DeepMemoryVectorStore()
    store.add(task.nodes(metadata=True))
    model = far_model(task)
    store.deep_memory.add_model("far", model, activate=True)
    return task, store, model


def test_keyword_weights_follow_the_cosine_to_the_training_queries(served) -> None:
    task, store, model = served
    weights = served_keyword_weights(model, store.prepare_queries(task.queries))
    expected = reference_keyword_weights(model, task.queries)
    np.testing.assert_array_equal(weights, expected)
    assert (expected[:20] == NEAR_WEIGHT).all() and (expected[20:] == FAR_WEIGHT).sum() >= 100  # both kinds occur
    assert served_keyword_weights(far_model(task, far_weight=0.0), task.queries) is None  # off: one weight for all


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("k", [3, 60])
def test_store_query_batches_and_rank_equal_brute_force(served, filters, k: int) -> None:
    task, store, model = served
    allowed = [i for j, i in enumerate(task.ids) if j % 2 == 0] if filters is not None else None
    expected = reference_ids(task, model, task.queries, task.texts, k, allowed)
    prepared = store.prepare_queries(task.queries)
    assert rank(store, prepared, model, k, texts=task.texts, filters=filters)[1] == expected
    assert store.search_vectors(prepared, k, deep_memory=True, texts=task.texts, filters=filters)[1] == expected
    for i in list(range(15, 25)) + list(range(100, 110)):  # near and far queries, one at a time (compiled path)
        for _ in range(2):  # the second keyword query at an unchanged store takes the one-call path
            query = VectorStoreQuery(
                query_embedding=task.queries[i].tolist(), similarity_top_k=k, query_str=task.texts[i], filters=filters)
            assert store.query(query, deep_memory=True).ids == expected[i], f"query {i}"
    # the rule changes rankings: one weight for every query ranks differently
    one_weight = model.replace(far_lexical_weight=0.0, far_cosine=0.0)
    assert rank(store, prepared, one_weight, k, texts=task.texts, filters=filters)[1] != expected


def test_far_rule_survives_the_state_round_trip(served) -> None:
    task, _, model = served
    meta, arrays = model.to_state()
    assert meta["format_version"] == 4 and (meta["far_lexical_weight"], meta["far_cosine"]) == (FAR_WEIGHT, FAR_COSINE)
    loaded = model_from_state(meta, arrays)
    np.testing.assert_array_equal(served_keyword_weights(loaded, task.queries), served_keyword_weights(model, task.queries))
    with pytest.raises(ValueError, match="upgrade"):
        model_from_state(meta | {"format_version": 5}, arrays)
    assert far_model(task, far_weight=0.0).to_state()[0]["format_version"] == 2  # older installs load it


def test_bad_far_settings_are_refused(served) -> None:
    task, _, model = served
    with pytest.raises(ValueError, match="needs the training queries as gate_keys"):
        AdapterMemoryModel(DIM, lexical=model.lexical, lexical_weight=0.1, far_lexical_weight=0.3, far_cosine=0.6)
    with pytest.raises(ValueError, match="far_cosine must be a cosine in \\[0, 1\\].*1.5"):
        model.replace(lexical_weight=0.1, far_lexical_weight=0.3, far_cosine=1.5, gate_keys=task.queries)
    with pytest.raises(ValueError, match="far_lexical_weight must be a finite number >= 0, got -1"):
        model.replace(lexical_weight=0.1, far_lexical_weight=-1, gate_keys=task.queries)
    with pytest.raises(ValueError, match="needs the training queries"):
        model.replace(lexical_weight=0.1, far_lexical_weight=0.3, far_cosine=0.6, gate_keys=None)
    with pytest.raises(ValueError, match="far_keyword_weight must be a finite number >= 0.*nan"):
        TrainOptions.from_kwargs({"far_keyword_weight": float("nan")})
    with pytest.raises(ValueError, match="far_keyword_cosine must be a cosine in \\[0, 1\\].*-0.2"):
        TrainOptions.from_kwargs({"far_keyword_cosine": -0.2})


def test_validation_judges_the_far_rule_it_serves(served) -> None:
    """Each keyword weight of the validation grid is scored as the served model would rank: far
    from the fold's training queries with ``max(w, far_keyword_weight)``."""
    from llama_index_deepmemory.deep_memory import training

    task, store, model = served
    options = TrainOptions(far_keyword_weight=FAR_WEIGHT, far_keyword_cosine=FAR_COSINE)
    fold = training._Fold(
        train=training._Split(task.queries[:20], task.relevance[:20], task.texts[:20]),
        val=training._Split(task.queries[10:60], task.relevance[10:60], task.texts[10:60]),  # near and far
        held_out=True,
    )
    ctx = training._Context(store, options, None, None)
    (weight, judged), = training._lexical_grid(store, [fold], [model], [{}], model.lexical, [NEAR_WEIGHT], ctx)
    served_rule = training._evaluate(store, fold.val, model)  # the model's keys are these 20 queries
    one_weight = training._evaluate(store, fold.val, model.replace(far_lexical_weight=0.0, far_cosine=0.0))
    np.testing.assert_array_equal(judged.per_query, served_rule.per_query)
    assert not np.array_equal(judged.per_query, one_weight.per_query)
    # a chosen weight at least the far weight serves every query alike: no rule, no per-query cost
    far = training._FarKeywords(task.queries[:20], FAR_COSINE, 0.3)
    assert served_keyword_weights(training._with_lexical(model, model.lexical, 0.3, far), task.queries) is None
    assert served_keyword_weights(training._with_lexical(model, model.lexical, 0.2, far), task.queries) is not None


@pytest.mark.parametrize("far_weight", [0.0, 2.0])  # 2.0: above every weight of the grid
def test_trained_model_serves_the_far_rule_with_its_training_queries(far_weight: float) -> None:
    """The keys are every training query (validation held some out, the model serves all); far from them the weight is
    ``max(w, far_keyword_weight)``; ``far_keyword_weight=0`` serves one weight."""
    task = KeywordTask(seed=0)
    store = task.store()
    job = store.deep_memory.train(
        task.texts[:N_TRAIN], task.relevance[:N_TRAIN], embedding=task.queries[:N_TRAIN],
        **dict(OPTIONS, refit=True, far_keyword_weight=far_weight, far_keyword_cosine=0.35),
    )
    record = store.deep_memory.status(job)
    store.deep_memory.set_model(record["model_name"])  # kept (trained with refit), perhaps not activated
    info, model = record["info"], store.deep_memory.active_model()
    assert info["lexical_weight"] > 0, info
    if far_weight == 0:
        assert info["far_lexical_weight"] == 0 and served_keyword_weights(model, task.queries) is None
        return
    assert not info["keywords_only"], info  # memory to be far from
    assert (info["far_lexical_weight"], info["far_keyword_cosine"]) == (far_weight, 0.35)
    # held-out validation, but the model keeps every training query (at 8-bit precision: within a
    # scale step, at most 1/64 of the row's largest entry)
    queries = task.queries[:N_TRAIN]
    assert (np.abs(model.gate_keys - queries) <= np.abs(queries).max(axis=1, keepdims=True) / 64).all()
    weights = served_keyword_weights(model, task.queries[N_TRAIN:])
    np.testing.assert_array_equal(weights, reference_keyword_weights(model, task.queries[N_TRAIN:]))
    assert set(weights.tolist()) == {info["lexical_weight"], 2.0}  # near and far test queries both occur
    assert "2.0 for queries whose cosine to every training query is below 0.35" in model_contents(info)
