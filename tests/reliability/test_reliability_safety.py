"""Nothing a user loads can run code.

* A malicious pickle (its ``__reduce__`` would create a marker file) is planted where each
  persisted file is expected, with the manifest's sizes and checksums rewritten to match (the
  attacker controls the whole folder), and in the other files users load (embedding cache, QA
  dataset, query log, BEIR folder): loading is refused and the marker never appears.
* A static check over the package source (ast): no pickle-family import, no ``eval``/``exec``,
  ``torch.load`` only with ``weights_only=True``, ``np.load`` never with ``allow_pickle=True``.
  The checker is itself tested on bad snippets so it can fail.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from crash_child import install_model
from llama_index_deepmemory import persistence
from llama_index_deepmemory.store import DeepMemoryVectorStore

PACKAGE = Path(__file__).resolve().parents[2] / "llama_index_deepmemory"


class MarkerPayload:
    """Unpickling this creates the file ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": MarkerPayload(marker)}, protocol=pickle.HIGHEST_PROTOCOL)


def malicious_npy(marker: Path) -> bytes:
    """A valid ``.npy`` file holding an object array (loads only with ``allow_pickle=True``)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([MarkerPayload(marker), 1], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def malicious_torch(marker: Path) -> bytes:
    """A ``torch.save`` file whose unpickling creates the marker (torch.load without weights_only)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": MarkerPayload(marker)}, buffer)
    return buffer.getvalue()


PAYLOADS = {"pickle": malicious_pickle, "npy": malicious_npy, "torch": malicious_torch}


def test_the_payloads_really_run_code_when_unpickled(tmp_path: Path) -> None:
    """Guard against a vacuous test: each payload does create its marker when trusted."""
    import torch

    for name, make in PAYLOADS.items():
        marker = tmp_path / f"{name}.marker"
        data = make(marker)
        if name == "pickle":
            pickle.loads(data)
        elif name == "npy":
            np.load(io.BytesIO(data), allow_pickle=True)
        else:
            torch.load(io.BytesIO(data), weights_only=False)
        assert marker.exists(), name


@pytest.fixture(scope="module")
def persisted(tmp_path_factory) -> Path:
    from llama_index.core.schema import TextNode

    rng = np.random.default_rng(0)
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=rng.normal(size=8).tolist()) for i in range(30)])
    install_model(store, "model_1", seed=1, n_memory=5)
    path = tmp_path_factory.mktemp("pristine") / "store"
    store.persist(str(path))
    return path


def _plant(pristine: Path, target: Path, name: str, data: bytes) -> Path:
    """A copy of the persisted folder with ``name`` replaced by ``data``, checksums fixed up."""
    import shutil

    shutil.copytree(pristine, target)
    manifest = json.loads((target / persistence.MANIFEST).read_text())
    if name == persistence.MANIFEST:
        (target / name).write_bytes(data)
        return target
    if name in MODEL_LOCATION_FILES:  # the models' shared location beside the snapshot (dm-*/)
        location = next(target.glob("dm-*"))
        if name == "catalog.json":
            (location / name).write_bytes(data)
            return target
        model = next((location / "models").glob("m-*"))
        if name == "model.json":
            (model / name).write_bytes(data)
            return target
        (model / name).write_bytes(data)  # the arrays: their size and sha256 in model.json fixed up
        info = json.loads((model / "model.json").read_text())
        info["arrays"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (model / "model.json").write_text(json.dumps(info))
        return target
    (target / manifest["generation"] / name).write_bytes(data)
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (target / persistence.MANIFEST).write_text(json.dumps(manifest))
    return target


MODEL_LOCATION_FILES = ["catalog.json", "model.json", "arrays.safetensors"]
PERSISTED_FILES = ["slots.npy", "dead.npy", "index.faiss", "nodes.jsonl", "store.json",
                   *MODEL_LOCATION_FILES, persistence.MANIFEST]


def test_planted_pickles_in_a_persisted_store_are_refused(persisted: Path, tmp_path: Path) -> None:
    tried = passed = 0
    errors: dict[str, set[str]] = {}
    for name in PERSISTED_FILES:
        for kind, make in PAYLOADS.items():
            marker = tmp_path / f"{name}.{kind}.marker"
            folder = _plant(persisted, tmp_path / f"{name}.{kind}", name, make(marker))
            tried += 1
            with pytest.raises(Exception) as info:
                DeepMemoryVectorStore.from_persist_path(str(folder))
            assert not marker.exists(), f"loading ran code planted in {name} ({kind})"
            errors.setdefault(name, set()).add(type(info.value).__name__)
            passed += 1
    print(f"\nplanted pickles in persisted files: {tried} cases tried, {passed} refused without running code")
    print("  error types per file:", {k: sorted(v) for k, v in errors.items()})


def test_planted_files_are_refused_with_a_clear_error(persisted: Path, tmp_path: Path) -> None:
    unclear = []
    for name in PERSISTED_FILES:
        for kind, make in PAYLOADS.items():
            folder = _plant(persisted, tmp_path / f"{name}.{kind}", name, make(tmp_path / "m"))
            try:
                DeepMemoryVectorStore.from_persist_path(str(folder))
            except ValueError as exc:
                if name not in str(exc):
                    unclear.append(f"{name} ({kind}): {type(exc).__name__} without the file name: {exc}")
            except Exception as exc:  # noqa: BLE001
                unclear.append(f"{name} ({kind}): {type(exc).__name__}: {exc}")
    print("\n".join(["", "unclear errors:"] + unclear))
    assert unclear == []


def test_slots_inconsistent_with_the_index_are_refused_at_load(persisted: Path, tmp_path: Path) -> None:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    count = len(DeepMemoryVectorStore.from_persist_path(str(persisted)))
    for label, slots in (("beyond the index", [*range(count - 1), 1000]), ("negative", [*range(count - 1), -5]),
                         ("duplicate", [*range(count - 1), 0])):
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(slots, dtype=np.int64))
        folder = _plant(persisted, tmp_path / label.replace(" ", "_"), "slots.npy", buffer.getvalue())
        try:
            loaded = DeepMemoryVectorStore.from_persist_path(str(folder))
        except ValueError:
            continue  # refused clearly at load: what we want
        loaded.query(VectorStoreQuery(query_embedding=[1.0] * 8, similarity_top_k=count))  # must then work
        raise AssertionError(f"slots {label} loaded without error")


def test_planted_pickles_in_other_user_files_are_refused(tmp_path: Path) -> None:
    from llama_index_deepmemory.data.datasets import load_beir, read_query_log
    from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset
    from llama_index_deepmemory.embeddings import CACHE_FORMAT_VERSION, EmbeddingCache

    tried = 0
    for kind, make in PAYLOADS.items():
        marker = tmp_path / f"{kind}.marker"
        data = make(marker)
        # embedding cache: an unreadable cache is ignored (re-embedding costs time, never code)
        cache_dir = tmp_path / f"cache-{kind}"
        (cache_dir / "embeddings").mkdir(parents=True)
        (cache_dir / "embeddings" / f"fp-v{CACHE_FORMAT_VERSION}.npz").write_bytes(data)
        assert len(EmbeddingCache(cache_dir, "fp")) == 0
        npz = io.BytesIO()  # a real .npz whose arrays need pickle
        np.savez(npz, keys=np.array([MarkerPayload(marker)], dtype=object),
                 vectors=np.zeros((1, 2), np.float32), meta=np.array(json.dumps({"format_version": 1})))
        (cache_dir / "embeddings" / f"fp-v{CACHE_FORMAT_VERSION}.npz").write_bytes(npz.getvalue())
        assert len(EmbeddingCache(cache_dir, "fp")) == 0
        # QA dataset, query log, BEIR corpus: JSON readers refuse the bytes with ValueError
        for suffix, load in (
            (".json", EmbeddingQAFinetuneDataset.from_json),
            (".jsonl", read_query_log),
        ):
            path = tmp_path / f"{kind}{suffix}"
            path.write_bytes(data)
            with pytest.raises(ValueError):
                load(path)
        beir = tmp_path / f"beir-{kind}"
        (beir / "qrels").mkdir(parents=True)
        for name in ("corpus.jsonl", "queries.jsonl"):
            (beir / name).write_bytes(data)
        (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
        with pytest.raises(ValueError):
            load_beir(beir)
        tried += 5
        assert not marker.exists(), kind
    print(f"\nplanted pickles in other loaders: {tried} cases tried, {tried} refused without running code")


# --- static check of the package source ------------------------------------------------------
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
DANGEROUS_BUILTINS = {"eval", "exec"}


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Findings of code-running loads in ``source`` (one line each)."""
    findings = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    findings.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in PICKLE_MODULES:
                findings.append(f"{where}: from {node.module} import ...")
            if any(alias.name in DANGEROUS_BUILTINS | {"load"} and module in {"builtins", "torch"}
                   for alias in node.names):
                findings.append(f"{where}: from {node.module} import {[a.name for a in node.names]}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name) and name in DANGEROUS_BUILTINS:
                findings.append(f"{where}: {name}()")
            elif name in DANGEROUS_BUILTINS and owner == "builtins":
                findings.append(f"{where}: builtins.{name}()")
            elif name == "load" and owner == "torch":
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    findings.append(f"{where}: torch.load without weights_only=True")
            elif name == "load" and owner in {"np", "numpy"}:
                allow = keywords.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    findings.append(f"{where}: np.load with allow_pickle not False")
            elif name in {"read_pickle", "to_pickle"}:
                findings.append(f"{where}: pandas {name}")
            elif name == "load" and owner == "yaml" and "Loader" not in keywords:
                findings.append(f"{where}: yaml.load without a safe Loader")
    return findings


@pytest.mark.parametrize("snippet", [
    "import pickle", "import joblib as jl", "from dill import loads", "eval('1')", "exec('x=1')",
    "import builtins\nbuiltins.eval('1')", "torch.load(p)", "torch.load(p, weights_only=False)",
    "torch.load(p, weights_only=flag)", "np.load(p, allow_pickle=True)", "pd.read_pickle(p)",
    "yaml.load(text)", "from torch import load",
])
def test_the_static_checker_flags_unsafe_code(snippet: str) -> None:
    assert unsafe_calls(snippet), snippet


def test_the_static_checker_accepts_safe_code() -> None:
    safe = ("torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nnp.load(p)\n"
            "json.loads(s)\nre.compile('x')\nmodel.eval()\nyaml.safe_load(t)\n")
    assert unsafe_calls(safe) == []


def test_package_source_has_no_code_running_loads() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    findings = [f for path in files for f in unsafe_calls(path.read_text("utf-8"), str(path.relative_to(PACKAGE)))]
    print(f"\nstatic check: {len(files)} package files scanned, {len(findings)} unsafe loads found")
    assert findings == []
