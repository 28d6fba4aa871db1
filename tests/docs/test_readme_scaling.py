"""The README's 'Scaling out' example runs as written, over an in-process Qdrant."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("qdrant_client")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")


def scaling_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## Scaling out[^\n]*\n.*?```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its '## Scaling out' python block"
    return match.group(1)


def test_readme_scaling_out_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], minilm
) -> None:
    from keyless import make_beir

    code = scaling_example()
    assert len(code.strip().splitlines()) <= 20, "keep the README example short"
    make_beir(tmp_path / "scifact")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_INDEX_DEEPMEMORY_CACHE", str(tmp_path / "cache"))  # the embedding cache, here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    beir = namespace["beir"]
    with pytest.raises(RuntimeError, match="closed"):  # the block closes its client (issue 26: no "Exception ignored" at exit)
        namespace["client"].get_collections()
    # the same two lines open the closed folder again, with the trained model from model_dir
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from llama_index_deepmemory import DeepMemoryVectorStore

    client = QdrantClient(path="qdrant-data")
    store = DeepMemoryVectorStore(vector_store=QdrantVectorStore(client=client, collection_name="scifact"),
                                  model_dir="deepmemory-models", embed_model=minilm)
    assert type(store.vector_store).__name__ == "QdrantVectorStore" and len(store) == len(beir.nodes())
    assert store.deep_memory.get_model() is not None and (tmp_path / "deepmemory-models" / "catalog.json").is_file()
    test_queries, test_relevance = beir.query_relevance("test")
    result = store.deep_memory.evaluate(test_queries, test_relevance, top_k=(1,))
    client.close()
    assert result["with model"]["recall@1"] >= result["without model"]["recall@1"] + 0.3
    assert out.strip().splitlines()[-1] == test_relevance[0][0][0]  # the printed top hit is right
