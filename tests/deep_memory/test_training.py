"""Deep Memory training on small seeded synthetic data, checked against brute-force NumPy rankings."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_deepmemory.deep_memory.model_parts import int8_rows
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel, model_from_state
from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.deep_memory.training import (
    TrainingCancelled,
    TrainOptions,
    train_model,
)
from llama_index_deepmemory.engine.array_view import ArrayStoreView
from synthetic import brute_force_top_k, normalise


class ArrayStore(ArrayStoreView):
    """``ArrayStoreView`` (cosine) searched by brute-force NumPy: the reference the trainer is checked against."""

    def __init__(self, vectors: np.ndarray) -> None:
        super().__init__([f"node_{i}" for i in range(len(vectors))], normalise(vectors))

    def prepare_queries(self, vectors) -> np.ndarray:
        return normalise(np.asarray(vectors, dtype=np.float32))

    def search_vectors(self, queries: np.ndarray, k: int, filters=None, **_):
        assert filters is None, "this view has no metadata"
        scores = queries @ self.vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1), [[self.ids[j] for j in row] for row in top]


def brute_force_recall(store: ArrayStore, queries: np.ndarray, relevant: list[str], k: int, model=None) -> float:
    """Share of queries whose single relevant node is in the exact top-k (full score matrix)."""
    top = brute_force_top_k(queries, store.vectors, store.ids, k, model)
    return float(np.mean([store.position[rel] in row for rel, row in zip(relevant, top)]))


def rotated_task(seed: int, n_docs: int = 300, n_queries: int = 240, dim: int = 16, noise: float = 0.3):
    """Docs random; each query is a fixed random rotation of its relevant doc plus noise."""
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    targets = rng.integers(0, n_docs, size=n_queries)
    queries = normalise(normalise(docs[targets]) @ rotation.T + noise * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    store = ArrayStore(docs)
    relevant = [store.ids[t] for t in targets]
    return store, queries, relevant


FAST = dict(epochs=30, learning_rate=1e-2, batch_size=32, num_threads=1)


@pytest.mark.parametrize("full_softmax_max_nodes", [100_000, 100], ids=["whole-corpus", "mined-negatives"])
def test_training_learns_a_rotation_on_held_out_queries(full_softmax_max_nodes: int) -> None:
    store, queries, relevant = rotated_task(seed=1)
    train_q, test_q = queries[:200], queries[200:]
    relevance = [[(node, 1.0)] for node in relevant[:200]]
    options = TrainOptions(seed=0, query_memory=False, full_softmax_max_nodes=full_softmax_max_nodes, **FAST)
    result = train_model(store, train_q, relevance, options=options)
    assert result.info["softmax"] == ("full corpus" if full_softmax_max_nodes > len(store) else "64 mined negatives")
    before = brute_force_recall(store, test_q, relevant[200:], 5)
    after = brute_force_recall(store, test_q, relevant[200:], 5, result.model)
    assert result.improved
    assert result.val_after["ndcg@10"] > result.val_before["ndcg@10"]
    assert after > before + 0.3, (before, after)
    # the trainer's own store-merge ranking agrees with the brute-force reference
    ranked = rank(store, test_q, result.model, 5)[1]
    merged = float(np.mean([rel in row for rel, row in zip(relevant[200:], ranked)]))
    assert merged == pytest.approx(after)


def test_random_relevance_is_not_activated() -> None:
    rng = np.random.default_rng(5)
    store = ArrayStore(rng.normal(size=(400, 16)))
    queries = normalise(rng.normal(size=(200, 16)))
    relevance = [[(store.ids[j], 1.0)] for j in rng.integers(0, 400, size=200)]
    result = train_model(store, queries, relevance, options=TrainOptions(seed=0, validation_fraction=0.2, **FAST))
    assert not result.improved, (result.val_before, result.val_after)


def test_state_round_trip_and_determinism() -> None:
    store, queries, relevant = rotated_task(seed=2, n_queries=120)
    relevance = [[(node, 1.0), (store.ids[0], 0.5)] for node in relevant]
    options = TrainOptions(seed=3, epochs=5, learning_rate=1e-2, batch_size=32, patience=10, num_threads=1)
    first = train_model(store, queries, relevance, options=options)
    second = train_model(store, queries, relevance, options=options)
    probe = normalise(np.random.default_rng(0).normal(size=(7, 16)))
    meta, arrays = first.model.to_state()
    loaded = model_from_state(meta, {k: v.copy() for k, v in arrays.items()})
    assert isinstance(loaded, AdapterMemoryModel)
    for other in (loaded, second.model):
        np.testing.assert_array_equal(other.transform_queries(probe), first.model.transform_queries(probe))
        ids_a, scores_a = first.model.overrides(first.model.transform_queries(probe))
        ids_b, scores_b = other.overrides(other.transform_queries(probe))
        assert ids_a == ids_b
        np.testing.assert_array_equal(scores_a, scores_b)
    assert first.val_after == second.val_after


def test_thread_setting_is_restored() -> None:
    import torch

    store, queries, relevant = rotated_task(seed=6, n_queries=20)
    before = torch.get_num_threads()
    train_model(store, queries, [[(n, 1.0)] for n in relevant], options=TrainOptions(epochs=1, num_threads=1))
    assert torch.get_num_threads() == before


def _paraphrase_task(seed: int, n_base: int):
    """``n_base`` queries unrelated to their random docs, each asked twice (a small paraphrase):
    the store, queries and relevance, plus the base queries, their target rows and the generator."""
    rng = np.random.default_rng(seed)
    store = ArrayStore(rng.normal(size=(300, 16)))
    base = normalise(rng.normal(size=(n_base, 16)))
    targets = rng.integers(0, 300, size=n_base)
    queries = normalise(np.concatenate([base, base + 0.05 * rng.normal(size=base.shape)]))
    relevance = [[(store.ids[t], 1.0)] for t in np.concatenate([targets, targets])]
    return store, queries, relevance, base, targets, rng


def test_query_memory_lifts_repeated_queries() -> None:
    """Paraphrases of training queries find their nodes through the remembered-query keys."""
    store, queries, relevance, base, targets, rng = _paraphrase_task(seed=7, n_base=100)
    result = train_model(
        store, queries, relevance, options=TrainOptions(seed=0, validation_fraction=0.3, node_memory=False, **FAST)
    )
    assert result.improved
    assert result.info["key_weight"] > 0
    probe = normalise(base + 0.05 * rng.normal(size=base.shape))
    relevant = [store.ids[t] for t in targets]
    assert brute_force_recall(store, probe, relevant, 1, result.model) > 0.9
    assert brute_force_recall(store, probe, relevant, 10) < 0.2


def test_cancellation_raises() -> None:
    store, queries, relevant = rotated_task(seed=3, n_queries=60)
    calls: list[float] = []
    with pytest.raises(TrainingCancelled):
        train_model(
            store,
            queries,
            [[(node, 1.0)] for node in relevant],
            options=TrainOptions(epochs=50, num_threads=1),
            progress=lambda fraction, message: calls.append(fraction),
            should_stop=lambda: len(calls) >= 2,
        )
    assert len(calls) == 2


def test_options_reject_unknown_and_bad_values() -> None:
    with pytest.raises(TypeError, match="learnig_rate"):
        TrainOptions.from_kwargs({"learnig_rate": 0.1})
    with pytest.raises(ValueError, match="epochs"):
        TrainOptions.from_kwargs({"epochs": 0})
    assert TrainOptions.from_kwargs({"epochs": 3}).epochs == 3


def test_unknown_relevant_ids_are_refused() -> None:
    store, queries, relevant = rotated_task(seed=4, n_queries=10)
    relevance = [[(node, 1.0)] for node in relevant]
    relevance[3] = [("nope", 1.0)]
    with pytest.raises(ValueError, match="nope"):
        train_model(store, queries, relevance, options=TrainOptions(epochs=1, num_threads=1))


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("n_queries", [1, 4, 12])  # 12: past SMALL_BATCH, the BLAS path
@pytest.mark.parametrize("threshold", [-0.2, 0.95])  # most keys fire / (almost) none does
def test_model_scores_match_brute_force(metric: str, n_queries: int, threshold: float) -> None:
    """transform + overrides reproduce the documented formula, computed here with plain loops."""
    rng = np.random.default_rng(11)
    d, n_mem = 8, 5
    model = AdapterMemoryModel(
        dim=d,
        metric=metric,
        weight=np.eye(d) + 0.1 * rng.normal(size=(d, d)),
        bias=0.05 * rng.normal(size=d),
        memory_ids=[f"m{i}" for i in range(n_mem)],
        memory_vectors=rng.normal(size=(n_mem, d)),
        key_vectors=rng.normal(size=(3, d)),
        link_key=np.array([0, 0, 1, 2]),
        link_node=np.array([1, 2, 2, 4]),
        link_weight=np.array([1.0, 0.5, 1.0, 1.0]),
        key_weight=0.7,
        key_threshold=threshold,
    )
    queries = rng.normal(size=(n_queries, d)).astype(np.float32)
    transformed = model.transform_queries(queries)
    ids, scores = model.overrides(transformed)
    codes, scales = int8_rows(normalise(model.key_vectors))  # the keys as queries meet them
    unit_keys = codes * scales[:, None]
    assert ids == model.memory_ids
    for i, q in enumerate(queries.astype(np.float64)):
        qt = model.weight.astype(np.float64) @ q + model.bias
        if metric == "cosine":
            qt /= np.linalg.norm(qt)
        np.testing.assert_allclose(transformed[i], qt, rtol=1e-5, atol=1e-6)
        for j in range(n_mem):
            v = model.memory_vectors[j].astype(np.float64)
            base = -np.sum((qt - v) ** 2) if metric == "l2" else qt @ v
            bonus = 0.0
            for key, node, w in zip(model.link_key, model.link_node, model.link_weight):
                if node == j:
                    k = unit_keys[key].astype(np.float64)  # unit rows, 8-bit
                    assert np.linalg.norm(k) == pytest.approx(1.0, abs=0.02)
                    cos = qt @ k / np.linalg.norm(qt)
                    bonus = max(bonus, w * max(cos - model.key_threshold, 0.0))
            assert scores[i, j] == pytest.approx(base + 0.7 * bonus, rel=1e-4, abs=1e-4)




def test_small_sets_are_cross_validated_and_activated_when_memory_helps() -> None:
    """20 questions: a 10% split would validate on 2; 5 folds pool all 20 into the gate."""
    store, queries, relevance, *_ = _paraphrase_task(seed=0, n_base=10)
    single = train_model(store, queries, relevance, options=TrainOptions(seed=0, validation_folds=1, **FAST))
    assert not single.improved  # the old single split: too few validation queries for the gate
    result = train_model(store, queries, relevance, options=TrainOptions(seed=0, **FAST))
    assert result.info["validation"] == "5-fold cross-validation"
    assert result.info["n_val"] == len(relevance)  # every query validated exactly once
    assert result.info["refit_on_all_queries"]
    assert result.improved, (result.val_before, result.val_after)
    ranked = rank(store, queries, result.model, 1)[1]
    assert np.mean([pairs[0][0] in row for pairs, row in zip(relevance, ranked)]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_random_relevance_is_not_activated(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    store = ArrayStore(rng.normal(size=(400, 16)))
    queries = normalise(rng.normal(size=(40, 16)))
    relevance = [[(store.ids[j], 1.0)] for j in rng.integers(0, 400, size=40)]
    result = train_model(store, queries, relevance, options=TrainOptions(seed=seed, **FAST))
    assert result.info["validation_folds"] == 5
    assert not result.improved, (result.val_before, result.val_after)


def test_validation_folds_option() -> None:
    """validation_folds=1 is the single validation_fraction split; bad values are refused."""
    store, queries, relevance, *_ = _paraphrase_task(seed=1, n_base=15)
    single = train_model(store, queries, relevance, options=TrainOptions(seed=0, validation_folds=1, **FAST))
    assert single.info["validation"] == "held-out" and single.info["n_val"] == 3  # round(0.1 * 30)
    three = train_model(store, queries, relevance, options=TrainOptions(seed=0, validation_folds=3, **FAST))
    assert three.info["validation"] == "3-fold cross-validation" and three.info["n_val"] == 30
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="validation_folds"):
            TrainOptions.from_kwargs({"validation_folds": bad})
    no_holdout = train_model(store, queries, relevance, options=TrainOptions(seed=0, validation_fraction=0.0, **FAST))
    assert no_holdout.info["validation"].startswith("training queries") and no_holdout.info["n_val"] == 0


class CountingStore(ArrayStore):
    """The brute-force reference store, counting the query rows each search depth was asked for."""

    def __init__(self, vectors: np.ndarray) -> None:
        super().__init__(vectors)
        self.searched: dict[int, int] = {}

    def search_vectors(self, queries: np.ndarray, k: int, filters=None, **kwargs):
        self.searched[k] = self.searched.get(k, 0) + len(queries)
        return super().search_vectors(queries, k, filters=filters, **kwargs)


def test_plain_mining_is_searched_once_per_query_and_equals_brute_force() -> None:
    import torch

    from llama_index_deepmemory.deep_memory.training.mining import CandidateSource

    base, queries, relevant = rotated_task(seed=2)
    store = CountingStore(base.vectors)
    relevance = [[(node, 1.0)] for node in relevant]
    shared: dict = {}

    def source(n: int) -> CandidateSource:
        return CandidateSource(
            store, queries[:n], relevance[:n], {}, device=torch.device("cpu"), full_softmax_max_nodes=10,
            num_negatives=20, check_stop=lambda: None, plain_mined=shared,
        )

    identity = AdapterMemoryModel(dim=queries.shape[1], metric="cosine")
    first, second = source(150), source(len(queries))
    first.mine(identity)
    second.mine(identity)  # a refit over every query: only the 90 new ones are searched
    assert store.searched == {20: len(queries)}
    expected = brute_force_top_k(queries, store.vectors, store.ids, 20, identity)
    assert second.mined == [[store.ids[j] for j in row] for row in expected]
    assert first.mined == second.mined[:150]

    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(queries.shape[1],) * 2))
    trained = AdapterMemoryModel(dim=queries.shape[1], metric="cosine", weight=rotation.astype(np.float32))
    second.mine(trained)  # a trained adapter is searched afresh, never served from the plain hits
    assert store.searched == {20: 2 * len(queries)}
    expected = brute_force_top_k(queries, store.vectors, store.ids, 20, trained)
    assert second.mined == [[store.ids[j] for j in row] for row in expected]


def test_training_stops_once_every_validation_query_is_ranked_perfectly() -> None:
    rng = np.random.default_rng(4)
    docs = rng.normal(size=(120, 16))
    store = ArrayStore(docs)
    targets = rng.permutation(120)[:100]
    queries = store.vectors[targets] + 0.01 * rng.normal(size=(100, 16)).astype(np.float32)
    relevance = [[(store.ids[t], 1.0)] for t in targets]
    result = train_model(store, queries, relevance, options=TrainOptions(seed=0, validation_folds=1, **FAST))
    assert result.val_before["ndcg@10"] == 1.0
    assert result.info["epochs_run"] == 1  # FAST allows 30 epochs and patience 6
    assert not result.improved
