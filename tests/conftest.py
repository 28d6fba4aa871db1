"""Shared pytest fixtures."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from chroma_server import chroma_server  # noqa: F401 - the shared Chroma server fixture (started on first use)
from pg_server import postgres_server  # noqa: F401 - the shared PostgreSQL fixture

if TYPE_CHECKING:  # pragma: no cover
    from synthetic import SplitRotationTask

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm():
    """The offline all-MiniLM-L6-v2 ``HuggingFaceEmbedding`` (384 dims), loaded once per session."""
    from llama_index_deepmemory.embeddings import default_embedding

    return default_embedding()


@pytest.fixture(scope="session")
def rotation_task() -> "SplitRotationTask":
    """The seeded rotation task (``synthetic.SplitRotationTask``): read it, never change it."""
    from synthetic import SplitRotationTask

    return SplitRotationTask(seed=0)


@pytest.fixture(scope="session")
def rotation_trained_state(rotation_task: "SplitRotationTask") -> tuple[tuple[dict, dict], str]:
    """``((meta, arrays), job_id)``: the Deep Memory state after one blocking training job on the
    task's training queries (``ROTATION_FAST``; model_1 active), trained once per session."""
    from synthetic import ROTATION_FAST

    store = rotation_task.store()
    queries, relevance, vectors = rotation_task.train_args()
    job_id = store.deep_memory.train(queries, relevance, embedding=vectors, **ROTATION_FAST)
    assert store.deep_memory.get_model() == "model_1"
    return store.deep_memory.to_state(), job_id


@pytest.fixture()
def rotation_trained(rotation_task: "SplitRotationTask", rotation_trained_state) -> tuple:
    """``(store, job_id)``: a fresh store of the rotation task holding the trained state (model_1
    active, the job in its history); each test gets its own and may change it."""
    (meta, arrays), job_id = rotation_trained_state
    store = rotation_task.store()
    store.deep_memory.load_state(meta, arrays)
    return store, job_id
