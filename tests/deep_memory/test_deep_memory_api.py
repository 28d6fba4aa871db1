"""``store.deep_memory``: train / status / cancel / evaluate / models, on a real DeepMemoryVectorStore.

Synthetic task (seeded): random documents; each query is a fixed random rotation of its relevant
document plus noise, so the plain store ranks badly and a trained adapter ranks well. Rankings and
recall are checked against brute-force NumPy over the full score matrix.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_deepmemory.deep_memory.api import DeepMemoryTrainingError
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import ROTATION_DOCS, ROTATION_FAST, SplitRotationTask, brute_force_top_k, normalise

N_DOCS = ROTATION_DOCS
FAST = ROTATION_FAST  # the shared trained store's options (tests/conftest.py)
SLOW = dict(epochs=100_000, patience=100_000, learning_rate=1e-3, batch_size=8, query_memory=False, refit=False)
TOP_K = (1, 3, 5, 10, 50, 100)
Task = SplitRotationTask


def brute_force_ranking(task: Task, queries: np.ndarray, k: int, model=None) -> list[list[str]]:
    """Exact top-k ids from the full score matrix (model: transform, then override columns)."""
    top = brute_force_top_k(normalise(queries), task.docs, task.ids, k, model)
    return [[task.ids[j] for j in row] for row in top]


def brute_force_recall(ranked: list[list[str]], relevance: list, k: int) -> float:
    """Weighted recall@k written out plainly."""
    values = []
    for row, pairs in zip(ranked, relevance):
        total = sum(w for _, w in pairs)
        values.append(sum(w for node, w in pairs if node in row[:k]) / total)
    return float(np.mean(values))


def store_ids(store: DeepMemoryVectorStore, vectors: np.ndarray, k: int, **kwargs) -> list[list[str]]:
    out = []
    for v in vectors:
        out.append(store.query(VectorStoreQuery(query_embedding=v.tolist(), similarity_top_k=k), **kwargs).ids)
    return out


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def task(rotation_task: Task) -> Task:
    return rotation_task


@pytest.fixture()
def trained(rotation_trained):
    """A fresh store holding the session's trained state (tests/conftest.py): model_1 active, one job."""
    return rotation_trained


# --- training and querying ------------------------------------------------------------------
def test_train_activates_a_model_that_improves_recall(task: Task, trained) -> None:
    store, job_id = trained
    state = store.deep_memory.status(job_id)
    assert state["status"] == "completed" and state["progress"] == 1.0
    assert state["model_name"] == "model_1" and state["active"] and state["error"] is None
    assert store.deep_memory.get_model() == "model_1"
    assert state["val_after"]["recall@10"] > state["val_before"]["recall@10"]
    assert state["started_at"] <= state["finished_at"]
    assert state["options"]["epochs"] == FAST["epochs"]

    model = store.deep_memory.active_model()
    _, relevance, vectors = task.test_args()
    with_model = store_ids(store, vectors, 10, deep_memory=True)
    assert with_model == brute_force_ranking(task, vectors, 10, model)  # the store's merge is exact
    plain = brute_force_ranking(task, vectors, 10)
    assert with_model != plain
    before, after = brute_force_recall(plain, relevance, 10), brute_force_recall(with_model, relevance, 10)
    assert after > before + 0.3, (before, after)


def test_deep_memory_false_is_the_plain_store(task: Task, trained) -> None:
    store, _ = trained
    vectors = task.queries[task.test]
    plain = store_ids(store, vectors, 10, deep_memory=False)
    assert plain == store_ids(store, vectors, 10)
    assert plain == brute_force_ranking(task, vectors, 10)
    fresh = task.store()  # never trained: same answers
    assert plain == store_ids(fresh, vectors, 10)


def test_evaluate_equals_numpy(task: Task, trained, capsys) -> None:
    store, _ = trained
    queries, relevance, vectors = task.test_args()
    # graded relevance: the target with weight 1 and a second node with weight 0.5
    relevance = [pairs + [(task.ids[(i * 7) % N_DOCS], 0.5)] for i, pairs in enumerate(relevance)]
    relevance = [list(dict(pairs).items()) for pairs in relevance]
    result = store.deep_memory.evaluate(queries, relevance, embedding=vectors)
    model = store.deep_memory.active_model()
    plain = brute_force_ranking(task, vectors, max(TOP_K))
    with_model = brute_force_ranking(task, vectors, max(TOP_K), model)
    assert set(result) == {"without model", "with model"}
    for k in TOP_K:
        assert result["without model"][f"recall@{k}"] == pytest.approx(brute_force_recall(plain, relevance, k))
        assert result["with model"][f"recall@{k}"] == pytest.approx(brute_force_recall(with_model, relevance, k))
    out = capsys.readouterr().out
    assert "---- Evaluating without Deep Memory ----" in out and "---- Evaluating with Deep Memory ----" in out
    assert f"Recall@10:\t {100 * result['with model']['recall@10']:5.1f}%" in out

    # arrays and tuples are accepted like lists
    as_arrays = store.deep_memory.evaluate(np.array(queries), tuple(map(tuple, relevance)), embedding=vectors)
    assert as_arrays == result
    small = store.deep_memory.evaluate(queries, relevance, top_k=[5, 1], embedding=vectors)
    assert list(small["with model"]) == ["recall@1", "recall@5"]
    assert small["with model"]["recall@5"] == result["with model"]["recall@5"]


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_batched_search_equals_the_store_query_path(task: Task, trained, k: int) -> None:
    store, _ = trained
    dm = store.deep_memory
    assert len(dm.active_model().overrides(task.queries[:1])[0]) > 0  # the merge is exercised
    vectors = task.queries  # train queries hit the learned memory hardest
    for deep_memory in (False, True):
        expected = store_ids(store, vectors, k, deep_memory=deep_memory)
        assert dm.search_ids(vectors, k, deep_memory=deep_memory) == expected
        assert dm.search_ids(vectors, k, deep_memory=deep_memory, batch_size=7) == expected


def test_evaluate_without_a_model_gives_the_baseline(task: Task, capsys) -> None:
    store = task.store()
    queries, relevance, vectors = task.test_args()
    result = store.deep_memory.evaluate(queries, relevance, top_k=(1, 10), embedding=vectors)
    assert list(result) == ["without model"]
    plain = brute_force_ranking(task, vectors, 10)
    assert result["without model"]["recall@10"] == pytest.approx(brute_force_recall(plain, relevance, 10))
    assert "No active Deep Memory model" in capsys.readouterr().out


def test_status_and_list_jobs_print_the_results(trained, capsys) -> None:
    store, job_id = trained
    capsys.readouterr()
    state = store.deep_memory.status(job_id)
    before, after = state["val_before"]["recall@10"], state["val_after"]["recall@10"]
    out = capsys.readouterr().out
    assert f"recall@10: {100 * after:.2f}% ({100 * (after - before):+.2f}%)" in out
    assert "completed" in out and "model_1 (active)" in out
    jobs = store.deep_memory.list_jobs()
    assert jobs[0]["job_id"] == job_id
    assert job_id in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown job id 'job_99'"):
        store.deep_memory.status("job_99")


# --- bad input ----------------------------------------------------------------------------------
def _bad_calls(task: Task):
    queries, relevance, vectors = task.train_args()
    q2, r2, v2 = queries[:2], relevance[:2], vectors[:2]
    return [
        ((q2, r2[:1]), {"embedding": v2}, ValueError, "2 queries but 1 relevance"),
        (([], []), {"embedding": v2[:0]}, ValueError, "queries is empty"),
        ((q2, []), {"embedding": v2}, ValueError, "relevance is empty"),
        (("one query", r2), {"embedding": v2}, TypeError, "queries must be a list"),
        ((q2, [r2[0], []]), {"embedding": v2}, ValueError, r"relevance\[1\] is \[\]"),
        ((["", "x"], r2), {"embedding": v2}, ValueError, r"queries\[0\] is an empty string"),
        ((q2, [r2[0], [("ghost_1", 1.0), ("ghost_2", 1.0)]]), {"embedding": v2}, ValueError, "ghost_1"),
        ((q2, [r2[0], [(task.ids[0], -1.0)]]), {"embedding": v2}, ValueError, "finite and >= 0"),
        ((q2, [r2[0], [(task.ids[0], math.nan)]]), {"embedding": v2}, ValueError, "finite and >= 0"),
        ((q2, [r2[0], [(task.ids[0], math.inf)]]), {"embedding": v2}, ValueError, "finite and >= 0"),
        ((q2, [r2[0], [(task.ids[0], 0.0)]]), {"embedding": v2}, ValueError, "no node with a positive weight"),
        ((q2, [r2[0], (task.ids[0], 1.0)]), {"embedding": v2}, ValueError, r"\(node_id, weight\) pair"),
        ((q2, r2), {"embedding": v2[:, :8]}, ValueError, r"shape \(2, 8\), expected \(2, 16\)"),
        ((q2, r2), {"embedding": v2[:1]}, ValueError, r"shape \(1, 16\), expected \(2, 16\)"),
        ((q2, r2), {"embedding": np.full_like(v2, np.nan)}, ValueError, "NaN or infinite"),
        ((q2, r2), {}, ValueError, "no way to embed the queries"),
        ((q2, r2), {"embedding": v2, "embedding_function": len}, ValueError, "not both"),
        ((q2, r2), {"embedding_function": lambda texts: [[1.0], [1.0, 2.0]]}, ValueError, "array of shape"),
        ((q2, r2), {"embedding_function": "minilm"}, TypeError, "BaseEmbedding, a LangChain Embeddings or a callable"),
    ]


def test_bad_input_is_refused_before_any_work(task: Task, trained) -> None:
    store, _ = trained
    jobs_before = len(store.deep_memory.list_jobs())
    for args, kwargs, error, match in _bad_calls(task):
        with pytest.raises(error, match=match):
            store.deep_memory.train(*args, **kwargs, **FAST)
        with pytest.raises(error, match=match):
            store.deep_memory.evaluate(*args, **kwargs)
    queries, relevance, vectors = task.train_args()
    with pytest.raises(TypeError, match=r"unknown Deep Memory training option\(s\) \['epoch'\]"):
        store.deep_memory.train(queries, relevance, embedding=vectors, epoch=3)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        store.deep_memory.train(queries, relevance, embedding=vectors, epochs=0)
    with pytest.raises(ValueError, match="at least 2 queries"):
        store.deep_memory.train(queries[:1], relevance[:1], embedding=vectors[:1], **FAST)
    with pytest.raises(ValueError, match="top_k must be positive integers"):
        store.deep_memory.evaluate(queries, relevance, top_k=(0, 5), embedding=vectors)
    assert len(store.deep_memory.list_jobs()) == jobs_before
    assert store.deep_memory.get_model() == "model_1"


def test_empty_store_is_refused() -> None:
    store = DeepMemoryVectorStore()
    with pytest.raises(ValueError, match="empty store"):
        store.deep_memory.train(["a", "b"], [[("x", 1.0)], [("y", 1.0)]], embedding=np.ones((2, 4)))
    with pytest.raises(ValueError, match="empty store"):
        store.deep_memory.evaluate(["a"], [[("x", 1.0)]], embedding=np.ones((1, 4)))


def test_models_must_exist_to_be_used(task: Task) -> None:
    store = task.store()
    with pytest.raises(ValueError, match="no active Deep Memory model"):
        store_ids(store, task.queries[:1], 3, deep_memory=True)
    with pytest.raises(ValueError, match="unknown Deep Memory model 'model_7'"):
        store.deep_memory.set_model("model_7")


# --- jobs: background, queue, cancel, failures ---------------------------------------------------
def test_background_jobs_queue_and_cancel_keeping_the_active_model(task: Task, trained, capsys) -> None:
    store, _ = trained
    dm = store.deep_memory
    queries, relevance, vectors = task.train_args()
    first = dm.train(queries, relevance, embedding=vectors, background=True, **SLOW)
    second = dm.train(queries, relevance, embedding=vectors, background=True, **SLOW)
    wait_until(lambda: dm.status(first)["progress"] > 0)
    running = dm.status(first)
    assert running["status"] == "running" and running["eta_seconds"] is not None
    assert "eta:" in capsys.readouterr().out
    assert dm.status(second)["status"] == "queued"  # one job at a time: the second waits

    assert dm.cancel(second) is True  # queued: dropped at once
    assert dm.status(second)["status"] == "cancelled"
    assert dm.cancel(first) is True
    final = dm.wait(first, timeout=60)
    assert final["status"] == "cancelled" and final["model_name"] is None
    assert dm.cancel(first) is False  # already finished
    assert dm.get_model() == "model_1"
    assert [m["name"] for m in dm.list_models()] == ["model_1"]
    vectors = task.queries[task.test]
    expected = brute_force_ranking(task, vectors, 10, dm.active_model())
    assert store_ids(store, vectors, 10, deep_memory=True) == expected


def test_failure_inside_training_keeps_the_previous_model(task: Task, trained) -> None:
    store, _ = trained
    dm = store.deep_memory
    queries, relevance, vectors = task.train_args()
    # a device that does not exist: torch raises inside the training job
    with pytest.raises(DeepMemoryTrainingError, match="failed"):
        dm.train(queries, relevance, embedding=vectors, device="cuda:99", **FAST)
    failed = dm.list_jobs()[-1]
    assert failed["status"] == "failed" and failed["error"] and failed["model_name"] is None
    assert dm.get_model() == "model_1"
    background = dm.train(queries, relevance, embedding=vectors, background=True, device="cuda:99", **FAST)
    state = dm.wait(background, timeout=60)
    assert state["status"] == "failed" and dm.get_model() == "model_1"


def test_store_changed_under_a_queued_job_fails_it_cleanly(task: Task) -> None:
    """The relevant nodes are deleted while the job waits in the queue: it fails, nothing changes."""
    store = task.store()
    dm = store.deep_memory
    queries, relevance, vectors = task.train_args()
    first = dm.train(queries, relevance, embedding=vectors, **FAST)
    blocker = dm.train(queries, relevance, embedding=vectors, background=True, **SLOW)
    doomed = dm.train(queries, relevance, embedding=vectors, background=True, **FAST)
    gone = relevance[0][0][0]
    store.delete_nodes(node_ids=[gone])
    dm.cancel(blocker)
    state = dm.wait(doomed, timeout=60)
    assert state["status"] == "failed" and gone in state["error"]
    assert dm.get_model() == dm.status(first)["model_name"] == "model_1"
    # the model remembers the deleted node; neither query path may return it
    assert gone in dm.active_model().overrides(vectors[:1])[0]
    ranked = dm.search_ids(vectors, 20, deep_memory=True)
    assert ranked == store_ids(store, vectors, 20, deep_memory=True)
    assert all(gone not in row and len(row) == 20 for row in ranked)


def test_model_that_does_not_beat_identity_is_kept_but_not_active(task: Task, capsys) -> None:
    """Each query is its relevant document: the plain store is already perfect, nothing can beat it."""
    store = task.store()
    dm = store.deep_memory
    targets = np.random.default_rng(3).integers(0, N_DOCS, size=100)
    queries = [f"copy of {task.ids[t]}" for t in targets]
    relevance = [[(task.ids[t], 1.0)] for t in targets]
    job_id = dm.train(queries, relevance, embedding=task.docs[targets], validation_fraction=0.2, **FAST)
    state = dm.status(job_id)
    assert state["status"] == "completed" and state["model_name"] == "model_1"
    assert not state["active"] and "not activated" in state["note"]
    assert dm.get_model() is None
    assert "not activated" in capsys.readouterr().out
    dm.set_model("model_1")  # the user may still choose it
    assert dm.get_model() == "model_1" and dm.status(job_id)["active"]
    dm.set_model(None)
    assert dm.active_model() is None


# --- persistence --------------------------------------------------------------------------------
def test_models_and_job_history_survive_persist(task: Task, trained, tmp_path) -> None:
    store, job_id = trained
    path = tmp_path / "store"
    store.persist(str(path))
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    dm, original = loaded.deep_memory, store.deep_memory
    assert dm.get_model() == original.get_model() == "model_1"
    assert [(j["job_id"], j["status"], j["model_name"]) for j in dm.list_jobs()] == [
        (j["job_id"], j["status"], j["model_name"]) for j in original.list_jobs()
    ]
    assert dm.status(job_id)["val_after"] == original.status(job_id)["val_after"]
    vectors = task.queries[task.test]
    assert store_ids(loaded, vectors, 10, deep_memory=True) == store_ids(store, vectors, 10, deep_memory=True)
    meta, arrays = dm.to_state()
    meta0, arrays0 = original.to_state()
    assert meta["models"] == meta0["models"] and set(arrays) == set(arrays0)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], arrays0[key])
    # new jobs continue the numbering
    queries, relevance, train_vectors = task.train_args()
    new_job = dm.train(queries, relevance, embedding=train_vectors, **FAST)
    assert int(new_job.split("_")[1]) > max(int(j["job_id"].split("_")[1]) for j in original.list_jobs())


def test_job_saved_while_running_loads_as_interrupted(task: Task, trained) -> None:
    store, _ = trained
    dm = store.deep_memory
    queries, relevance, vectors = task.train_args()
    job_id = dm.train(queries, relevance, embedding=vectors, background=True, **SLOW)
    try:
        wait_until(lambda: dm.status(job_id)["status"] == "running")
        meta, arrays = dm.to_state()
    finally:
        dm.cancel(job_id)
        dm.wait(job_id, timeout=60)
    fresh = task.store()
    fresh.deep_memory.load_state(meta, arrays)
    state = fresh.deep_memory.status(job_id)
    assert state["status"] == "failed" and "interrupted" in state["error"]
    assert fresh.deep_memory.get_model() == "model_1"


def test_failed_save_keeps_everything(task: Task, trained, tmp_path) -> None:
    store, _ = trained
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    with pytest.raises(OSError):
        store.persist(str(blocked / "store"))
    assert store.deep_memory.get_model() == "model_1"
    store.persist(str(tmp_path / "ok"))
    assert DeepMemoryVectorStore.from_persist_path(str(tmp_path / "ok")).deep_memory.get_model() == "model_1"


def test_newer_state_format_is_refused(trained) -> None:
    store, _ = trained
    meta, arrays = store.deep_memory.to_state()
    with pytest.raises(ValueError, match="newer than this package supports"):
        DeepMemoryVectorStore().deep_memory.load_state({**meta, "format_version": 99}, arrays)


# --- the real embedding model ---------------------------------------------------------------------
FACTS = [
    ("The Eiffel Tower is in Paris.", ["Where is the Eiffel Tower?", "Which city has the Eiffel Tower?"]),
    ("Water boils at 100 degrees Celsius.", ["At what temperature does water boil?", "Boiling point of water?"]),
    ("The Pacific is the largest ocean on Earth.", ["What is the biggest ocean?", "Largest ocean in the world?"]),
    ("Python was created by Guido van Rossum.", ["Who created Python?", "Who wrote the Python language?"]),
    ("Mount Everest is the highest mountain.", ["What is the tallest mountain?", "Highest peak on Earth?"]),
    ("Honey bees make honey from nectar.", ["How is honey made?", "What do bees make from nectar?"]),
    ("The Moon orbits the Earth every 27 days.", ["How long is the Moon's orbit?", "Moon orbit period?"]),
    ("Photosynthesis turns light into energy.", ["What does photosynthesis do?", "How do plants use light?"]),
    ("The Nile is a river in Africa.", ["Where is the Nile?", "Which continent is the Nile river on?"]),
    ("Chess is played on an 8 by 8 board.", ["How big is a chess board?", "How many squares on a chess board?"]),
]


def test_train_and_evaluate_with_minilm(minilm) -> None:
    texts = [fact for fact, _ in FACTS]
    vectors = minilm.get_text_embedding_batch(texts)
    store = DeepMemoryVectorStore(embed_model=minilm)
    store.add([TextNode(id_=f"fact_{i}", text=t, embedding=v) for i, (t, v) in enumerate(zip(texts, vectors))])
    queries = [q for _, qs in FACTS for q in qs]
    relevance = [[(f"fact_{i}", 1.0)] for i, (_, qs) in enumerate(FACTS) for _ in qs]
    job_id = store.deep_memory.train(queries, relevance, **FAST)  # embedded with the store's embed_model
    assert store.deep_memory.status(job_id)["status"] == "completed"
    by_function = store.deep_memory.evaluate(queries, relevance, top_k=(1, 3), embedding_function=minilm)
    query_vectors = np.array([minilm.get_query_embedding(q) for q in queries])
    by_vectors = store.deep_memory.evaluate(queries, relevance, top_k=(1, 3), embedding=query_vectors)
    assert by_function == by_vectors
    # Activeloop-style embedding_function: any callable list[str] -> vectors
    by_callable = store.deep_memory.evaluate(
        queries, relevance, top_k=(1, 3), embedding_function=lambda texts: query_vectors[: len(texts)]
    )
    assert by_callable == by_vectors
    plain = [[ranked for ranked in row] for row in store_ids(store, query_vectors, 3)]
    assert by_function["without model"]["recall@3"] == pytest.approx(brute_force_recall(plain, relevance, 3))
    assert by_function["without model"]["recall@3"] >= 0.8  # MiniLM finds these easy facts


def test_idle_job_worker_exits_and_restarts_on_submit() -> None:
    import threading

    from llama_index_deepmemory.deep_memory.jobs import JobBook, JobRecord

    book = JobBook(idle_exit_seconds=0.1)
    ran: list[int] = []
    workers: list[threading.Thread] = []  # the thread each job ran on: the book's worker
    for round_no in range(2):
        record = JobRecord(job_id=book.new_id()[0])
        book.submit(record, lambda ctx, r=round_no: ran.append(r) or workers.append(threading.current_thread()) or {})
        assert book.wait(record.job_id, 10)
        wait_until(lambda: not workers[-1].is_alive(), timeout=10)  # idle: the worker exits
    assert ran == [0, 1] and [r.status for r in book.records()] == ["completed", "completed"]
    assert workers[0] is not workers[1] and {w.name for w in workers} == {"deep-memory-jobs"}  # restarted on submit
    assert not any(t in workers for t in threading.enumerate())
