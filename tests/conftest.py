"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest

from pg_server import postgres_server  # noqa: F401 - the shared PostgreSQL fixture

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm():
    """The offline all-MiniLM-L6-v2 ``HuggingFaceEmbedding`` (384 dims), loaded once per session."""
    from llama_index_deepmemory.embeddings import default_embedding

    return default_embedding()
