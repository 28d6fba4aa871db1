"""Issue 26 (finding 4): a wrong LLM address or key ends `generate` in seconds with one line, and
`evaluate --answers` exits non-zero when every answer failed. Real subprocesses, a real closed port
on 127.0.0.1 and the local OpenAI-compatible server answering 401."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from servers import Response, openai_chat_server

import team_docs as td
from llama_index_deepmemory.data.questions import LLMUnreachableError, dataset_from_query_relevance, generate_question_context_pairs

UNAUTHORIZED = Response(401, json.dumps({"error": {"message": "Incorrect API key provided: sk-wrong",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}}).encode(),
                        {"Content-Type": "application/json"})


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A persisted store of 12 nodes (random vectors: `generate` never embeds)."""
    from llama_index.core.schema import TextNode

    from llama_index_deepmemory.store import DeepMemoryVectorStore

    rng = np.random.default_rng(0)
    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=f"node_{i}", text=f"Paragraph {i} about topic {i}.", embedding=rng.normal(size=8).tolist())
               for i in range(12)])
    path = tmp_path_factory.mktemp("llm") / "store"
    store.persist(str(path))
    return path


def run_cli(args: list[str], base_url: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-wrong", "OPENAI_API_BASE": base_url}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "llama_index_deepmemory.cli", *args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    return result, time.perf_counter() - start


def error_line(stderr: str, command: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"deepmemory {command}: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_generate_gives_up_on_a_closed_port_naming_it(store_path: Path, tmp_path: Path) -> None:
    port = closed_port()
    result, seconds = run_cli(["generate", "--store", str(store_path), "--out-dir", str(tmp_path), "-q", "--workers", "1"],
                              f"http://127.0.0.1:{port}/v1")
    line = error_line(result.stderr, "generate")
    assert result.returncode == 2 and f"127.0.0.1:{port}" in line and "OPENAI_API_BASE" in line
    assert "3 LLM calls in a row" in line
    # 12 nodes at 7-12 s each took minutes before; 3 failed calls (one client retry each) take seconds
    assert seconds < 60, seconds


def test_generate_with_a_rejected_key_is_one_line(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from llama_index_deepmemory.cli import main  # in process: main's return value is the exit code

    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with openai_chat_server(lambda messages: UNAUTHORIZED) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        code = main(["generate", "--store", str(store_path), "--out-dir", str(tmp_path), "-q"])
        asked = server.paths_requested("POST")
    line = error_line(capsys.readouterr().err, "generate")
    assert code == 2 and "401" in line and "OPENAI_API_KEY" in line
    assert 1 <= len(asked) <= 4  # stopped at the first rejection (4 workers may each have asked once)


def test_demo_with_llm_and_a_closed_port_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from llama_index_deepmemory.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"p{i}.html").write_text(f"<html><body><p>Page {i} explains topic number {i}.</p></body></html>")
    port = closed_port()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("OPENAI_API_BASE", f"http://127.0.0.1:{port}/v1")
    start = time.perf_counter()
    assert main(["demo", "--llm", "--docs", str(docs), "--max-nodes", "10", "--out-dir", str(tmp_path / "out"), "-q"]) == 2
    line = error_line(capsys.readouterr().err, "demo")
    assert f"127.0.0.1:{port}" in line and time.perf_counter() - start < 60


def test_connection_failures_in_a_row_stop_generation_but_answers_reset_the_count() -> None:
    """The count is of failures in a row: a server that answers in between never trips it."""
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llama_index.core.schema import TextNode

    class Flaky(CustomLLM):
        fail_every_other: bool = True
        calls: int = 0

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
            self.calls += 1
            if not self.fail_every_other or self.calls % 2:
                raise ConnectionRefusedError(111, "Connection refused")
            return CompletionResponse(text="1. A question?")

        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):  # pragma: no cover
            raise NotImplementedError

    nodes = [TextNode(id_=f"n{i}", text=f"text {i}") for i in range(6)]
    flaky = Flaky()
    dataset = generate_question_context_pairs(nodes, llm=flaky, num_questions_per_chunk=1, retry_delay=0,
                                              show_progress=False, max_connection_failures=2)
    assert len(dataset.queries) == 6 and flaky.calls == 12
    dead = Flaky(fail_every_other=False)
    with pytest.raises(LLMUnreachableError, match="2 LLM calls in a row could not reach the LLM's default endpoint"):
        generate_question_context_pairs(nodes, llm=dead, num_questions_per_chunk=1, retry_delay=0,
                                        show_progress=False, max_connection_failures=2)
    assert dead.calls == 2


def test_evaluate_answers_exits_non_zero_when_every_answer_failed(
    minilm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    from llama_index_deepmemory.cli import main

    store, _ = td.build_index(minilm)
    store.persist(str(tmp_path / "store"))
    questions = tmp_path / "test.json"
    held_out = {q: page for page, (_, qs) in td.JARGON.items() for q in qs[:1]}
    dataset_from_query_relevance(list(held_out), [[(p, 1.0)] for p in held_out.values()], corpus=td.nodes()).save_json(questions)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with openai_chat_server(lambda messages: UNAUTHORIZED) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        code = main(["evaluate", "--answers", "--store", str(tmp_path / "store"), "--questions", str(questions),
                     "--top-k", "2", "--judge", "llama_index", "-q"])
    line = error_line(capsys.readouterr().err, "evaluate")
    assert code == 2 and "every answer failed" in line and "401" in line
    failures = [r.getMessage() for r in caplog.records if "failed for" in r.getMessage()]
    assert len(failures) <= 2 and all(f"of {len(held_out)} questions" in f for f in failures)  # not one per question


def test_generate_exits_non_zero_when_a_node_got_no_questions_and_resumes_only_it(
        store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty answer for one node, after every retry, is not a complete dataset: exit 2 naming
    the node; the saved files let the same command ask for that node only."""
    from llama_index_deepmemory.cli import main
    from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset

    def prompt(messages: list[dict]) -> str:
        return str(messages[-1]["content"])

    def refuses_node_3(messages: list[dict]) -> str:
        return "\n" if "Paragraph 3 " in prompt(messages) else "1. Which topic is it?"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = ["generate", "--store", str(store_path), "--out-dir", str(tmp_path), "-q", "--workers", "2"]
    with openai_chat_server(refuses_node_3) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        code = main(args)
    line = error_line(capsys.readouterr().err, "generate")
    assert code == 2 and "node_3" in line and "same command" in line, line

    def saved() -> dict[str, list[str]]:
        datasets = [EmbeddingQAFinetuneDataset.from_json(tmp_path / f"{name}_dataset.json") for name in ("train", "test")]
        return {qid: ids for dataset in datasets for qid, ids in dataset.relevant_docs.items()}

    first = saved()
    assert sorted({ids[0] for ids in first.values()}) == sorted(f"node_{i}" for i in range(12) if i != 3)
    with openai_chat_server(lambda messages: "1. Which topic is it?") as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        assert main(args) == 0, capsys.readouterr().err
        asked = server.paths_requested("POST")
    assert len(asked) == 1  # only node_3 was asked again
    second = saved()
    assert {ids[0] for ids in second.values()} == {f"node_{i}" for i in range(12)} and first.items() <= second.items()
