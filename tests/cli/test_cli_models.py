"""``deepmemory models --delete`` on a small store with hand-made models (no embedding model
needed), and option values refused before anything runs: bad input is refused before anything changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.cli import main
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

DIM = 8


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A persisted store with models m1 (active), m2 and m3."""
    vectors = np.random.default_rng(0).normal(size=(6, DIM)).astype(np.float32)
    built = DeepMemoryVectorStore()
    built.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=v.tolist()) for i, v in enumerate(vectors)])
    path = tmp_path / "store"
    built.persist(str(path))
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    for name in ("m1", "m2", "m3"):
        model = AdapterMemoryModel(DIM, memory_ids=["n1"], memory_vectors=vectors[1][None, :])
        loaded.deep_memory.add_model(name, model, activate=name == "m1")
    return path


def kept(path: Path) -> list[str]:
    return sorted(m["name"] for m in DeepMemoryVectorStore.from_persist_path(str(path)).deep_memory.list_models())


@pytest.mark.parametrize("bad, why", [("nope", "no Deep Memory model 'nope'"),
                                      ("m1", "m1 is the active model and cannot be deleted")])
def test_delete_with_one_bad_name_deletes_nothing(store: Path, bad: str, why: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--store", str(store), "--delete", "m2", "--delete", bad]) == 2
    captured = capsys.readouterr()
    assert why in captured.err and "Deleted" not in captured.out
    assert kept(store) == ["m1", "m2", "m3"]
    assert main(["models", "--store", str(store), "--delete", "m2", "--delete", "m3"]) == 0
    assert kept(store) == ["m1"]


def test_a_negative_chunk_overlap_is_refused_naming_the_value(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.html").write_text("<html><head><title>A</title></head><body><p>Hello.</p></body></html>")
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(tmp_path / "site"), "--store", str(tmp_path / "store"), "--chunk-overlap", "-5", "-q"])
    assert info.value.code == 2
    assert "--chunk-overlap: expected an integer >= 0, got '-5'" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
