"""Keys skipped by their anchors (``model_parts.key_anchors``) in ``kernels.adapter_memory_scores``,
against the same kernel scoring every key (no anchors): the same transformed queries and memory
scores bit for bit, whether the bound skips every key, some or none, for every metric; and the bound
itself against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_deepmemory.deep_memory import kernels
from llama_index_deepmemory.deep_memory.model_parts import key_anchors
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel


def _model(rng: np.random.Generator, d: int, metric: str, memory: np.ndarray, keys: np.ndarray, threshold: float,
           links: int) -> AdapterMemoryModel:
    n_mem, n_keys = len(memory), len(keys)
    link_key = np.concatenate([np.arange(n_keys), rng.integers(0, n_keys, links)])
    link_node = np.concatenate([np.arange(n_keys) % n_mem, rng.integers(0, n_mem, links)])
    return AdapterMemoryModel(
        dim=d, metric=metric, weight=np.eye(d) + 0.05 * rng.normal(size=(d, d)), bias=0.02 * rng.normal(size=d),
        memory_ids=[f"m{i}" for i in range(n_mem)], memory_vectors=memory, key_vectors=keys,
        link_key=link_key, link_node=link_node, link_weight=rng.uniform(-0.3, 1.0, len(link_key)),
        key_weight=0.6, key_threshold=threshold,
    )


def _scores(model: AdapterMemoryModel, queries: np.ndarray, anchored: bool) -> tuple[np.ndarray, np.ndarray]:
    args = list(model._kernel_args)
    if not anchored:  # every key scored
        args[-2] = np.full_like(args[-2], -1)
    transformed, scores, finite = kernels.adapter_memory_scores(queries, *args)
    assert finite
    return transformed, scores


def _skippable(model: AdapterMemoryModel, transformed: np.ndarray) -> np.ndarray:
    """(m, n_keys) bool: the keys the bound may skip (numpy, float64)."""
    memory = model._memory_codes * model._memory_scales[:, None]
    upper = transformed.astype(np.float64) @ memory.T.astype(np.float64)
    norms = np.linalg.norm(transformed.astype(np.float64), axis=1, keepdims=True)
    anchor, reach = model._key_anchor, model._key_reach
    bound = upper[:, np.maximum(anchor, 0)] + norms * reach
    if model.metric != "cosine":
        bound = bound / norms
    return (anchor >= 0) & (bound < model.key_threshold - 1e-6)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("d", [16, 33])
def test_anchored_keys_score_as_every_key_scored(metric: str, d: int) -> None:
    """Keys near their linked memory rows; queries near some of them; thresholds at which the bound
    skips none, some and every key: identical transformed queries and scores, one query at a time
    and in batches."""
    rng = np.random.default_rng(d)
    memory = rng.normal(size=(50, d))
    unit = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    keys = unit[np.arange(40) % 50] + 0.3 * rng.normal(size=(40, d)) / np.sqrt(d)
    queries = np.concatenate([memory[rng.integers(0, 50, 30)] + 0.3 * rng.normal(size=(30, d)),
                              rng.normal(size=(30, d))]).astype(np.float32)
    if metric == "cosine":
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    skipped = []
    for threshold in (-1.0, 0.5, 0.8, 0.99):
        model = _model(rng, d, metric, unit, keys, threshold, 15)
        for batch in (queries[:1], queries[1:2], queries[2:9], queries):
            transformed, scores = _scores(model, batch, True)
            reference_transformed, reference = _scores(model, batch, False)
            np.testing.assert_array_equal(transformed, reference_transformed)
            np.testing.assert_array_equal(scores, reference)
        skipped.append(_skippable(model, _scores(model, queries, True)[0]).mean())
    assert skipped[0] == 0.0 and skipped[-1] > 0.9 and 0.0 < skipped[1] < 1.0  # none, some, (almost) all


def test_every_key_skipped_and_none_fired() -> None:
    """Memory rows opposite the query and keys next to them: every key skippable, none fires, the
    scores are the memory products alone."""
    rng = np.random.default_rng(3)
    d = 24
    q = rng.normal(size=d).astype(np.float32)
    q /= np.linalg.norm(q)
    memory = -q + 0.1 * rng.normal(size=(20, d))
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    model = _model(rng, d, "cosine", memory, memory[:15] + 0.05 * rng.normal(size=(15, d)), 0.2, 5)
    transformed, scores = _scores(model, q[None, :], True)
    assert _skippable(model, transformed).all()
    np.testing.assert_array_equal(scores, _scores(model, q[None, :], False)[1])
    np.testing.assert_allclose(scores[0], (model._memory_codes * model._memory_scales[:, None]) @ transformed[0],
                               rtol=1e-5, atol=1e-6)


def test_anchor_bound_holds_for_every_link() -> None:
    """The nearest linked memory row is each key's anchor, and the reach bounds the float32 key
    product by the float32 anchor product, for extreme codes and every query scale."""
    rng = np.random.default_rng(4)
    for d in (1, 3, 64, 385):
        keys = np.concatenate([rng.normal(size=(20, d)), np.full((1, d), 1.0), np.full((1, d), -1.0)])
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        memory = np.concatenate([keys[:22] + rng.normal(size=(22, d)) * rng.uniform(0.01, 2, (22, 1)),
                                 rng.normal(size=(8, d)) * 1e3, np.zeros((1, d))])
        from llama_index_deepmemory.deep_memory.models import int8_rows

        (key_codes, key_scales), (memory_codes, memory_scales) = int8_rows(keys), int8_rows(memory)
        key_rows, memory_rows = key_codes * key_scales[:, None], memory_codes * memory_scales[:, None]
        link_key = np.concatenate([np.arange(22), rng.integers(0, 22, 30), [0]]).astype(np.int64)
        link_node = np.concatenate([np.arange(22), rng.integers(0, 31, 30), [30]]).astype(np.int64)
        anchor, reach = key_anchors(key_rows, memory_rows, link_key, link_node)
        for t in range(22):
            linked = link_node[link_key == t]
            nearest = linked[np.argmin(np.linalg.norm(key_rows[t] - memory_rows[linked], axis=1))]
            assert np.linalg.norm(key_rows[t] - memory_rows[anchor[t]]) == np.linalg.norm(key_rows[t] - memory_rows[nearest])
        for scale in (1e-3, 1.0, 1e3):
            for q in (rng.normal(size=d), np.ones(d), -np.abs(rng.normal(size=d))):
                q = (q * scale).astype(np.float32)
                norm = float(np.sqrt(q.astype(np.float64) @ q.astype(np.float64)))
                for t in range(22):
                    key = np.float32(kernels._dot_codes(key_codes[t], q) * key_scales[t])
                    base = np.float32(kernels._dot_codes(memory_codes[anchor[t]], q) * memory_scales[anchor[t]])
                    assert key <= float(base) + norm * reach[t]
