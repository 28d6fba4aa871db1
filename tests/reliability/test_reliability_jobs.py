"""Deep Memory training jobs under failure: cancel at random moments, an exception mid-training,
a failed save, and several jobs submitted at once.

The API's choice (``deep_memory/api.py``): jobs run one at a time; a job submitted while another
runs is *queued*. A cancelled or failed job, or a failed save, leaves the active model as it was
and the job's status says what happened.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.vector_stores.types import VectorStoreQuery

from crash_child import store_fingerprint
from synthetic import RotationTask
from llama_index_deepmemory.store import DeepMemoryVectorStore

N_DOCS, DIM, N_QUERIES = 150, 16, 120
FAST = dict(epochs=6, learning_rate=2e-2, batch_size=32, query_memory=False, refit=False)
LONG = dict(epochs=400, patience=400, learning_rate=1e-3, batch_size=8, query_memory=False, refit=False)


class Task(RotationTask):
    """The shared rotation task (each query a rotated, noisy copy of its relevant document)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(n_docs=N_DOCS, dim=DIM, n_queries=N_QUERIES, seed=seed)

    def train(self, store: DeepMemoryVectorStore, **options) -> str:
        return store.deep_memory.train(self.texts, self.relevance, embedding=self.queries, **options)


def deep_memory_ids(store: DeepMemoryVectorStore, task: Task) -> list[list[str]]:
    return [store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5), deep_memory=True).ids
            for q in task.queries[:20]]


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def task() -> Task:
    return Task()


@pytest.fixture()
def trained(task: Task, rotation_task, rotation_trained):
    """A fresh store of this task's documents holding the session's trained state (tests/conftest.py:
    one blocking training job on the rotation task, model_1 active, job_1 in the history)."""
    assert np.array_equal(task.docs, rotation_task.docs) and task.ids == rotation_task.ids  # the same documents
    store, _ = rotation_trained
    assert store.deep_memory.get_model() == "model_1"
    return store


def test_cancel_at_random_moments_keeps_the_active_model(task: Task, trained) -> None:
    store, dm = trained, trained.deep_memory
    before = store_fingerprint(store)
    ranked_before = deep_memory_ids(store, task)
    rng = random.Random(5)
    outcomes = {"cancelled": 0, "finished first": 0}
    finished = ("completed", "failed", "cancelled")
    for trial in range(6):
        job = task.train(store, background=True, **{**FAST, "epochs": 40, "patience": 40, "learning_rate": 1e-3})
        target = rng.uniform(0.0, 0.9)  # progress reaches 0.8 in the last epoch, 1.0 when done
        wait_until(lambda: (s := dm.wait(job, timeout=0))["progress"] >= target or s["status"] in finished)
        stopped = dm.cancel(job)
        state = dm.wait(job, timeout=30)
        if stopped:
            assert state["status"] == "cancelled" and state["model_name"] is None, state
            assert dm.get_model() == "model_1"
            assert store_fingerprint(store) == before
            assert deep_memory_ids(store, task) == ranked_before
            outcomes["cancelled"] += 1
        else:  # the job had completed: its model is kept (and maybe active), nothing half-done
            assert state["status"] == "completed" and state["model_name"] in {m["name"] for m in dm.list_models()}
            dm.set_model("model_1")
            before = store_fingerprint(store)  # now also holding the kept model
            outcomes["finished first"] += 1
        assert dm.status(job)["status"] == state["status"]
    print(f"\ncancel at random moments: 6 trials, 6 passed ({outcomes})")
    assert outcomes["cancelled"] >= 2


def test_exception_in_the_middle_of_training_keeps_the_active_model(task: Task, trained, capsys) -> None:
    """Mined-negatives training reads stored vectors batch by batch; a relevant node deleted while
    the job runs makes it raise mid-way."""
    store, dm = trained, trained.deep_memory
    model_state = dm.to_state()[1]
    job = task.train(store, background=True, full_softmax_max_nodes=1, **LONG)
    wait_until(lambda: dm.status(job)["progress"] > 0)  # past setup, inside the epochs
    victim = task.relevance[0][0][0]
    store.delete_nodes(node_ids=[victim])
    state = dm.wait(job, timeout=30)
    assert state["status"] == "failed" and state["model_name"] is None, state
    assert victim in state["error"], state["error"]
    assert dm.get_model() == "model_1"
    after = dm.to_state()[1]
    assert set(after) == set(model_state) and all(np.array_equal(after[k], model_state[k]) for k in after)
    dm.status(job)
    printed = capsys.readouterr().out
    assert "failed" in printed and victim in printed  # the status table reports the error
    print("\nexception mid-training: 1 case tried, 1 passed (job failed with the error, model_1 still active)")


CHILD_SAVE = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from crash_child import store_fingerprint
    from llama_index_deepmemory.store import DeepMemoryVectorStore
    store = DeepMemoryVectorStore.from_persist_path(sys.argv[1])
    before = store_fingerprint(store)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    limit = int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        store.persist(sys.argv[2])
        error = None
    except Exception as exc:  # OSError, or the safetensors writer's own error type
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"error": error, "unchanged": store_fingerprint(store) == before,
                      "active": store.deep_memory.get_model()}))
""")


def test_failed_save_keeps_the_previous_model_on_disk_and_in_memory(task: Task, trained, tmp_path: Path) -> None:
    """The disk fills up while a newer model is saved (RLIMIT_FSIZE in a child process)."""
    store, dm = trained, trained.deep_memory
    saved = tmp_path / "saved"
    store.persist(str(saved))  # model_1 on disk
    on_disk = store_fingerprint(store)
    task.train(store, **{**FAST, "seed": 1, "epochs": 10})
    dm.set_model("model_2")
    newer = tmp_path / "newer"
    store.persist(str(newer))
    manifest = json.loads((newer / "manifest.json").read_text())
    # the models are written beside the snapshot, before its node files: the largest model file is
    # the first one that cannot be written
    model_files = list((newer / manifest["sides"]["deep_memory"]).glob("models/*/arrays.safetensors"))
    limit = max(p.stat().st_size for p in model_files) - 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD_SAVE, str(newer), str(saved), str(Path(__file__).resolve().parents[1]), str(limit)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and "too large" in result["error"].lower(), result
    assert result["unchanged"] and result["active"] == "model_2"
    loaded = DeepMemoryVectorStore.from_persist_path(str(saved))
    assert store_fingerprint(loaded) == on_disk and loaded.deep_memory.get_model() == "model_1"
    assert [p.name for p in saved.iterdir() if p.name.startswith("gen-")] == [
        json.loads((saved / "manifest.json").read_text())["generation"]]  # the partial write was removed
    store.persist(str(saved))  # with room again, the newer model saves
    assert DeepMemoryVectorStore.from_persist_path(str(saved)).deep_memory.get_model() == "model_2"
    print(f"\nfailed save (disk full at deep_memory.safetensors): 1 case tried, 1 passed ({result['error']})")


def test_jobs_submitted_at_once_are_queued_one_at_a_time(task: Task, trained) -> None:
    store, dm = trained, trained.deep_memory
    jobs: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3)

    def submit(seed: int) -> None:
        barrier.wait()
        job = task.train(store, background=True, **{**FAST, "seed": seed})
        with lock:
            jobs.append(job)

    threads = [threading.Thread(target=submit, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(jobs) == len(set(jobs)) == 3
    most_running = 0
    finished = ("completed", "failed", "cancelled")
    while not all(dm.wait(j, timeout=0)["status"] in finished for j in jobs):
        running = sum(record["status"] == "running" for record in dm.list_jobs())
        most_running = max(most_running, running)
        time.sleep(0.005)
    records = {r["job_id"]: r for r in dm.list_jobs()}
    mine = sorted((records[j] for j in jobs), key=lambda r: r["started_at"])
    assert all(r["status"] == "completed" for r in mine)
    for earlier, later in zip(mine, mine[1:]):
        assert later["started_at"] >= earlier["finished_at"]  # never two at once
    assert most_running <= 1
    # a blocking train while a background job runs waits its turn, then completes
    background = task.train(store, background=True, **{**FAST, "seed": 7})
    blocking = task.train(store, **{**FAST, "seed": 8})
    assert dm.status(blocking)["started_at"] >= dm.status(background)["finished_at"]
    print(f"\njobs at once: 5 jobs tried, 5 passed (queued; at most {most_running} running at any sampled moment)")
