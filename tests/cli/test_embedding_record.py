"""The store remembers its embedding (issue 26, finding 6): ``persist`` records the model,
``from_persist_path`` without ``embed_model=`` loads it (or refuses an API model with the fix), and
the CLI's ``query`` and ``chat`` take ``--embed-model`` like ``ingest``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_index.core.schema import TextNode

from llama_index_deepmemory import DeepMemoryVectorStore, default_embedding
from llama_index_deepmemory.cli import main
from llama_index_deepmemory.embeddings import RECORD_FILE, embedding_spec
from hash_embedding import HashEmbedding


def small_store(path: Path, embed) -> DeepMemoryVectorStore:
    texts = ["Bake sourdough bread overnight.", "Fix a flat bicycle tire with a patch.", "Brew espresso at nine bars."]
    vectors = embed.get_text_embedding_batch(texts)
    store = DeepMemoryVectorStore(embed_model=embed)
    store.add([TextNode(id_=f"node_{i}", text=t, embedding=v) for i, (t, v) in enumerate(zip(texts, vectors))])
    store.persist(str(path))
    return store


def test_the_bundled_model_is_recorded_and_loaded_again(tmp_path: Path, minilm) -> None:
    embed = default_embedding()
    small_store(tmp_path / "store", embed)
    assert json.loads((tmp_path / "store" / RECORD_FILE).read_text())["embed_model"] == "default"
    reloaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"))
    assert reloaded.embed_model is embed  # the same cached instance, no OpenAI default anywhere
    assert DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), load_recorded_embedding=False).embed_model is None


def test_an_api_model_is_refused_at_load_with_the_fix(tmp_path: Path) -> None:
    embed = HashEmbedding()
    small_store(tmp_path / "store", embed)
    assert embedding_spec(embed).startswith("python:HashEmbedding(")
    with pytest.raises(ValueError, match=r"cannot be loaded from its name; pass the same model: .*embed_model=") as caught:
        DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"))
    assert len(str(caught.value).splitlines()) == 1
    assert DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), embed_model=embed).embed_model is embed


def test_query_and_chat_take_embed_model(tmp_path: Path, minilm, capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = tmp_path / "store"
    small_store(store_dir, default_embedding())
    assert main(["query", "--store", str(store_dir), "espresso pressure", "--embed-model", "default", "-q"]) == 0
    assert "node_2" in capsys.readouterr().out
    missing = str(tmp_path / "no-such-model")
    for argv in (["query", "--store", str(store_dir), "espresso"],
                 ["chat", "--store", str(store_dir), "--conversation", "c1"]):
        assert main([*argv, "--embed-model", missing, "-q"]) != 0
        err = capsys.readouterr().err
        assert "no-such-model" in err and "does not exist" in err, err
