"""Many processes, one truth: Deep Memory models shared through a store's folder or ``model_dir``.

Real subprocesses (``tests/shared_child.py``) train at once over one folder and serve what another
process trained without a restart; handles of one embedded folder refuse to persist over each
other; a damaged manifest never lets ``persist`` delete a snapshot; models can be deleted and
pruned, never the active one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from llama_index_deepmemory import DeepMemoryVectorStore, persistence
from llama_index_deepmemory.deep_memory import state
from shared_child import FAST, N_TRAIN, ranking, task

CHILD = Path(__file__).resolve().parents[1] / "shared_child.py"
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}


def built(path: Path) -> DeepMemoryVectorStore:
    """The rotation task's store, persisted at ``path`` and loaded back from there."""
    t = task()
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=i, text=f"document {i}", embedding=v.tolist()) for i, v in zip(t.ids, t.docs)])
    store.persist(str(path))
    return DeepMemoryVectorStore.from_persist_path(str(path))


def train_here(store: DeepMemoryVectorStore, seed: int = 0, **options) -> str:
    t = task()
    return store.deep_memory.train(t.texts[:N_TRAIN], t.relevance[:N_TRAIN], embedding=t.queries[:N_TRAIN],
                                   seed=seed, **{**FAST, **options})


def train_beside_a_child(command: list[str], store: DeepMemoryVectorStore) -> list[dict]:
    """Train ``store`` here while a child process trains by ``command``, both at the same moment;
    the two reports (this process's first)."""
    child = subprocess.Popen([sys.executable, str(CHILD), *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        ready = child.stdout.readline()
        assert ready and json.loads(ready)["ready"], child.stderr.read()[-2000:]
        child.stdin.write("go\n")
        child.stdin.flush()
        job = train_here(store, seed=1)
        mine = {"job": job, "model": store.deep_memory.status(job)["model_name"]}
        out, err = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    return [mine, json.loads(out.strip().splitlines()[-1])]


@pytest.mark.slow
def test_two_processes_training_one_store_folder_keep_both_models_and_jobs(tmp_path: Path) -> None:
    path = tmp_path / "store"
    reports = train_beside_a_child(["train", str(path), "2"], built(path))
    jobs = sorted(r["job"] for r in reports)
    models = sorted(r["model"] for r in reports)
    assert jobs == ["job_1", "job_2"] and models == ["model_1", "model_2"], reports
    loaded = DeepMemoryVectorStore.from_persist_path(str(path)).deep_memory
    assert sorted(m["name"] for m in loaded.list_models()) == models
    assert sorted((j["job_id"], j["status"]) for j in loaded.list_jobs()) == [("job_1", "completed"), ("job_2", "completed")]
    # the first to finish activated its model; the second, when it overlapped, found the activation
    # changed while it trained and left it as it was
    assert loaded.get_model() in models
    first, second = sorted(loaded.list_jobs(), key=lambda j: j["finished_at"])
    if second["started_at"] < first["finished_at"]:
        assert loaded.get_model() == first["model_name"], (first, second)
        assert "was left as is" in second["note"] or "did not beat" in second["note"], second["note"]
    print(f"\ntwo trainings at once on one folder: kept {models}, active {loaded.get_model()}")


@pytest.mark.slow
def test_two_processes_training_over_one_model_dir_keep_both(tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    from shared_child import engine_store

    model_dir = tmp_path / "models"
    reports = train_beside_a_child(["train-engine", str(model_dir), "2"], engine_store(str(model_dir)))
    assert sorted(r["model"] for r in reports) == ["model_1", "model_2"], reports
    location = state.ModelLocation.open(model_dir)
    assert sorted(location.catalog()["models"]) == ["model_1", "model_2"]
    assert sorted(j["job_id"] for j in location.jobs()) == ["job_1", "job_2"]
    assert len(list((model_dir / "models").iterdir())) == 2  # one folder per model, none left half-written


def test_a_model_trained_in_one_process_is_served_by_another_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = built(path)
    server = subprocess.Popen([sys.executable, str(CHILD), "serve", str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert json.loads(server.stdout.readline())["ready"]
        job = train_here(store)
        name = store.deep_memory.status(job)["model_name"]
        assert store.deep_memory.get_model() == name
        expected = ranking(store)
        server.stdin.write(f"wait {name}\n")
        server.stdin.flush()
        seen = json.loads(server.stdout.readline())
        assert seen["active"] == name and seen["ids"] == expected, seen
        assert seen["seconds"] <= state.REFRESH_SECONDS + 2.0  # the documented delay, plus a loaded machine
        store.deep_memory.set_model(None)  # deactivation: one recorded change the server sees too
        server.stdin.write("wait none\n")
        server.stdin.flush()
        off = json.loads(server.stdout.readline())
        assert off["active"] is None and str(off["ids"]).startswith("error: deep_memory=True was requested"), off
        print(f"\nserved by another process after {seen['seconds']:.2f}s; deactivation seen after {off['seconds']:.2f}s")
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()
        server.stderr.close()


def test_an_activation_made_during_a_training_is_not_undone(tmp_path: Path) -> None:
    path = tmp_path / "store"
    trainer = built(path)
    other = DeepMemoryVectorStore.from_persist_path(str(path))
    first = trainer.deep_memory.status(train_here(trainer))["model_name"]
    assert other.deep_memory.refresh() == first
    job = train_here(trainer, seed=3, background=True, epochs=60, patience=60)
    began = time.monotonic()
    while trainer.deep_memory.wait(job, timeout=0.01)["progress"] == 0 and time.monotonic() - began < 60:
        pass  # until it has started its epochs
    other.deep_memory.set_model(None)  # `deepmemory activate none` while it trains
    done = trainer.deep_memory.wait(job, timeout=120)
    assert done["status"] == "completed" and trainer.deep_memory.get_model() is None
    assert other.deep_memory.refresh() is None
    assert done["model_name"] in [m["name"] for m in other.deep_memory.list_models()]  # kept, not active
    assert "was left as is" in done["note"] or "did not beat" in done["note"], done["note"]


def test_a_stale_handle_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "store"
    built(path)
    a = DeepMemoryVectorStore.from_persist_path(str(path))
    b = DeepMemoryVectorStore.from_persist_path(str(path))
    rng = np.random.default_rng(5)
    for handle, tag in ((a, "a"), (b, "b")):
        handle.add([TextNode(id_=f"{tag}{i}", text=tag, embedding=rng.normal(size=16).tolist()) for i in range(10)])
    a.persist(str(path))
    with pytest.raises(persistence.StaleStoreError, match=r"changed since this store was loaded.*load it again.*"
                                                          r"persist to another path.*overwrite=True"):
        b.persist(str(path))
    on_disk = DeepMemoryVectorStore.from_persist_path(str(path))
    assert len(on_disk) == 160 and len(on_disk.get_nodes(node_ids=[f"a{i}" for i in range(10)])) == 10
    b.persist(str(tmp_path / "elsewhere"))  # the fix the error names: b's nodes are kept there
    assert len(DeepMemoryVectorStore.from_persist_path(str(tmp_path / "elsewhere"))) == 160
    a.persist(str(path))  # the handle that wrote last may go on writing
    b.persist(str(path), overwrite=True)
    assert len(DeepMemoryVectorStore.from_persist_path(str(path)).get_nodes(node_ids=["b0", "a0"])) == 1


def test_a_damaged_manifest_never_lets_persist_delete_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = built(path)
    train_here(store)
    manifest = (path / persistence.MANIFEST).read_bytes()
    kept = sorted(p.name for p in path.iterdir())
    (path / persistence.MANIFEST).write_bytes(manifest[: len(manifest) // 2])  # truncated, not missing
    for writer, overwrite in ((store, False), (DeepMemoryVectorStore(), True)):
        with pytest.raises(persistence.CorruptStoreError, match="cannot be read.*Nothing was changed: restore"):
            writer.persist(str(path), overwrite=overwrite)
    assert sorted(p.name for p in path.iterdir()) == kept
    (path / persistence.MANIFEST).write_bytes(manifest)  # restored from a backup: everything is there
    restored = DeepMemoryVectorStore.from_persist_path(str(path))
    assert len(restored) == 150 and restored.deep_memory.get_model() == "model_1"


def test_delete_and_prune_models_never_the_active_one(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = built(path)
    other = DeepMemoryVectorStore.from_persist_path(str(path))
    for seed in range(4):
        train_here(store, seed=seed, epochs=2)
    dm = store.deep_memory
    names = [m["name"] for m in dm.list_models()]
    assert names == ["model_1", "model_2", "model_3", "model_4"]
    dm.set_model("model_2")
    with pytest.raises(ValueError, match="'model_2' is the active Deep Memory model and cannot be deleted"):
        dm.delete_model("model_2")
    with pytest.raises(ValueError, match="unknown Deep Memory model 'model_9'"):
        dm.delete_model("model_9")
    dm.delete_model("model_1")
    assert [m["name"] for m in other.deep_memory.list_models()] == ["model_2", "model_3", "model_4"]
    assert other.deep_memory.prune_models(keep=1) == ["model_3"]
    assert dm.refresh() == "model_2" and [m["name"] for m in dm.list_models()] == ["model_2", "model_4"]
    location = dm.location
    assert len(list((location.root / "models").iterdir())) == 2  # the files went with them
    events = [json.loads(line)["event"] for line in (location.root / "events.jsonl").read_text().splitlines()]
    assert events.count("add") == 4 and events.count("delete") == 2 and "activate" in events
    memory_only = DeepMemoryVectorStore()  # the same rules for a store built in memory
    t = task()
    memory_only.add([TextNode(id_=i, text="d", embedding=v.tolist()) for i, v in zip(t.ids, t.docs)])
    train_here(memory_only, epochs=2)
    memory_only.deep_memory.set_model("model_1")
    with pytest.raises(ValueError, match="cannot be deleted"):
        memory_only.deep_memory.delete_model("model_1")
    train_here(memory_only, seed=1, epochs=2)
    memory_only.deep_memory.set_model("model_2")
    assert memory_only.deep_memory.prune_models(keep=0) == ["model_1"]


def test_a_store_persisted_by_an_earlier_version_converts_on_its_next_persist(tmp_path: Path) -> None:
    """Snapshots that kept the models inside the generation still load; the next persist moves
    them to the shared location (old manifest: format 1, deep_memory.json in the generation)."""
    store = built(tmp_path / "new")
    train_here(store)
    meta, arrays = store.deep_memory.to_state()
    path = tmp_path / "old"
    shutil.copytree(tmp_path / "new", path)
    manifest = json.loads((path / persistence.MANIFEST).read_text())
    gen = path / manifest["generation"]
    persistence.write_json(gen / "deep_memory.json", meta)
    persistence.write_arrays(gen / "deep_memory.safetensors", arrays)
    for name in state.LEGACY_FILES:
        manifest["files"][name] = {"bytes": (gen / name).stat().st_size, "sha256": persistence.sha256_file(gen / name)}
    shutil.rmtree(path / manifest.pop("sides")["deep_memory"])
    (path / persistence.MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    old = DeepMemoryVectorStore.from_persist_path(str(path))
    assert old.deep_memory.location is None and old.deep_memory.get_model() == "model_1"
    old.persist(str(path))
    assert old.deep_memory.location is not None
    again = DeepMemoryVectorStore.from_persist_path(str(path))
    assert again.deep_memory.get_model() == "model_1" and ranking(again) == ranking(store)


def test_a_job_whose_process_died_shows_as_failed(tmp_path: Path) -> None:
    """A trainer killed mid-job leaves its record 'running'; other processes show it as failed."""
    path = tmp_path / "store"
    store = built(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    job_id, _ = store.deep_memory.location.reserve_job(
        {"job_id": "", "status": "running", "owner": f"{state.owner().rsplit(':', 1)[0]}:{dead.pid}"})
    row = next(j for j in store.deep_memory.list_jobs() if j["job_id"] == job_id)
    assert row["status"] == "failed" and f"process {dead.pid} ended" in row["error"], row
    assert train_here(store, epochs=2) == "job_2"  # numbering goes on past it


def test_a_handle_whose_store_was_replaced_keeps_serving_and_may_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old = built(path)
    train_here(old, epochs=2)
    old.deep_memory.set_model("model_1")
    DeepMemoryVectorStore().persist(str(path), overwrite=True)  # another store replaces it, models and all
    assert old.deep_memory.refresh() == "model_1" and old.deep_memory.active_model() is not None
    with pytest.raises(state.LocationGoneError, match="persisted over by another handle"):
        old.deep_memory.set_model(None)
    with pytest.raises(persistence.StaleStoreError):
        old.persist(str(path))
    old.persist(str(path), overwrite=True)  # asked for: its nodes and models replace the new store
    again = DeepMemoryVectorStore.from_persist_path(str(path))
    assert len(again) == 150 and again.deep_memory.get_model() == "model_1"
