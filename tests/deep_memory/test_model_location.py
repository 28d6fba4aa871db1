"""A model location's ``catalog.json`` that parses as JSON but holds wrong fields (hand-edited,
written by a broken tool) is refused naming the file, the field and the fix: never a bare
KeyError/TypeError, and never an active model that does not exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from llama_index_deepmemory import DeepMemoryVectorStore, persistence
from llama_index_deepmemory.deep_memory import state
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

DIM = 8
DAMAGE = {
    "active missing": (lambda c: c.pop("active"), "active '(missing)'"),
    "active unknown": (lambda c: c.update(active="ghost"), "active 'ghost', which is not in its 'models' table"),
    "active_version a str": (lambda c: c.update(active_version="x"), "active_version 'x', expected an int >= 0"),
    "next_number null": (lambda c: c.update(next_number=None), "next_number None, expected an int >= 0"),
    "format_version a str": (lambda c: c.update(format_version="2"), "format_version '2', expected an int >= 0"),
    "folder a number": (lambda c: c["models"]["m"].update(folder=3), "no valid 'models' table"),
}


@pytest.fixture()
def persisted(tmp_path: Path) -> Path:
    vectors = np.random.default_rng(0).normal(size=(6, DIM)).astype(np.float32)
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=v.tolist()) for i, v in enumerate(vectors)])
    store.deep_memory.add_model("m", AdapterMemoryModel(DIM, memory_ids=["n1"], memory_vectors=vectors[1][None, :]),
                                activate=True)
    store.persist(str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_catalog_with_wrong_fields_is_refused_naming_the_file_the_field_and_the_fix(persisted: Path,
                                                                                      damage: str) -> None:
    change, want = DAMAGE[damage]
    catalog_path = next(persisted.glob("dm-*")) / "catalog.json"
    catalog = json.loads(catalog_path.read_text())
    change(catalog)
    catalog_path.write_text(json.dumps(catalog))
    for load in (lambda: DeepMemoryVectorStore.from_persist_path(str(persisted)),
                 lambda: state.ModelLocation.open(catalog_path.parent)):  # as a model_dir is opened
        with pytest.raises(persistence.CorruptStoreError) as info:
            load()
        message = str(info.value)
        assert str(catalog_path) in message and want in message and "restore it from a backup" in message, message


@pytest.mark.parametrize("damage", [{"progress": "x"}, {"val_after": [1]}, {"val_after": {"recall@10": "high"}},
                                    {"started_at": "x", "status": "running"}])
def test_a_job_record_with_wrong_types_is_skipped_naming_it_and_the_rest_is_listed(
        persisted: Path, damage: dict, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from llama_index_deepmemory.cli import main

    jobs = next(persisted.glob("dm-*")) / "jobs"
    jobs.mkdir(exist_ok=True)
    good = {"job_id": "job_4", "status": "completed", "progress": 1.0, "model_name": "m",
            "val_before": {"recall@10": 0.5}, "val_after": {"recall@10": 0.75}}
    (jobs / "job_4.json").write_text(json.dumps(good))
    (jobs / "job_5.json").write_text(json.dumps({"job_id": "job_5", **damage}))
    dm = DeepMemoryVectorStore.from_persist_path(str(persisted)).deep_memory
    with caplog.at_level("WARNING"):
        listed = dm.list_jobs()
    assert [j["job_id"] for j in listed] == ["job_4"] and listed[0]["val_after"] == {"recall@10": 0.75}
    assert str(jobs / "job_5.json") in caplog.text and "wrong type" in caplog.text
    assert [(m["name"], m["job_id"]) for m in dm.list_models()] == [("m", "job_4")]
    capsys.readouterr()
    assert main(["models", "--store", str(persisted)]) == 0 and "m  job job_4" in capsys.readouterr().out
    assert main(["status", "--store", str(persisted)]) == 0


@pytest.mark.parametrize("data", [b'{"kind": "llama-index-deepmemory/mo', b"\xff\xfe", b"[]"])
def test_a_truncated_or_foreign_catalog_is_refused_naming_the_file_and_the_fix(persisted: Path, data: bytes) -> None:
    catalog_path = next(persisted.glob("dm-*")) / "catalog.json"
    catalog_path.write_bytes(data)
    with pytest.raises(persistence.CorruptStoreError) as info:
        DeepMemoryVectorStore.from_persist_path(str(persisted))
    assert str(catalog_path) in str(info.value) and "restore it from a backup" in str(info.value), str(info.value)
