"""``store.deep_memory.add_model``: a hand-made model kept in memory, or recorded in the shared
model location (every handle sees it), and the refusals (bad name, taken name, not a model)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

DIM = 8


class _Negated(DeepMemoryModel):
    """Test-only model, not registered (so it cannot be shared): queries negated."""

    kind = "test-negated"

    def transform_queries(self, queries: np.ndarray) -> np.ndarray:
        return -queries


def _vectors() -> np.ndarray:
    v = np.random.default_rng(0).normal(size=(12, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _store() -> DeepMemoryVectorStore:
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=v.tolist()) for i, v in enumerate(_vectors())])
    return store


def _memory_model() -> AdapterMemoryModel:
    """Memory scores n5 twice as high as n9's own vector scores n9: n5 leads for n9's query."""
    return AdapterMemoryModel(DIM, memory_ids=["n5"], memory_vectors=2 * _vectors()[9][None, :])


def _top(store: DeepMemoryVectorStore, q: np.ndarray, deep_memory: bool) -> list[str]:
    return store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=3), deep_memory=deep_memory).ids


def test_in_memory_add_keeps_the_model_and_activates_only_when_asked() -> None:
    store, q = _store(), _vectors()[9]
    store.deep_memory.add_model("m", _memory_model())
    assert store.deep_memory.get_model() is None and store.deep_memory.location is None
    assert [(m["name"], m["active"]) for m in store.deep_memory.list_models()] == [("m", False)]
    store.deep_memory.set_model("m")
    assert _top(store, q, True)[:2] == ["n5", "n9"] and _top(store, q, False)[0] == "n9"
    # a model class the tests made (unregistered: no shared location could load it) is kept in memory
    store.deep_memory.add_model("neg", _Negated(DIM), activate=True)
    assert store.deep_memory.get_model() == "neg"
    want = [f"n{i}" for i in np.argsort(_vectors() @ -q, kind="stable")[::-1][:3]]  # brute force, negated query
    assert _top(store, q, True) == want


def test_a_model_added_to_a_loaded_store_is_seen_by_another_handle(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    _store().persist(path)
    a, b = DeepMemoryVectorStore.from_persist_path(path), DeepMemoryVectorStore.from_persist_path(path)
    assert a.deep_memory.location is not None
    a.deep_memory.add_model("hand", _memory_model(), activate=True)
    assert b.deep_memory.refresh() == "hand"  # recorded in the shared location, not only in a's memory
    q = _vectors()[9]
    assert _top(b, q, True)[:2] == ["n5", "n9"] == _top(a, q, True)[:2]
    fresh = DeepMemoryVectorStore.from_persist_path(path).deep_memory
    assert [(m["name"], m["active"]) for m in fresh.list_models()] == [("hand", True)]
    with pytest.raises(ValueError, match=r"'hand' is already kept; delete_model\('hand'\) first"):
        b.deep_memory.add_model("hand", DeepMemoryModel(DIM))  # taken in another handle: refused there too
    with pytest.raises(TypeError, match=r"_Negated \(kind 'test-negated'\) cannot be shared.*in-memory store"):
        a.deep_memory.add_model("neg", _Negated(DIM))
    assert [m["name"] for m in fresh.list_models()] == ["hand"] and b.deep_memory.get_model() == "hand"


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "two\nlines", "nul\0", 3, None])
def test_bad_names_are_refused_naming_the_value(name) -> None:
    store = _store()
    want = rf"non-empty str without path separators.*got {re.escape(repr(name))}; pick a plain name"
    with pytest.raises(ValueError, match=want):
        store.deep_memory.add_model(name, DeepMemoryModel(DIM))
    assert store.deep_memory.list_models() == []


def test_a_taken_name_and_a_non_model_are_refused_and_nothing_changes() -> None:
    store = _store()
    store.deep_memory.add_model("m", _memory_model(), activate=True)
    kept = store.deep_memory.active_model()
    with pytest.raises(ValueError, match=r"'m' is already kept; delete_model\('m'\) first or pick another name"):
        store.deep_memory.add_model("m", DeepMemoryModel(DIM), activate=True)
    with pytest.raises(TypeError, match="needs a DeepMemoryModel, got dict"):
        store.deep_memory.add_model("x", {"dim": DIM})
    assert store.deep_memory.active_model() is kept and [m["name"] for m in store.deep_memory.list_models()] == ["m"]


# --- names a training uses -------------------------------------------------------------------
def _rotation() -> tuple[DeepMemoryVectorStore, "RotationTask"]:
    from synthetic import RotationTask

    t = RotationTask(n_docs=60, dim=DIM, n_queries=40, seed=0)
    return t.store(), t


TINY = dict(epochs=1, batch_size=32, query_memory=False, refit=False)


def test_training_never_replaces_a_model_added_under_the_name_it_would_use() -> None:
    store, t = _rotation()
    hand = AdapterMemoryModel(DIM, memory_ids=["node_5"], memory_vectors=t.docs[5][None, :])
    store.deep_memory.add_model("model_1", hand)
    job = store.deep_memory.train(t.texts, t.relevance, embedding=t.queries, **TINY)
    trained = store.deep_memory.status(job)["model_name"]
    assert trained != "model_1" and store.deep_memory.kept_model("model_1") is hand
    assert sorted(m["name"] for m in store.deep_memory.list_models()) == sorted(["model_1", trained])


def test_a_model_is_never_added_under_the_name_a_running_training_keeps_its_model_as(tmp_path: Path) -> None:
    store, t = _rotation()
    path = str(tmp_path / "store")
    store.persist(path)
    a, b = DeepMemoryVectorStore.from_persist_path(path), DeepMemoryVectorStore.from_persist_path(path)
    job = a.deep_memory.train(t.texts, t.relevance, embedding=t.queries, background=True, **TINY)
    assert job == "job_1"
    hand = AdapterMemoryModel(DIM, memory_ids=["node_5"], memory_vectors=t.docs[5][None, :])
    try:
        with pytest.raises(ValueError, match=r"'model_1' is the name training job job_1 \((queued|running)\) will "
                                             r"keep its model as; pick another name"):
            b.deep_memory.add_model("model_1", hand)
    finally:
        assert a.deep_memory.wait(job, timeout=60)["status"] == "completed"
    fresh = DeepMemoryVectorStore.from_persist_path(path).deep_memory
    assert [(m["name"], m["job_id"]) for m in fresh.list_models()] == [("model_1", "job_1")]


def test_a_shared_location_never_records_a_second_model_under_a_kept_name(tmp_path: Path) -> None:
    from llama_index_deepmemory.deep_memory import state

    location = state.ModelLocation.open(tmp_path / "models")
    first = _memory_model()
    location.add_model("hand", first, None, activate=True, expected_active_version=None)
    with pytest.raises(ValueError, match=r"model named 'hand' is already kept in .*; delete it first or pick another"):
        location.add_model("hand", DeepMemoryModel(DIM), None, activate=False, expected_active_version=None)
    catalog = location.catalog()
    assert list(catalog["models"]) == ["hand"] and catalog["active"] == "hand"
    kept = location.load_model(catalog["models"]["hand"]["folder"])
    assert np.array_equal(kept.to_state()[1]["memory_vectors"], first.to_state()[1]["memory_vectors"])
    assert len(list((tmp_path / "models" / "models").iterdir())) == 1  # the refused one left no folder


# --- a damaged model file ----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing arrays", "truncated arrays", "missing model.json"])
def test_a_damaged_model_file_is_refused_naming_it_and_the_fix_and_the_fix_keeps_the_others(
        tmp_path: Path, damage: str) -> None:
    import json

    path = tmp_path / "store"
    _store().persist(str(path))
    a = DeepMemoryVectorStore.from_persist_path(str(path))
    a.deep_memory.add_model("keep", _memory_model(), activate=True)
    a.deep_memory.add_model("hurt", DeepMemoryModel(DIM))
    location = a.deep_memory.location.root
    catalog = json.loads((location / "catalog.json").read_text())
    folder = location / "models" / catalog["models"]["hurt"]["folder"]
    if damage == "missing arrays":
        (folder / "arrays.safetensors").unlink()
    elif damage == "truncated arrays":
        data = (folder / "arrays.safetensors").read_bytes()
        (folder / "arrays.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (folder / "model.json").unlink()
    with pytest.raises(ValueError) as info:
        DeepMemoryVectorStore.from_persist_path(str(path))
    message = str(info.value)
    assert "'hurt' cannot be loaded" in message and str(folder) in message, message
    assert f"remove 'hurt' from 'models'" in message and str(location / "catalog.json") in message, message
    # the fix the message names: the store loads again with its other model, still active
    del catalog["models"]["hurt"]
    (location / "catalog.json").write_text(json.dumps(catalog))
    fresh = DeepMemoryVectorStore.from_persist_path(str(path)).deep_memory
    assert [(m["name"], m["active"]) for m in fresh.list_models()] == [("keep", True)]


CHURN = """
import sys, time
import numpy as np
from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
dm = DeepMemoryVectorStore.from_persist_path(sys.argv[1]).deep_memory
print("ready", flush=True)
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    dm.add_model("churn", AdapterMemoryModel(8, memory_ids=["n1"], memory_vectors=np.ones((1, 8), np.float32)))
    dm.delete_model("churn")
    n += 1
print(n)
"""


def test_a_refresh_while_another_process_deletes_models_never_fails(tmp_path: Path) -> None:
    """Another process adds and deletes a model over and over: this one's refresh (and every call
    that refreshes: list_models, set_model, ...) reads the catalog again, never failing on a model
    folder deleted between its reads."""
    import os
    import subprocess
    import sys

    path = str(tmp_path / "store")
    _store().persist(path)
    a = DeepMemoryVectorStore.from_persist_path(path)
    a.deep_memory.add_model("steady", _memory_model(), activate=True)
    child = subprocess.Popen([sys.executable, "-c", CHURN, path, "3"], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "ready"
        errors, refreshes = [], 0
        while child.poll() is None:
            try:
                assert a.deep_memory.refresh() == "steady"
                refreshes += 1
            except (OSError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        churned = int(child.communicate(timeout=30)[0].strip())
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and churned > 10 and refreshes > 100
    assert errors == [], f"{len(errors)} of {len(errors) + refreshes} refreshes failed, e.g. {errors[0]}"
    assert [m["name"] for m in a.deep_memory.list_models()] == ["steady"]


@pytest.mark.parametrize("call, bad", [
    (lambda dm: dm.set_model(["m"]), "model name is a str such as 'model_2' (list_models() names them), got ['m']"),
    (lambda dm: dm.delete_model(["m"]), "model name is a str such as 'model_2' (list_models() names them), got ['m']"),
    (lambda dm: dm.kept_model({"m": 1}), "model name is a str such as 'model_2' (list_models() names them), got {'m': 1}"),
    (lambda dm: dm.training_data(["m"]), "model name is a str such as 'model_2' (list_models() names them), got ['m']"),
    (lambda dm: dm.status(["job_1"]), "job id is a str such as 'job_1' (list_jobs() names them), got ['job_1']"),
    (lambda dm: dm.wait(["job_1"]), "job id is a str such as 'job_1' (list_jobs() names them), got ['job_1']"),
])
def test_a_model_name_or_job_id_of_the_wrong_type_is_refused_naming_it(call, bad: str) -> None:
    store = _store()
    store.deep_memory.add_model("m", _memory_model(), activate=True)
    with pytest.raises(TypeError, match=re.escape(bad)):
        call(store.deep_memory)
    assert store.deep_memory.get_model() == "m" and [m["name"] for m in store.deep_memory.list_models()] == ["m"]


def test_a_store_saved_while_a_job_runs_never_shows_that_job_running_forever(tmp_path: Path) -> None:
    """The copy persisted mid-job never receives the job's model: its record there says so
    (failed, interrupted), as a store saved by earlier versions did, not 'running' while the
    process that saved it lives."""
    store, t = _rotation()
    job = store.deep_memory.train(t.texts, t.relevance, embedding=t.queries, background=True, **TINY)
    path = str(tmp_path / "store")
    store.persist(path)
    assert store.deep_memory.wait(job, timeout=60)["status"] == "completed"  # here, in memory
    copy = DeepMemoryVectorStore.from_persist_path(path).deep_memory
    (row,) = [j for j in copy.list_jobs() if j["job_id"] == job]
    assert row["status"] == "failed" and "interrupted: the store was saved while" in row["error"], row
    assert copy.list_models() == []


def test_a_damaged_training_record_is_refused_naming_its_file_and_the_fix(tmp_path: Path) -> None:
    import json
    from argparse import Namespace

    from llama_index_deepmemory import train_sources
    from llama_index_deepmemory.cli_common import UserError

    store, t = _rotation()
    path = str(tmp_path / "store")
    store.persist(path)
    a = DeepMemoryVectorStore.from_persist_path(path)
    job = a.deep_memory.train(t.texts, t.relevance, embedding=t.queries, **TINY)
    name = a.deep_memory.status(job)["model_name"]
    a.deep_memory.set_model(name)
    location = a.deep_memory.location.root
    model_json = location / "models" / json.loads((location / "catalog.json").read_text())["models"][name]["folder"] / "model.json"
    info = json.loads(model_json.read_text())
    info["training_record"]["relevance"][0] = [["node_1", "heavy"]]
    model_json.write_text(json.dumps(info))
    fresh = DeepMemoryVectorStore.from_persist_path(path)
    with pytest.raises(ValueError, match=re.escape(f"the training record of {name} in {str(model_json)!r} is malformed")):
        fresh.deep_memory.training_data()
    with pytest.raises(UserError, match="pass --fresh to train on the given sources only"):
        train_sources.previous_data(fresh, fresh=False)
    assert train_sources.previous_data(fresh, fresh=True) is None
