"""Crash safety of ``persist``: SIGKILL at random moments, truncated and bit-flipped files.

* A worker process persists two distinguishable states (A, B: different nodes, vectors and Deep
  Memory models) to one folder in a loop and is SIGKILLed after a seeded random delay; the folder
  must then load to exactly A or exactly B (fingerprint over nodes, vectors and model state).
* Every persisted file (and the manifest) truncated or with flipped bits is refused with a
  ``ValueError`` (``CorruptStoreError``) naming the file, or, for harmless manifest edits, loads
  to exactly the original state; never anything else.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from crash_child import build_states, install_model, store_fingerprint
from llama_index_deepmemory import persistence
from llama_index_deepmemory.store import DeepMemoryVectorStore

CHILD = Path(__file__).resolve().parents[1] / "crash_child.py"
CRASH_NODES = 2000
CRASH_TRIALS = 24
MAX_KILL_DELAY_S = 0.4
# files in the order store.persist writes them, after the Deep Memory models (a dm-* folder beside
# the generations); the manifest switch comes after the last one
WRITE_ORDER = ["store.json", "slots.npy", "dead.npy", "nodes.jsonl", "index.faiss"]


def _lines(stream) -> "queue.Queue[str]":
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _generations(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("gen-"))


def _partial_sides(path: Path) -> list[str]:
    """Model folders (dm-*) the manifest does not name: a write interrupted while saving the models."""
    named = persistence.read_manifest(path)["sides"].get("deep_memory")
    return sorted(p.name for p in path.iterdir() if p.name.startswith("dm-") and p.name != named)


def _killed_during(path: Path, current: str) -> str:
    """Which step a kill interrupted, from the newest generation folder newer than the live one."""
    newer = [g for g in _generations(path) if g > current]
    if not newer and _partial_sides(path):
        return "writing the models"
    if not newer:
        return "no partial folder (before the first write, or after a switch)"
    present = {p.name for p in (path / newer[-1]).iterdir()}
    written = [name for name in WRITE_ORDER if name in present]
    return f"writing {written[-1]}" if written else "creating the folder"


def test_sigkill_during_persist_leaves_the_old_or_the_new_state(tmp_path: Path) -> None:
    path = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(CRASH_NODES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    rng = random.Random(20261121)
    outcomes = {"A": 0, "B": 0}
    interrupted_writes = 0  # trials whose kill left a partial generation folder behind
    persists = []
    steps: dict[str, int] = {}
    try:
        replies = _lines(child.stdout)
        states = json.loads(replies.get(timeout=60))
        assert states["a"] != states["b"]
        names = {states["a"]: "A", states["b"]: "B"}
        on_disk = "A"
        for trial in range(CRASH_TRIALS):
            delay = rng.uniform(0.0, MAX_KILL_DELAY_S)
            first = "b" if on_disk == "A" else "a"  # every completed persist changes the state on disk
            child.stdin.write(f"kill {delay:.4f} {first}\n")
            child.stdin.flush()
            reply = json.loads(replies.get(timeout=30))
            assert reply["killed"], reply
            persists.append(reply["persists_done"])
            manifest = persistence.read_manifest(path)
            gens = _generations(path)
            interrupted_writes += any(g != manifest["generation"] for g in gens) or bool(_partial_sides(path))
            step = _killed_during(path, manifest["generation"])
            steps[step] = steps.get(step, 0) + 1
            if reply["persists_done"] >= 2:  # a completed persist removed older debris
                assert len(gens) <= 2, gens
            loaded = DeepMemoryVectorStore.from_persist_path(str(path))
            fingerprint = store_fingerprint(loaded)
            assert fingerprint in names, f"trial {trial} (kill after {delay:.3f}s): a mixture of A and B"
            on_disk = names[fingerprint]
            outcomes[on_disk] += 1
        # the last state on disk is still usable: a clean persist over the debris works
        loaded.persist(str(path))
        assert _generations(path) == [persistence.read_manifest(path)["generation"]] and _partial_sides(path) == []
        assert store_fingerprint(DeepMemoryVectorStore.from_persist_path(str(path))) == fingerprint
    finally:
        if child.poll() is None:
            child.stdin.write("quit\n")
            child.stdin.flush()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                child.kill()
    print(
        f"\nSIGKILL during persist: {CRASH_TRIALS} trials, {CRASH_TRIALS} passed "
        f"(loaded A {outcomes['A']}x, B {outcomes['B']}x; {interrupted_writes} kills left a partial "
        f"generation; persists completed per trial: median {int(np.median(persists))}); kills by step: {steps}"
    )
    assert outcomes["A"] and outcomes["B"], outcomes  # kills landed on both sides of a switch
    assert interrupted_writes >= CRASH_TRIALS // 3, interrupted_writes  # most kills hit a write
    assert steps.get("writing the models", 0) >= 1, steps  # some kills landed while a model was saved


# --- truncation and bit flips ------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_persisted(tmp_path_factory):
    """A small persisted store with a model; its fingerprint; the folder."""
    from llama_index.core.schema import TextNode

    rng = np.random.default_rng(3)
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", metadata={"k": i}, embedding=rng.normal(size=8).tolist())
               for i in range(40)])
    install_model(store, "model_1", seed=4, n_memory=10)
    path = tmp_path_factory.mktemp("corrupt") / "store"
    store.persist(str(path))
    return path, store_fingerprint(store)


def _load_outcome(path: Path, expected: str) -> str:
    """"refused" (ValueError), "same" (loads to the original state) or a description of the failure."""
    try:
        loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    except ValueError as exc:
        return f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported as a failure of the test
        return f"UNCLEAR ERROR {type(exc).__name__}: {exc}"
    return "same" if store_fingerprint(loaded) == expected else "LOADED A DIFFERENT STATE"


def test_truncated_or_bit_flipped_files_are_refused(small_persisted) -> None:
    path, expected = small_persisted
    manifest = persistence.read_manifest(path)
    gen = path / manifest["generation"]
    targets = [gen / name for name in manifest["files"]] + [path / persistence.MANIFEST]
    rng = random.Random(7)
    tried = passed = 0
    failures = []
    for target in targets:
        original = target.read_bytes()
        size = len(original)
        cases: list[tuple[str, bytes]] = [
            (f"truncated to {n}", original[:n]) for n in sorted({0, 1, size // 2, size - 1}) if n < size
        ]
        cases.append(("one byte appended", original + b"\0"))
        for _ in range(12):
            position, bit = rng.randrange(size), rng.randrange(8)
            flipped = bytearray(original)
            flipped[position] ^= 1 << bit
            cases.append((f"bit {bit} of byte {position} flipped", bytes(flipped)))
        try:
            for label, data in cases:
                target.write_bytes(data)
                outcome = _load_outcome(path, expected)
                tried += 1
                ok = outcome.startswith("refused") and (
                    target.name in outcome or target.name == persistence.MANIFEST
                )
                # an edit of the manifest may be harmless only if the exact state still loads
                ok = ok or (target.name == persistence.MANIFEST and outcome == "same")
                passed += ok
                if not ok:
                    failures.append(f"{target.name} {label}: {outcome}")
        finally:
            target.write_bytes(original)
    assert _load_outcome(path, expected) == "same"
    print(f"\ncorrupted files: {tried} cases tried, {passed} refused with a clear error (or harmless)")
    assert not failures, "\n".join(failures[:10])


def test_manifest_must_list_every_file_it_loads(small_persisted, tmp_path: Path) -> None:
    path, _ = small_persisted
    manifest = json.loads((path / persistence.MANIFEST).read_text())
    for label, edited in (
        ("no 'files' key", {k: v for k, v in manifest.items() if k != "files"}),
        ("'files' key renamed by a bit flip", {**{k: v for k, v in manifest.items() if k != "files"},
                                               "filds": manifest["files"]}),
        ("nodes.jsonl not listed", {**manifest, "files": {k: v for k, v in manifest["files"].items()
                                                        if k != "nodes.jsonl"}}),
    ):
        copy = tmp_path / label.replace(" ", "_").replace("'", "")
        (copy).mkdir()
        (copy / manifest["generation"]).symlink_to(path / manifest["generation"])
        (copy / persistence.MANIFEST).write_text(json.dumps(edited))
        with pytest.raises(ValueError):
            DeepMemoryVectorStore.from_persist_path(str(copy))


def test_interrupted_writes_never_touch_the_live_generation(tmp_path: Path) -> None:
    """A kill between files leaves a partial generation folder: loading ignores it, the next
    persist removes it. (Deterministic complement of the random kills above.)"""
    a, b = build_states(200)
    path = tmp_path / "store"
    a.persist(str(path))
    live = persistence.read_manifest(path)["generation"]
    partial = path / "gen-0-deadbeef"  # what a SIGKILL after the first files leaves
    partial.mkdir()
    (partial / "store.json").write_text('{"dim": 3')
    assert store_fingerprint(DeepMemoryVectorStore.from_persist_path(str(path))) == store_fingerprint(a)
    b.persist(str(path))
    assert _generations(path) == [persistence.read_manifest(path)["generation"]] != [live]
    assert store_fingerprint(DeepMemoryVectorStore.from_persist_path(str(path))) == store_fingerprint(b)
