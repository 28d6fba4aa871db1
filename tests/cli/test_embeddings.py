"""The bundled default embedding and the content-hash embedding cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import TextNode

from llama_index_deepmemory.embeddings import (
    SAVE_EVERY,
    EmbeddingCache,
    default_embedding,
    embed_queries,
    embed_nodes,
    embed_texts,
    model_fingerprint,
    text_key,
)


class CountingEmbedding(BaseEmbedding):
    """Deterministic vectors from the text's hash; counts the texts it embeds."""

    calls: list[str] = Field(default_factory=list, exclude=True)  # bookkeeping, not configuration

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
    expected = np.array([model.get_text_embedding(t) for t in texts], dtype=np.float32)
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
    assert len(reloaded) == 1
    np.testing.assert_allclose(reloaded.get(text_key("x")), vectors[0])
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


class KeyedEmbedding(CountingEmbedding):
    """A CountingEmbedding with an API key and a prefix that changes its vectors."""

    api_key: str = "k1"
    prefix: str = ""

    def _vector(self, text: str) -> list[float]:
        return super()._vector(self.prefix + text)


def test_fingerprint_covers_every_setting_that_changes_vectors(tmp_path: Path, minilm) -> None:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    instructed = HuggingFaceEmbedding(model_name=minilm.model_name, query_instruction="Represent this question: ")
    first = embed_queries(["what is python"], minilm, cache_dir=tmp_path)
    cached = embed_queries(["what is python"], instructed, cache_dir=tmp_path)
    true = np.asarray(instructed.get_query_embedding("what is python"), dtype=np.float32)
    np.testing.assert_allclose(cached[0], true, atol=1e-6)  # not the uninstructed vector from the cache
    assert not np.allclose(true, first[0], atol=1e-3)
    rebatched = HuggingFaceEmbedding(model_name=minilm.model_name, embed_batch_size=3, show_progress_bar=True)
    assert model_fingerprint(rebatched) == model_fingerprint(minilm)  # batching does not split the cache

    base = KeyedEmbedding(model_name="keyed")
    assert model_fingerprint(KeyedEmbedding(model_name="keyed", api_key="rotated")) == model_fingerprint(base)
    assert model_fingerprint(KeyedEmbedding(model_name="keyed", prefix="p: ")) != model_fingerprint(base)


class WatchingEmbedding(CountingEmbedding):
    """Records, at each batch it embeds, how many texts it has embedded and what the cache file holds."""

    cache_path: str = Field(default="", exclude=True)
    seen: list = Field(default_factory=list, exclude=True)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        path = Path(self.cache_path)
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                saved = len(data["keys"])
            stat = path.stat()
            self.seen.append((len(self.calls), saved, stat.st_ino, stat.st_size))
        return [self._vector(t) for t in texts]


def test_cache_saves_on_a_growing_interval(tmp_path: Path) -> None:
    n, batch = 20_000, 200
    model = WatchingEmbedding(model_name="watching", embed_batch_size=batch)
    model.cache_path = str(EmbeddingCache(tmp_path, model_fingerprint(model)).path)
    embed_texts([f"text {i}" for i in range(n)], model, cache_dir=tmp_path, batch_size=batch)
    final = Path(model.cache_path).stat().st_size
    writes = {(ino, size) for _, _, ino, size in model.seen} | {(Path(model.cache_path).stat().st_ino, final)}
    written = sum(size for _, size in writes)
    # saving every SAVE_EVERY texts would rewrite the growing file ~n / SAVE_EVERY times (> 10x its size)
    assert written <= 4.5 * final, (len(writes), written / final)
    for embedded, saved, _, _ in model.seen:  # a run killed at any point keeps most of its work
        assert embedded - saved <= max(SAVE_EVERY, saved // 2) + batch, (embedded, saved)
    assert len(EmbeddingCache(tmp_path, model_fingerprint(model))) == n


def test_default_embedding_leaves_the_process_environment_alone(tmp_path: Path) -> None:
    child = """
import json, os, socket
def no_network(*args, **kwargs):
    raise OSError("network access attempted")
socket.getaddrinfo = no_network
socket.socket.connect = no_network
from llama_index_deepmemory.embeddings import default_embedding, default_model_path
bundled = default_embedding()
explicit = default_embedding(model_name=default_model_path())
print(json.dumps({
    "dims": [len(bundled.get_text_embedding("hi")), len(explicit.get_text_embedding("hi"))],
    "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run([sys.executable, "-c", child], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"dims": [384, 384], "env": {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}}


def test_embedding_spec_is_checked_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index_deepmemory.embeddings import check_embedding_spec, default_model_path, load_embedding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    assert check_embedding_spec("default") == "default"
    assert check_embedding_spec(default_model_path()) == str(Path(default_model_path()).resolve())
    with pytest.raises(ValueError, match=r"'BAAI/bge-small-en-v1.5' is neither a local folder nor in the Hugging Face cache.*'default'"):
        check_embedding_spec("BAAI/bge-small-en-v1.5")
    with pytest.raises(ValueError, match=r"folder './models/nothing' does not exist"):
        check_embedding_spec("./models/nothing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a file; pass the model's folder"):
        check_embedding_spec(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match=r"must be 'default'"):
        check_embedding_spec("  ")
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(ValueError, match=r"could not load embedding model .*empty_model.*'default'"):
        load_embedding(str(tmp_path / "empty_model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # downloads allowed: a hub name is left to the loader
    assert check_embedding_spec("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
