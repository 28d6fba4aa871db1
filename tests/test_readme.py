"""The README's usage example runs as written, against a local OpenAI-compatible server."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from servers import last_user_message, openai_chat_server

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "notebooks" / "data" / "docs"  # small local HTML pages, instead of Python's FAQ folder
CONTEXT = re.compile(r"---------------------\n(.*)\n---------------------", re.S)


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its '## Usage' python block"
    return match.group(1)


def questions_from(messages: list[dict]) -> str:
    """A deterministic 'LLM' in the seed's numbered format. Its two questions per chunk name the
    chunk by an internal code word that never occurs in the text (like team jargon in real query
    logs), so plain retrieval can't find the chunk but a memory of sibling questions can."""
    context = CONTEXT.search(last_user_message(messages)).group(1)
    rng = random.Random(context)
    code = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))
    return f"1. What does the {code} section explain?\n2. Where is {code} documented?"


def test_readme_usage_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 20, "keep the README example short"
    faq = "/usr/share/doc/python3.11/html/faq"
    assert faq in code
    code = code.replace(faq, str(DOCS)).replace("chunk_size=512", "chunk_size=128, chunk_overlap=16")  # more chunks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with openai_chat_server(questions_from) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        n_requests = len(server.requests)
    store, job, queries = namespace["store"], namespace["job"], namespace["queries"]
    nodes = namespace["nodes"]
    assert n_requests == len(nodes)  # one question-generation call per chunk
    assert len(queries) == 2 * len(nodes)
    status = store.deep_memory.status(job)
    assert status["status"] == "completed"
    assert store.deep_memory.get_model() is not None  # the README's deep_memory=True query needs it
    # with the model, the training questions find their chunk at least as often as without it
    relevance = namespace["relevance"]
    result = store.deep_memory.evaluate(queries, relevance, top_k=(1, 10))
    assert result["with model"]["recall@1"] >= result["without model"]["recall@1"]
    reloaded = type(store).from_persist_path(str(tmp_path / "storage" / "deepmemory"))
    assert reloaded.deep_memory.get_model() == store.deep_memory.get_model()
