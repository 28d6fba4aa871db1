"""Persistence round trips, atomic writes and corruption detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory import DeepMemoryVectorStore, persistence
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel
from llama_index_deepmemory.deep_memory.models import register_model

DIM = 12


def make_nodes(n: int, seed: int = 0) -> list[TextNode]:
    rng = np.random.default_rng(seed)
    return [
        TextNode(
            id_=f"n{i}",
            text=f"text {i} \u00e9\n\"quoted\"",
            metadata={"group": i % 4, "name": f"name{i}", "vals": [i, i + 0.5]},
            embedding=rng.normal(size=DIM).tolist(),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i % 7}")},
        )
        for i in range(n)
    ]


def all_results(store, seed: int = 1, k: int = 8):
    rng = np.random.default_rng(seed)
    out = []
    for q in rng.normal(size=(5, DIM)):
        r = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k))
        out.append((r.ids, np.round(r.similarities, 5).tolist()))
    return out


@register_model
class ScaledQuery(DeepMemoryModel):
    """Test-only model with array state: queries scaled per dimension."""

    kind = "test-scaled-query"

    def __init__(self, dim: int, metric: str = "cosine", scale=None) -> None:
        super().__init__(dim, metric)
        self.scale = np.ones(dim, np.float32) if scale is None else np.asarray(scale, np.float32)

    def transform_queries(self, queries):
        return queries * self.scale

    def to_state(self):
        meta, _ = super().to_state()
        return meta, {"scale": self.scale}

    @classmethod
    def from_state(cls, meta, arrays):
        return cls(int(meta["dim"]), meta["metric"], arrays["scale"])


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_round_trip(tmp_path, factory, metric):
    store = DeepMemoryVectorStore(metric=metric, index_factory=factory, nprobe=4 if "IVF" in factory else None)
    store.add(make_nodes(300))
    store.delete("doc3")
    store.delete_nodes(node_ids=["n1", "n2"])
    store.add(make_nodes(5, seed=9))  # replaces n0..n4, reusing freed slots where possible
    scale = np.linspace(0.5, 1.5, DIM)
    store.deep_memory.add_model("s", ScaledQuery(DIM, metric, scale), activate=True)  # a hand-made model
    path = tmp_path / "store"
    store.persist(str(path))
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    assert (loaded.dim, loaded.metric, loaded.index_factory, len(loaded)) == (DIM, metric, factory, len(store))
    assert loaded.get_nodes() == store.get_nodes()
    assert all_results(loaded) == all_results(store)
    q = VectorStoreQuery(query_embedding=[1.0] * DIM, similarity_top_k=5)
    assert loaded.query(q, deep_memory=True).ids == store.query(q, deep_memory=True).ids
    np.testing.assert_array_equal(loaded.deep_memory.active_model().scale, scale.astype(np.float32))
    red = MetadataFilters(filters=[MetadataFilter(key="group", value=1)])
    assert [n.node_id for n in loaded.get_nodes(filters=red)] == [n.node_id for n in store.get_nodes(filters=red)]
    # the loaded store keeps working: adds, deletes, persists again
    loaded.add(make_nodes(310)[300:])
    loaded.delete("doc5")
    loaded.persist(str(path))
    again = DeepMemoryVectorStore.from_persist_path(str(path))
    assert again.get_nodes() == loaded.get_nodes()
    generations = [p for p in path.iterdir() if p.name.startswith("gen-")]
    assert len(generations) == 1


def test_empty_store_round_trip(tmp_path):
    DeepMemoryVectorStore(metric="ip").persist(str(tmp_path / "s"))
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "s"))
    assert len(loaded) == 0 and loaded.dim is None and loaded.metric == "ip"
    loaded.add(make_nodes(3))
    assert len(loaded) == 3


def test_from_persist_dir_matches_storage_context_layout(tmp_path):
    store = DeepMemoryVectorStore()
    store.add(make_nodes(20))
    store.persist(str(tmp_path / "default__vector_store.json"))
    store.persist(str(tmp_path / "other__vector_store.json"))
    assert len(DeepMemoryVectorStore.from_persist_dir(str(tmp_path))) == 20
    assert len(DeepMemoryVectorStore.from_persist_dir(str(tmp_path), namespace="other")) == 20


def test_crash_mid_write_keeps_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "store"
    store = DeepMemoryVectorStore()
    store.add(make_nodes(50))
    store.persist(str(path))
    store.add(make_nodes(80)[50:])

    def crash(file_path, rows):
        with open(file_path, "w") as fh:
            fh.write(json.dumps(next(iter(rows))) + "\n")  # half written ...
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(persistence, "write_jsonl", crash)
    with pytest.raises(KeyboardInterrupt):
        store.persist(str(path))
    monkeypatch.undo()
    assert len(DeepMemoryVectorStore.from_persist_path(str(path))) == 50
    assert len([p for p in path.iterdir() if p.name.startswith("gen-")]) == 1
    # a crash after the files but before the manifest switch also leaves the old state
    monkeypatch.setattr(persistence, "write_json_atomic", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        store.persist(str(path))
    monkeypatch.undo()
    assert len(DeepMemoryVectorStore.from_persist_path(str(path))) == 50
    store.persist(str(path))
    assert len(DeepMemoryVectorStore.from_persist_path(str(path))) == 80


def _current_file(path: Path, name: str) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    return path / manifest["generation"] / name


@pytest.mark.parametrize("name", ["index.faiss", "nodes.jsonl", "slots.npy", "store.json"])
def test_corruption_is_detected_and_named(tmp_path, name):
    path = tmp_path / "store"
    store = DeepMemoryVectorStore()
    store.add(make_nodes(40))
    store.persist(str(path))
    target = _current_file(path, name)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    target.write_bytes(bytes(data))
    with pytest.raises(persistence.CorruptStoreError, match=f"{name}.*sha256"):
        DeepMemoryVectorStore.from_persist_path(str(path))
    target.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(persistence.CorruptStoreError, match=f"{name}.*truncated"):
        DeepMemoryVectorStore.from_persist_path(str(path))


def test_refuses_foreign_or_newer_formats(tmp_path):
    with pytest.raises(FileNotFoundError):
        DeepMemoryVectorStore.from_persist_path(str(tmp_path / "nothing"))
    simple_json = tmp_path / "vector_store.json"
    simple_json.write_text("{}")
    with pytest.raises(ValueError, match="not a persisted DeepMemoryVectorStore"):
        DeepMemoryVectorStore.from_persist_path(str(simple_json))
    store = DeepMemoryVectorStore()
    with pytest.raises(ValueError, match="existing file"):
        store.persist(str(simple_json))
    path = tmp_path / "store"
    store.add(make_nodes(3))
    store.persist(str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = persistence.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="Upgrade"):
        DeepMemoryVectorStore.from_persist_path(str(path))


def test_no_pickle_in_numpy_files(tmp_path):
    path = tmp_path / "store"
    store = DeepMemoryVectorStore()
    store.add(make_nodes(5))
    store.persist(str(path))
    gen = _current_file(path, "")
    for npy in gen.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if an object array needed pickle
    assert sorted(os.listdir(gen)) == sorted(json.loads((path / "manifest.json").read_text())["files"])


# --- concurrency and safety of the on-disk format ---------------------------------------------
def _state(store) -> list:
    return sorted((n.node_id, n.text) for n in store.get_nodes())


def test_concurrent_persists_and_loads_of_one_folder(tmp_path: Path) -> None:
    import threading

    a = DeepMemoryVectorStore()
    a.add(make_nodes(300))
    b = DeepMemoryVectorStore()
    b.add(make_nodes(200, seed=3))
    path = tmp_path / "store"
    a.persist(str(path))
    errors: list[str] = []
    loaded: list[list] = []
    stop = threading.Event()

    def persist_loop(store) -> None:
        try:
            for _ in range(15):  # two handles take turns: each replaces the other's snapshot on purpose
                store.persist(str(path), overwrite=True)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    def load_loop() -> None:
        while not stop.is_set():
            try:
                loaded.append(_state(DeepMemoryVectorStore.from_persist_path(str(path))))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    writers = [threading.Thread(target=persist_loop, args=(s,)) for s in (a, a, b)]
    reader = threading.Thread(target=load_loop)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    reader.join(60)
    assert errors == []
    assert loaded and all(state in (_state(a), _state(b)) for state in loaded)
    final = _state(DeepMemoryVectorStore.from_persist_path(str(path)))
    assert final in (_state(a), _state(b))
    assert len([p for p in path.iterdir() if p.name.startswith("gen-")]) == 1


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    persistence.write_json_atomic(target, {"v": 1})

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        persistence.atomic_write(target, fail)
    with pytest.raises(TypeError):
        persistence.write_json_atomic(target, {"v": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]
    assert json.loads(target.read_text()) == {"v": 1}


def test_manifest_without_a_file_entry_is_refused(tmp_path: Path) -> None:
    store = DeepMemoryVectorStore()
    store.add(make_nodes(20))
    path = tmp_path / "store"
    store.persist(str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["index.faiss"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="index.faiss"):
        DeepMemoryVectorStore.from_persist_path(str(path))
    manifest["generation"] = "../elsewhere"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="generation"):
        DeepMemoryVectorStore.from_persist_path(str(path))


def test_persist_refuses_a_folder_with_snapshots_but_no_manifest(tmp_path: Path) -> None:
    """A store folder whose manifest was lost still holds its snapshot: persisting into it would
    delete that snapshot after the switch, so it is refused with the folder and the ways out."""
    path = tmp_path / "store"
    store = DeepMemoryVectorStore()
    store.add(make_nodes(30))
    store.persist(str(path))
    (path / "manifest.json").unlink()
    snapshot = next(p for p in path.iterdir() if p.name.startswith("gen-"))
    before = sorted(p.name for p in snapshot.iterdir())
    other = DeepMemoryVectorStore()
    other.add(make_nodes(5, seed=3))
    with pytest.raises(ValueError, match=r"store'.* holds 1 snapshot folder\(s\) \(gen-.*\) but no manifest\.json.*"
                                         r"restore manifest\.json from a backup, persist to another folder"):
        other.persist(str(path))
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("gen-")) == [snapshot.name]
    assert sorted(p.name for p in snapshot.iterdir()) == before and not (path / "manifest.json").exists()
    other.persist(str(tmp_path / "elsewhere"))  # another folder, or one without snapshots, still works
    assert len(DeepMemoryVectorStore.from_persist_path(str(tmp_path / "elsewhere"))) == 5


@pytest.mark.parametrize("given", ["", " "])
def test_persist_refuses_an_empty_path_instead_of_writing_into_the_working_directory(tmp_path, monkeypatch, given):
    """``persist("")`` (an unset setting, say) named the current directory: the snapshot, its lock
    files and model folder were written there. It is refused with the value and the fix."""
    monkeypatch.chdir(tmp_path)
    store = DeepMemoryVectorStore()
    store.add(make_nodes(10))
    with pytest.raises(ValueError, match=rf"persist_path is empty \({given!r}\).*pass a folder"):
        store.persist(given)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
