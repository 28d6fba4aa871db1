"""The bundled default embedding and the content-hash embedding cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode

from llama_index_deepmemory.embeddings import (
    EmbeddingCache,
    default_embedding,
    embed_nodes,
    embed_texts,
    model_fingerprint,
)


class CountingEmbedding(BaseEmbedding):
    """Deterministic vectors from the text's hash; counts the texts it embeds."""

    calls: list[str] = []

    def _vector(self, text: str) -> list[float]:
        self.calls.append(text)
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(8).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def test_cache_skips_seen_texts_and_keeps_order(tmp_path: Path) -> None:
    model = CountingEmbedding(model_name="counting", calls=[])
    texts = ["b longer text", "a", "b longer text", "c"]
    first = embed_texts(texts, model, cache_dir=tmp_path, batch_size=2)
    assert sorted(model.calls) == ["a", "b longer text", "c"]  # duplicates embedded once
    expected = np.array([model._get_text_embedding(t) for t in texts], dtype=np.float32)
    np.testing.assert_allclose(first, expected, rtol=1e-6)

    same_model = CountingEmbedding(model_name="counting", calls=[])
    again = embed_texts(["c", "new", "a"], same_model, cache_dir=tmp_path)
    assert same_model.calls == ["new"]
    np.testing.assert_allclose(again[[0, 2]], first[[3, 1]], rtol=1e-6)

    other_model = CountingEmbedding(model_name="other", calls=[])
    embed_texts(["a"], other_model, cache_dir=tmp_path)
    assert other_model.calls == ["a"]  # the cache is per model


def test_broken_cache_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    model = CountingEmbedding(model_name="counting", calls=[])
    cache = EmbeddingCache(tmp_path, model_fingerprint(model))
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(b"not a zip file")
    vectors = embed_texts(["x"], model, cache_dir=tmp_path)
    assert model.calls == ["x"]
    reloaded = EmbeddingCache(tmp_path, model_fingerprint(model))
    np.testing.assert_allclose(reloaded.get(next(iter(reloaded._vectors))), vectors[0])
    assert [p.name for p in cache.path.parent.iterdir()] == [cache.path.name]  # no temp files left


def test_embed_nodes_uses_the_embed_text(tmp_path: Path) -> None:
    model = CountingEmbedding(model_name="counting", calls=[])
    node = TextNode(id_="n", text="body", metadata={"title": "T", "secret": "s"}, excluded_embed_metadata_keys=["secret"])
    embed_nodes([node], model, cache_dir=tmp_path)
    assert model.calls == ["title: T\n\nbody"]
    assert len(node.embedding) == 8


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="single str"):
        embed_texts("abc", CountingEmbedding(calls=[]))
    with pytest.raises(ValueError, match="batch_size"):
        embed_texts(["abc"], CountingEmbedding(calls=[]), batch_size=0)


def test_default_embedding_is_bundled_minilm_and_cached() -> None:
    model = default_embedding()
    assert default_embedding() is model
    vectors = np.array(model.get_text_embedding_batch(["How do I sort a list?", "Sorting lists in Python", "Tax law"]))
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2


def test_queries_are_cached_apart_from_texts(tmp_path: Path) -> None:
    from llama_index_deepmemory.embeddings import embed_queries

    model = CountingEmbedding(model_name="counting", calls=[])
    embed_texts(["same words"], model, cache_dir=tmp_path)
    vectors = embed_queries(["same words", "other"], model, cache_dir=tmp_path)
    assert sorted(model.calls) == ["other", "same words", "same words"]  # a text vector is not reused for a query
    again = CountingEmbedding(model_name="counting", calls=[])
    np.testing.assert_allclose(embed_queries(["other"], again, cache_dir=tmp_path)[0], vectors[1])
    assert again.calls == []
