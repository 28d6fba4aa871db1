"""Question generation through the real OpenAI client against a local OpenAI-compatible server,
the EmbeddingQAFinetuneDataset file format, and the (queries, relevance) conversions."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from llama_index.core.schema import TextNode
from llama_index.llms.openai import OpenAI

from llama_index_deepmemory import (
    DEFAULT_QA_GENERATE_PROMPT_TMPL,
    EmbeddingQAFinetuneDataset,
    PermanentLLMError,
    QuestionGenerationError,
    create_query_relevance,
    dataset_from_query_relevance,
    generate_question_context_pairs,
)
from llama_index_deepmemory.data.questions import is_permanent_error, parse_questions
from servers import FIXTURES, LocalServer, Response, last_user_message, openai_chat_server

CONTEXT = re.compile(r"---------------------\n(.*)\n---------------------", re.S)


def context_of(messages: list[dict]) -> str:
    match = CONTEXT.search(last_user_message(messages))
    assert match, "the prompt lost the template's context block"
    return match.group(1)


def numbered_questions(context: str) -> str:
    """What the fake model answers: LlamaIndex-style numbered lines around a blank line."""
    return f"1. What does '{context}' say?\n\n2) Why is '{context}' true?\n3 Who wrote '{context}'?"


def make_nodes(n: int = 5) -> list[TextNode]:
    return [TextNode(id_=f"node_{i}", text=f"fact number {i}", metadata={"page": f"p{i}"}) for i in range(n)]


def client(server: LocalServer) -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_base=server.url("/v1"), api_key="test", max_retries=0, timeout=5.0)


def test_parse_questions_keeps_llamaindex_semantics() -> None:
    answer = "  1. First?\n2) Second?\n\n3 Third?\n10. Tenth?\nNo number?\n"
    assert parse_questions(answer, 2) == ["First?", "Second?"]
    assert parse_questions(answer, 10) == ["First?", "Second?", "Third?", "Tenth?", "No number?"]
    assert parse_questions("\n \n", 3) == []


def test_generation_through_the_openai_client() -> None:
    nodes = make_nodes()
    with openai_chat_server(lambda messages: numbered_questions(context_of(messages))) as server:
        dataset = generate_question_context_pairs(nodes, llm=client(server), num_questions_per_chunk=2, show_progress=False)
        requests = [r.json() for r in server.requests]
        concurrent = generate_question_context_pairs(nodes, llm=client(server), num_questions_per_chunk=2, num_workers=4, show_progress=False)
    assert concurrent == dataset  # same questions, same ids, same order
    assert len(requests) == len(nodes)
    # the prompt is LlamaIndex's template filled with the node text (no metadata)
    expected_prompts = [
        DEFAULT_QA_GENERATE_PROMPT_TMPL.format(context_str=n.get_content(), num_questions_per_chunk=2) for n in nodes
    ]
    assert [last_user_message(r["messages"]) for r in requests] == expected_prompts
    assert dataset.corpus == {n.node_id: n.text for n in nodes}
    expected = [(q, [n.node_id]) for n in nodes for q in parse_questions(numbered_questions(n.text), 2)]
    assert dataset.query_docid_pairs == expected
    again = generate_question_context_pairs(nodes, llm=_EchoLLM(), num_questions_per_chunk=2, show_progress=False)
    assert list(again.queries) == list(dataset.queries)  # question ids are stable across runs


class _EchoLLM:
    """Duck-typed stand-in only used to re-check id stability without a server."""

    def complete(self, prompt: str) -> str:
        return numbered_questions(CONTEXT.search(prompt).group(1))


def test_failed_chunk_is_retried_then_succeeds() -> None:
    failures = {"fact number 1": 2}
    lock = threading.Lock()

    def responder(messages: list[dict]):
        context = context_of(messages)
        with lock:
            if failures.get(context, 0) > 0:
                failures[context] -= 1
                return Response(500, b'{"error": {"message": "overloaded"}}', {"Content-Type": "application/json"})
        return numbered_questions(context)

    with openai_chat_server(responder) as server:
        dataset = generate_question_context_pairs(
            make_nodes(3), llm=client(server), num_questions_per_chunk=1, retry_limit=3, retry_delay=0.01, show_progress=False
        )
        assert len(server.requests) == 3 + 2
    assert sorted(ids[0] for ids in dataset.relevant_docs.values()) == ["node_0", "node_1", "node_2"]


def test_empty_answers_fail_clearly_or_are_skipped() -> None:
    def responder(messages: list[dict]):
        context = context_of(messages)
        return "  \n\n" if context == "fact number 1" else numbered_questions(context)

    with openai_chat_server(responder) as server:
        with pytest.raises(QuestionGenerationError, match=r"node 'node_1' after 2 attempts: .*without any question"):
            generate_question_context_pairs(
                make_nodes(3), llm=client(server), retry_limit=2, retry_delay=0, on_failure="fail", show_progress=False
            )
        with pytest.warns(UserWarning, match=r"No questions for 1 nodes"):
            dataset = generate_question_context_pairs(
                make_nodes(3), llm=client(server), num_questions_per_chunk=1, retry_limit=2, retry_delay=0, show_progress=False
            )
    assert sorted(ids[0] for ids in dataset.relevant_docs.values()) == ["node_0", "node_2"]
    assert set(dataset.corpus) == {"node_0", "node_1", "node_2"}


def test_fewer_questions_than_requested_warns_like_llamaindex() -> None:
    with openai_chat_server(lambda messages: "Only one question?") as server:
        with pytest.warns(UserWarning, match=r"Fewer questions generated \(1\) than requested \(3\)"):
            dataset = generate_question_context_pairs(make_nodes(1), llm=client(server), num_questions_per_chunk=3, show_progress=False)
    assert list(dataset.queries.values()) == ["Only one question?"]


def test_resume_from_a_partial_file(tmp_path: Path) -> None:
    output = tmp_path / "qa.json"
    nodes = make_nodes(6)
    broken = {"down": True}

    def responder(messages: list[dict]):
        context = context_of(messages)
        if broken["down"] and context == "fact number 3":
            return Response(503, b"{}", {"Content-Type": "application/json"})
        return numbered_questions(context)

    with openai_chat_server(responder) as server:
        llm = client(server)
        with pytest.raises(QuestionGenerationError, match="node_3"):
            generate_question_context_pairs(
                nodes, llm=llm, retry_limit=1, on_failure="fail", output_path=output, save_every=1, show_progress=False
            )
        partial = EmbeddingQAFinetuneDataset.from_json(output)
        assert sorted({ids[0] for ids in partial.relevant_docs.values()}) == ["node_0", "node_1", "node_2"]
        broken["down"] = False
        asked_before = len(server.requests)
        resumed = generate_question_context_pairs(nodes, llm=llm, output_path=output, show_progress=False)
        asked = [context_of(r.json()["messages"]) for r in server.requests[asked_before:]]
        assert asked == ["fact number 3", "fact number 4", "fact number 5"]
        fresh = generate_question_context_pairs(nodes, llm=llm, show_progress=False)
    assert resumed == fresh
    assert EmbeddingQAFinetuneDataset.from_json(output) == fresh
    changed = make_nodes(6)
    changed[0].text = "a different text"
    with pytest.raises(ValueError, match=r"different text of node 'node_0'"):
        generate_question_context_pairs(changed, llm=_EchoLLM(), output_path=output, show_progress=False)


def test_generation_argument_errors() -> None:
    with pytest.raises(ValueError, match="duplicate node id 'node_0'"):
        generate_question_context_pairs(make_nodes(1) + make_nodes(1), llm=_EchoLLM(), show_progress=False)
    with pytest.raises(ValueError, match="num_questions_per_chunk"):
        generate_question_context_pairs(make_nodes(1), llm=_EchoLLM(), num_questions_per_chunk=0)
    with pytest.raises(ValueError, match="on_failure"):
        generate_question_context_pairs(make_nodes(1), llm=_EchoLLM(), on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nodes\[0\]"):
        generate_question_context_pairs(["text"], llm=_EchoLLM())  # type: ignore[list-item]


def test_file_format_is_llamaindex_compatible(tmp_path: Path) -> None:
    # written as llama-index-finetuning did: json.dump(model_dump(), indent=4)
    old = EmbeddingQAFinetuneDataset.from_json(FIXTURES / "qa_dataset_llamaindex.json")
    assert old.queries["q-1"] == "What do widgets turn sprockets into?"
    assert old.relevant_docs == {"q-1": ["node_0"], "q-2": ["node_1", "node_0"]}
    path = tmp_path / "out.json"
    old.save_json(path)
    assert json.loads(path.read_text()) == json.loads((FIXTURES / "qa_dataset_llamaindex.json").read_text())
    assert EmbeddingQAFinetuneDataset.from_json(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"queries": {"q": "x"},\n "corpus": {}, ', r":2: invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"queries": {}, "corpus": {}}', r"missing field\(s\) \['relevant_docs'\]"),
        ('{"queries": {"q": 3}, "corpus": {}, "relevant_docs": {"q": ["a"]}}', r"field 'queries.q'"),
        ('{"queries": {"q": "x"}, "corpus": {"a": "t"}, "relevant_docs": {"q": ["zzz"]}}', "missing from the corpus.*zzz"),
        ('{"queries": {"q": "x"}, "corpus": {}, "relevant_docs": {}}', "without relevant_docs"),
    ],
)
def test_malformed_dataset_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        EmbeddingQAFinetuneDataset.from_json(path)


def test_query_relevance_keeps_every_relevant_id_and_round_trips() -> None:
    dataset = EmbeddingQAFinetuneDataset.from_json(FIXTURES / "qa_dataset_llamaindex.json")
    queries, relevance = create_query_relevance(dataset)
    assert queries == list(dataset.queries.values())
    assert relevance == [[("node_0", 1)], [("node_1", 1), ("node_0", 1)]]
    back = dataset_from_query_relevance(queries, relevance, corpus=dataset.corpus, query_ids=list(dataset.queries))
    assert back == dataset
    nodes = [TextNode(id_=k, text=v) for k, v in dataset.corpus.items()]
    assert dataset_from_query_relevance(queries, relevance, corpus=nodes).corpus == dataset.corpus
    with pytest.raises(ValueError, match=r"relevance\[1\].*unknown ids \['node_1'\]"):
        dataset_from_query_relevance(queries, relevance, corpus={"node_0": "x"})
    with pytest.raises(ValueError, match=r"no relevant_docs"):
        create_query_relevance(EmbeddingQAFinetuneDataset(queries={"q": "x"}, corpus={}, relevant_docs={}))
    with pytest.raises(ValueError, match="same length"):
        dataset_from_query_relevance(["a", "b"], [[("node_0", 1)]])


def test_seed_workflow_end_to_end(tmp_path: Path) -> None:
    """Crawl -> chunk -> node_<i> ids -> 80/20 split -> questions -> (queries, relevance)."""
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index_deepmemory import assign_stable_ids, load_html_documents, split_nodes
    from servers import fixture_site_server

    with fixture_site_server() as site:
        documents = load_html_documents(site.url("/docs/"), timeout=1.0, max_bytes=1_000_000, show_progress=False)
    nodes = assign_stable_ids(SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents(documents))
    train_nodes, test_nodes = split_nodes(nodes, train_fraction=0.8, seed=42)
    with openai_chat_server(lambda messages: numbered_questions(context_of(messages)[:40])) as server:
        train = generate_question_context_pairs(
            train_nodes, llm=client(server), num_questions_per_chunk=1, output_path=tmp_path / "train.json", show_progress=False
        )
    queries, relevance = create_query_relevance(EmbeddingQAFinetuneDataset.from_json(tmp_path / "train.json"))
    assert len(queries) == len(train_nodes) == round(len(nodes) * 0.8)
    train_ids = {n.node_id for n in train_nodes}
    assert [pairs[0][0] for pairs in relevance] == [n.node_id for n in train_nodes]
    assert train_ids.isdisjoint(n.node_id for n in test_nodes) and train_ids <= set(train.corpus)


def error_response(status: int, message: str) -> Response:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()
    return Response(status, body, {"Content-Type": "application/json"})


@pytest.mark.parametrize("workers", [1, 4])
def test_rejected_key_fails_on_the_first_node_without_retrying(tmp_path: Path, workers: int) -> None:
    with openai_chat_server(lambda messages: error_response(401, "Incorrect API key provided: sk-bad")) as server:
        with pytest.raises(PermanentLLMError) as caught:
            generate_question_context_pairs(
                make_nodes(20), llm=client(server), retry_limit=3, retry_delay=0.01, num_workers=workers,
                output_path=tmp_path / "partial.json", show_progress=False,
            )
        n_requests = len(server.requests)
    assert 1 <= n_requests <= workers  # one try per node in flight, never a retry, never the other nodes
    message = str(caught.value)
    assert "AuthenticationError" in message and "Incorrect API key" in message and "OPENAI_API_KEY" in message
    assert "nothing was retried" in message and "query log" in message
    assert len(message.splitlines()) == 1
    assert isinstance(caught.value, QuestionGenerationError)  # callers catching the old error still do


def test_missing_credentials_fail_at_once() -> None:
    import os

    saved = os.environ.pop("OPENAI_API_KEY", None)
    try:
        llm = OpenAI(model="gpt-4o-mini", max_retries=0)
        with pytest.raises(PermanentLLMError, match=r"node 'node_0'.*Missing credentials.*OPENAI_API_KEY"):
            generate_question_context_pairs(make_nodes(50), llm=llm, retry_limit=3, retry_delay=1.0, show_progress=False)
    finally:
        if saved is not None:
            os.environ["OPENAI_API_KEY"] = saved


def test_unknown_model_is_permanent_but_rate_limits_are_retried() -> None:
    with openai_chat_server(lambda messages: error_response(404, "The model `gpt-nope` does not exist")) as server:
        with pytest.raises(PermanentLLMError, match=r"NotFoundError.*model name"):
            generate_question_context_pairs(make_nodes(3), llm=client(server), retry_limit=3, retry_delay=0, show_progress=False)
        assert len(server.requests) == 1
    calls = {"n": 0}
    lock = threading.Lock()

    def limited(messages: list[dict]):
        with lock:
            calls["n"] += 1
            if calls["n"] <= 2:  # the first node's first two tries hit a rate limit, then it recovers
                return error_response(429, "Rate limit reached")
        return numbered_questions(context_of(messages))

    with openai_chat_server(limited) as server:
        dataset = generate_question_context_pairs(
            make_nodes(2), llm=client(server), num_questions_per_chunk=1, retry_limit=3, retry_delay=0.01, show_progress=False
        )
        assert len(server.requests) == 2 + 2
    assert sorted(ids[0] for ids in dataset.relevant_docs.values()) == ["node_0", "node_1"]


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (401, True), (403, True), (404, True), (422, True), (408, False), (409, False), (429, False),
     (500, False), (502, False), (503, False)],
)
def test_status_codes_are_classified(status: int, permanent: bool) -> None:
    class StatusError(Exception):
        status_code = status

    assert is_permanent_error(StatusError("x")) is permanent


def test_dataset_file_with_a_byte_order_mark_loads_and_non_utf8_names_the_file(tmp_path: Path) -> None:
    # e.g. saved by PowerShell's Out-File -Encoding utf8 or Notepad: UTF-8 with a BOM
    original = (FIXTURES / "qa_dataset_llamaindex.json").read_bytes()
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + original)
    assert EmbeddingQAFinetuneDataset.from_json(path) == EmbeddingQAFinetuneDataset.from_json(FIXTURES / "qa_dataset_llamaindex.json")
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"queries": {"q": "caf\xe9?"},\n "corpus": {}, "relevant_docs": {"q": ["a"]}}')
    with pytest.raises(ValueError, match=r"latin1\.json:1: not valid UTF-8"):
        EmbeddingQAFinetuneDataset.from_json(path)


def test_a_preamble_line_is_not_taken_for_a_question() -> None:
    # chat models often open with "Here are 2 questions:"; keeping it dropped the last real question
    answer = "Here are two questions based on the context:\n\n1. What is A?\n2. What is B?"
    with openai_chat_server(lambda messages: answer) as server:
        dataset = generate_question_context_pairs(make_nodes(1), llm=client(server), num_questions_per_chunk=2, show_progress=False)
    assert list(dataset.queries.values()) == ["What is A?", "What is B?"]
    assert parse_questions("**Questions:**\n1. Why?\nHow so?", 3) == ["Why?", "How so?"]


def test_prompt_with_unescaped_braces_is_a_clear_error_before_any_call() -> None:
    template = 'Context: {context_str}\nAnswer as JSON: {"questions": ["..."]}'
    with openai_chat_server(lambda messages: "1. Q?") as server:
        with pytest.raises(ValueError, match=r"qa_generate_prompt_tmpl.*'\"questions\"'.*\{\{"):
            generate_question_context_pairs(make_nodes(1), llm=client(server), qa_generate_prompt_tmpl=template, show_progress=False)
        assert server.requests == []
        escaped = template.replace('{"', '{{"').replace("]}", "]}}")
        dataset = generate_question_context_pairs(make_nodes(1), llm=client(server), qa_generate_prompt_tmpl=escaped, num_questions_per_chunk=1, show_progress=False)
    assert list(dataset.queries.values()) == ["Q?"]
