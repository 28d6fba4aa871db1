"""notebooks/langchain_quickstart.ipynb runs top to bottom against a local OpenAI-compatible server.

The server is a deterministic 'LLM': asked for a question about a chunk, it names the chunk by a code
word that never occurs in its text (team jargon, as in real query logs), in varying wordings, so plain
retrieval cannot find the chunk but Deep Memory, trained on sibling questions, can. Asked to answer
with retrieved context, it quotes the first context piece, so the answer shows what was retrieved.
"""

from __future__ import annotations

import json
import random
import re
import threading
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("langchain_openai")
pytest.importorskip("langchain_classic")
pytest.importorskip("langchain_text_splitters")

from notebook_run import run_notebook  # noqa: E402
from servers import openai_chat_server  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "langchain_quickstart.ipynb"
INPUT = "generate a question from the following input: "
CONTEXT_HEADER = "Use the following pieces of context to answer the user's question."
WORDINGS = ("What does the {} section explain?", "Where is {} documented?", "How do I use {}?",
            "Tell me about {}.", "What is {} for?")


def code_word(text: str) -> str:
    rng = random.Random(text)
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))


class FakeLLM:
    """Answers the notebook's two kinds of chat requests; records what it saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked: dict[str, int] = {}  # chunk text -> questions asked about it
        self.chunk_of_code: dict[str, str] = {}
        self.qa: list[tuple[str, str]] = []  # (question, retrieved context)

    def __call__(self, messages: list[dict]) -> str:
        contents = [str(m.get("content", "")) for m in messages]
        for content in contents:
            if INPUT in content:
                text = content.split(INPUT, 1)[1]
                code = code_word(text)
                with self.lock:
                    n = self.asked.get(text, 0)
                    self.asked[text] = n + 1
                    self.chunk_of_code[code] = text
                return json.dumps({"question": WORDINGS[n % len(WORDINGS)].format(code)})
        system = next((c for c in contents if c.startswith(CONTEXT_HEADER)), None)
        assert system is not None, f"unexpected request: {contents}"
        context = system.split("----------------\n", 1)[1]
        with self.lock:
            self.qa.append((contents[-1], context))
        return "From the docs: " + context[:60].replace("\n", " ")


def _recall(text: str, title: str, k: int) -> float:
    block = text.split(f"---- Evaluating {title} ----", 1)[1]
    return float(re.search(rf"Recall@{k}:\s+([\d.]+)%", block).group(1))


@pytest.mark.slow
def test_langchain_notebook_runs_against_a_local_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    llm = FakeLLM()
    with openai_chat_server(llm, max_lifetime_s=300) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url("/v1"))
        text, elapsed = run_notebook(NOTEBOOK)
    for expected in (
        "20 pages",
        "60 training questions, 30 test questions",
        "---- Evaluating without Deep Memory ----",
        "---- Evaluating with Deep Memory ----",
        "Answer: From the docs: ",
        "documents reloaded; active Deep Memory model: model_1",
        "Notebook ran in",
    ):
        assert expected in text, expected
    n_chunks = int(re.search(r"(\d+) chunks, e\.g\.", text).group(1))
    assert 30 <= n_chunks <= 80  # the splitter cut the 20 short pages
    assert f"{n_chunks} documents stored, dimension 384" in text
    assert sum(llm.asked.values()) >= 90 and len(llm.asked) > 20  # questions came from the LLM, many chunks
    # the questions' code words are not in the texts: Deep Memory lifts recall on held-out wordings
    without, with_model = _recall(text, "without Deep Memory", 10), _recall(text, "with Deep Memory", 10)
    assert with_model > without + 20, (without, with_model)
    # the QA chain answered from the retrieved context; with Deep Memory the asked-about chunk came first
    assert len(llm.qa) == 2
    (question, context_with), (question_again, context_without) = llm.qa
    assert question == question_again and context_with != context_without
    code = re.search(r"\b((?:[bdfgklmnprstvz][aeiou]){3})\b", question).group(1)
    assert context_with.startswith(llm.chunk_of_code[code] + "\n\n"), (question, context_with[:200])
    assert not context_without.startswith(llm.chunk_of_code[code] + "\n\n")
    relevant = re.search(r"\(relevant: (\S+)\)", text).group(1)
    top_with = re.search(r"with deep memory, top sources: \['([^']+)'", text).group(1)
    assert top_with == relevant
    assert "Answer: From the docs: " + context_with[:60].replace("\n", " ") in text
    assert elapsed < 180, f"the notebook should stay quick; took {elapsed:.0f}s"
