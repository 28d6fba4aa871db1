"""The README's LangChain block (Activeloop's tutorial code) runs as written, against a local
OpenAI-compatible server for the QA chain's LLM.

The tutorial's earlier steps (docs, questions) are given as its variables: 20 local HTML pages as
LangChain documents, and questions that name each page by a code word that never occurs in its text
(team jargon), so plain retrieval can't find the page but Deep Memory, trained on sibling questions, can.
The embedding is a small hashing bag-of-words embedding (no model to load).
"""

from __future__ import annotations

import random
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_openai")
pytest.importorskip("langchain_classic")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402

from servers import openai_chat_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "notebooks" / "data" / "docs"
CONTEXT_HEADER = "Use the following pieces of context to answer the user's question."
TRAIN_WORDINGS = ("What does the {} section explain?", "Where is {} documented?", "How do I use {}?")
TEST_WORDING = "Tell me about {}."


class HashingEmbeddings(Embeddings):
    """Each lower-cased word is a seeded random vector; a text is their normalised sum."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def _embed(self, text: str) -> list[float]:
        vector = np.zeros(self.dim)
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vector += np.random.default_rng(zlib.crc32(word.encode())).normal(size=self.dim)
        norm = np.linalg.norm(vector)
        return (vector / norm if norm else np.ones(self.dim) / np.sqrt(self.dim)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## LangChain\n.*?```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its '## LangChain' python block"
    return match.group(1)


def tutorial_variables() -> dict:
    """What the tutorial's earlier cells define: documents (with ids) and train / test questions."""
    from llama_index_deepmemory.data.html import load_html_documents

    pages = load_html_documents(DOCS, show_progress=False)
    docs = [Document(id=f"page-{i}", page_content=p.text, metadata={"source": p.metadata["path"]})
            for i, p in enumerate(pages)]
    rng = random.Random(0)
    codes = ["".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in docs]
    train = [(w.format(code), doc.id) for doc, code in zip(docs, codes) for w in TRAIN_WORDINGS]
    rng.shuffle(train)
    test = [(TEST_WORDING.format(code), doc.id) for doc, code in zip(docs, codes)]
    return {
        "docs": docs,
        "openai_embeddings": HashingEmbeddings(),
        "train_questions": [q for q, _ in train],
        "train_relevances": [[(i, 1)] for _, i in train],
        "test_questions": [q for q, _ in test],
        "test_relevances": [[(i, 1)] for _, i in test],
    }


def test_readme_langchain_block_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code = readme_block()
    assert "DeepMemoryLangChainStore(embedding=openai_embeddings)" in code
    assert 'retriever.search_kwargs["deep_memory"] = True' in code
    contexts: list[str] = []

    def answer(messages: list[dict]) -> str:
        system = next(str(m["content"]) for m in messages if str(m.get("content", "")).startswith(CONTEXT_HEADER))
        contexts.append(system.split("----------------\n", 1)[1])
        return "From the docs: " + contexts[-1][:60].replace("\n", " ")

    namespace = tutorial_variables()
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    with openai_chat_server(answer) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url("/v1"))
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    db, job_id, recall = namespace["db"], namespace["job_id"], namespace["recall"]
    assert namespace["ids"] == [doc.id for doc in namespace["docs"]]
    assert db.vectorstore.deep_memory.status(job_id)["status"] == "completed"
    assert db.vectorstore.deep_memory.get_model() == "model_1"
    assert recall["with model"]["recall@10"] > recall["without model"]["recall@10"] + 0.2, recall
    # the QA chain stuffed the retriever's k=10 Deep Memory results into the prompt and printed the answer
    expected = db.similarity_search(namespace["test_questions"][0], k=10, deep_memory=True)
    plain = db.similarity_search(namespace["test_questions"][0], k=10)
    assert [d.id for d in expected] != [d.id for d in plain]
    assert contexts == ["\n\n".join(d.page_content for d in expected)]
    assert "From the docs: " + contexts[0][:60].replace("\n", " ") in out
