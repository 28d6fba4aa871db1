"""Answer-level evaluation against a local OpenAI-compatible server: with vs without Deep Memory,
LLM-judged and ID-based context recall, judge and answer failures counted, never scored as zero."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import pytest
from llama_index.llms.openai import OpenAI

import team_docs as td
from llama_index_deepmemory import read_query_log
from llama_index_deepmemory.answers import (
    ContextRecallEvaluator,
    JudgeOutputError,
    evaluate_answers,
    id_context_precision,
    id_context_recall,
    make_judge,
    parse_context_recall,
)
from llama_index_deepmemory.data.questions import dataset_from_query_relevance
from llama_index_deepmemory.chat import ConversationStore
from scripted_llm import ScriptedLLM, scripted_server, sentences
from servers import Response

UNRELATED = {"How do I bake sourdough?": "bread", "how to undo a git commit": "git"}
TOP_K = 2


def client(server) -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_base=server.url("/v1"), api_key="test", max_retries=0, timeout=20.0)


@pytest.fixture(scope="module")
def trained(minilm):
    """The team handbook with a Deep Memory model trained on the jargon training questions."""
    store, index = td.build_index(minilm)
    queries = [q for page, (train, _) in td.JARGON.items() for q in train]
    relevance = [[(page, 1.0)] for page, (train, _) in td.JARGON.items() for _ in train]
    store.deep_memory.train(queries, relevance)
    assert store.deep_memory.get_model() is not None, "the jargon model should pass the validation gate"
    return store, index


@pytest.fixture(scope="module")
def test_set():
    """Held-out jargon questions plus two plain ones, as an EmbeddingQAFinetuneDataset."""
    questions = {q: page for page, (_, held_out) in td.JARGON.items() for q in held_out}
    questions.update(UNRELATED)
    return dataset_from_query_relevance(list(questions), [[(page, 1.0)] for page in questions.values()], corpus=td.nodes())


# --- pieces ---------------------------------------------------------------------------------
def test_id_metrics_known_values() -> None:
    assert id_context_recall(["a", "b", "c"], ["b", "x"]) == 0.5
    assert id_context_precision(["a", "b", "c", "x"], ["b", "x"]) == 0.5
    assert id_context_precision([], ["b"]) == 0.0
    assert id_context_recall(["b"], ["b"]) == 1.0
    with pytest.raises(ValueError, match="relevant_ids is empty"):
        id_context_recall(["a"], [])


@pytest.mark.parametrize(
    ("reply", "flags"),
    [
        ('{"classifications": [{"statement": "a", "attributed": 1}, {"statement": "b", "attributed": 0}]}', [True, False]),
        ('Sure! ```json\n{"classifications": [{"attributed": true}]}\n``` hope that helps [1]', [True]),
        ('see [1]: [{"statement": "s", "attributed": "0"}, {"attributed": "yes"}]', [False, True]),
    ],
)
def test_parse_context_recall_reads_what_judges_write(reply: str, flags: list[bool]) -> None:
    assert parse_context_recall(reply) == flags


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("", "empty reply"),
        ("Mostly supported, I'd say.", "no JSON"),
        ('{"classifications": []}', "no statements"),
        ('{"classifications": [{"statement": "a", "attributed": 0.7}]}', "no 0/1 'attributed'"),
        ('{"verdict": "yes"}', "'classifications' list"),
    ],
)
def test_parse_context_recall_rejects_unreadable_replies(reply: str, message: str) -> None:
    with pytest.raises(JudgeOutputError, match=message):
        parse_context_recall(reply)


def test_llama_index_judge_scores_share_of_supported_statements() -> None:
    with scripted_server(ScriptedLLM()) as server:
        evaluator = ContextRecallEvaluator(client(server))
        result = evaluator.evaluate(
            query="What is espresso?", contexts=["Espresso is strong coffee.", "It is brewed under pressure."],
            reference="Espresso is strong coffee. It was invented on the moon. It is brewed under pressure. Cats like it.",
        )
        assert result.score == 0.5 and not result.invalid_result
        assert result.feedback == "2 of 4 reference statements supported by the context"
    # the server is gone: a failed call is an invalid result with its reason, never a 0
    failed = evaluator.evaluate(query="q", contexts=["c"], reference="r")
    assert failed.invalid_result and failed.score is None and "Error" in failed.invalid_reason


def test_judge_choice() -> None:
    with scripted_server(ScriptedLLM()) as server:
        name, evaluator = make_judge(client(server), "llama_index")
        assert name == "llama_index" and isinstance(evaluator, ContextRecallEvaluator)
        with pytest.raises(ValueError, match="judge must be"):
            make_judge(client(server), "gpt")


# --- the comparison -------------------------------------------------------------------------
def test_answers_with_and_without_deep_memory(trained, test_set) -> None:
    store, index = trained
    garbled = "How do I bake sourdough?"
    llm = ScriptedLLM(garbage_for=[garbled])
    with scripted_server(llm) as server:
        result = evaluate_answers(store, test_set, client(server), top_k=TOP_K, workers=3)
    table = result.table.set_index("retrievers")
    assert list(table.index) == ["without deep memory", "with deep memory"]
    assert result.judge == "llama_index"  # ragas is not installed in the test environment
    n = len(test_set.queries)

    # ID-based scores agree with the retrievers queried directly
    expected = {}
    for name, deep_memory in (("without deep memory", False), ("with deep memory", True)):
        hits = [float(test_set.relevant_docs[qid][0] in td.top_ids(index, q, TOP_K, deep_memory))
                for qid, q in test_set.queries.items()]
        expected[name] = hits
        assert table.loc[name, "id_context_recall"] == pytest.approx(sum(hits) / n)
        assert table.loc[name, "id_context_precision"] == pytest.approx(sum(hits) / n / TOP_K)
    assert table.loc["with deep memory", "id_context_recall"] > table.loc["without deep memory", "id_context_recall"]
    assert sum(expected["without deep memory"]) <= n - 2  # jargon questions miss without the model

    # the judge saw the retrieved texts: its recall is the ID recall of the questions it could judge
    judged_ids = [qid for qid, q in test_set.queries.items() if q != garbled]
    for name in expected:
        row = table.loc[name]
        assert (row["questions"], row["judged"], row["judge_failures"], row["answer_failures"]) == (n, n - 1, 1, 0)
        want = [expected[name][list(test_set.queries).index(qid)] for qid in judged_ids]
        assert row["context_recall"] == pytest.approx(sum(want) / len(want))  # the failure is left out, not a 0
    assert table.loc["with deep memory", "context_recall"] > table.loc["without deep memory", "context_recall"]

    per_question = result.per_question()
    assert len(per_question) == 2 * n
    failed = per_question[per_question["question"] == garbled]
    assert failed["context_recall"].isna().all() and failed["judge_error"].str.contains("no JSON").all()
    # every answer came from the first retrieved node, through the real prompt
    for record in result.records:
        first_text = td.PAGES[record.retrieved_ids[0]]
        assert record.answer == "Answer from context: " + sentences(first_text)[0]
    assert len(llm.calls["qa"]) == len(llm.calls["judge"]) == 2 * n


def test_answer_failures_are_counted_and_judging_goes_on(trained, test_set) -> None:
    store, index = trained
    llm = ScriptedLLM()

    def responder(messages: list[dict]):
        if "Given the context information and not prior knowledge" in json.dumps(messages):
            return Response(500, b'{"error": {"message": "boom"}}', {"Content-Type": "application/json"})
        return llm(messages)

    retrievers = {"plain": index.as_retriever(similarity_top_k=TOP_K)}
    with scripted_server(responder) as server:
        result = evaluate_answers(retrievers, test_set, client(server), workers=2)
    row = result.table.iloc[0]
    n = len(test_set.queries)
    assert (row["answer_failures"], row["judged"], row["judge_failures"]) == (n, n, 0)
    assert all(r.answer is None and "500" in r.answer_error for r in result.records)
    assert row["context_recall"] == pytest.approx(row["id_context_recall"])


def test_references_and_concurrency_limit(trained, test_set) -> None:
    store, index = trained
    llm = ScriptedLLM()
    in_flight, peak, lock = [0], [0], threading.Lock()

    def responder(messages: list[dict]):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        try:
            return llm(messages)
        finally:
            with lock:
                in_flight[0] -= 1

    qid = next(q for q, text in test_set.queries.items() if text == "how to undo a git commit")
    references = {qid: "To undo the last git commit but keep the changes, run git reset --soft HEAD~1. "
                       "Git was written on a typewriter."}
    with scripted_server(responder) as server:
        result = evaluate_answers({"plain": index.as_retriever(similarity_top_k=TOP_K)}, test_set, client(server),
                                  references=references, workers=1)
    assert peak[0] == 1  # one question at a time: its answer, then its judge
    record = next(r for r in result.records if r.query_id == qid)
    assert record.retrieved_ids[0] == "git" and record.context_recall == 0.5  # the invented sentence is unsupported


def test_without_a_judge_only_id_metrics(trained, test_set) -> None:
    store, _ = trained
    result = evaluate_answers(store, test_set, None, judge_llm=None, top_k=TOP_K)
    assert math.isnan(result.table.loc[0, "context_recall"]) and (result.table["judged"] == 0).all()
    assert all(r.answer is None and r.answer_error is None for r in result.records)


def test_argument_errors(trained, test_set) -> None:
    store, index = trained
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        evaluate_answers(store, test_set, None, judge_llm=None, top_k=0)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        evaluate_answers(store, test_set, None, judge_llm=None, workers=0)
    with pytest.raises(TypeError, match="DeepMemoryVectorStore, a VectorStoreIndex"):
        evaluate_answers(object(), test_set, None, judge_llm=None)
    no_corpus = dataset_from_query_relevance(["how to undo a git commit"], [[("git", 1.0)]])
    with scripted_server(ScriptedLLM()) as server:
        with pytest.raises(ValueError, match="no reference for question"):
            evaluate_answers({"plain": index.as_retriever()}, no_corpus, client(server))
        # with the store, the reference comes from the stored node
        result = evaluate_answers(store, no_corpus, client(server), top_k=TOP_K)
    assert (result.table["context_recall"] == 1.0).all()


def test_an_llm_that_is_not_an_llm_is_refused_naming_it(trained, test_set) -> None:
    """A model name where an LLM goes failed every answer, then blamed OPENAI_API_KEY; a typo'd judge
    name was ignored when nothing is judged."""
    store, _ = trained
    with pytest.raises(TypeError, match=r"llm must be a LlamaIndex LLM .* or None, got 'gpt-4o-mini'"):
        evaluate_answers(store, test_set, "gpt-4o-mini", top_k=TOP_K)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"judge_llm must be a LlamaIndex LLM .* got 42"):
        evaluate_answers(store, test_set, None, judge_llm=42, top_k=TOP_K)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"judge must be 'auto', 'ragas' or 'llama_index', got 'ragass'"):
        evaluate_answers(store, test_set, None, judge_llm=None, judge="ragass", top_k=TOP_K)  # type: ignore[arg-type]


def test_ragas_judge_when_installed(trained, test_set, monkeypatch: pytest.MonkeyPatch) -> None:
    """RAGAS's LLMContextRecall (optional extra) and our evaluator agree with the same deterministic judge."""
    pytest.importorskip("ragas.metrics", reason="the optional ragas extra is not installed (or is broken)")
    store, _ = trained
    monkeypatch.setenv("RAGAS_DO_NOT_TRACK", "true")
    llm = ScriptedLLM()
    with scripted_server(llm) as server:
        ragas = evaluate_answers(store, test_set, client(server), judge="ragas", top_k=TOP_K)
        ours = evaluate_answers(store, test_set, client(server), judge="llama_index", top_k=TOP_K)
    assert ragas.judge == "ragas" and llm.calls["unexpected"] == []
    assert (ragas.table["judged"] == ragas.table["questions"]).all()
    assert list(ragas.table["context_recall"]) == pytest.approx(list(ours.table["context_recall"]))


def test_cli_evaluate_answers(trained, test_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from llama_index_deepmemory.cli import main

    store, _ = trained
    store.persist(str(tmp_path / "store"))
    questions = tmp_path / "test_dataset.json"
    test_set.save_json(str(questions))
    out = tmp_path / "answers.csv"
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with scripted_server(ScriptedLLM()) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        code = main(["evaluate", "--answers", "--store", str(tmp_path / "store"), "--questions", str(questions),
                     "--top-k", str(TOP_K), "--answers-out", str(out), "-q"])
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert "without deep memory" in printed and "with deep memory" in printed and "context_recall" in printed
        assert len(out.read_text().splitlines()) == 1 + 2 * len(test_set.queries)
        # a query log works too: the judge's references then come from the stored nodes
        log = tmp_path / "test.jsonl"
        log.write_text(json.dumps({"query": "how to undo a git commit", "relevant_ids": ["git"]}) + "\n")
        code = main(["evaluate", "--answers", "--store", str(tmp_path / "store"), "--query-log", str(log),
                     "--top-k", str(TOP_K), "-q"])
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert "Answer-level evaluation on 1 questions" in printed
        code = main(["evaluate", "--answers", "--store", str(tmp_path / "store"), "--beir", str(tmp_path), "-q"])
    assert code == 2 and "--answers reads its questions from --questions" in capsys.readouterr().err


def readme_block() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## Answers with and without Deep Memory[^\n]*\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its answer-level/chat python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_chat_and_answers_block_runs(minilm, test_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = td.build_index(minilm)  # its own store: the block retrains it
    train_queries = [q for page, (train, _) in td.JARGON.items() for q in train]
    train_relevance = [[(page, 1.0)] for page, (train, _) in td.JARGON.items() for _ in train]
    store.deep_memory.train(train_queries, train_relevance)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    llm = ScriptedLLM(rewrites={"and if I already pushed it?": "How do I undo a pushed git commit?"})
    namespace = {"store": store, "test_dataset": test_set, "train_queries": train_queries,
                 "train_relevance": train_relevance}
    with scripted_server(llm) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        exec(compile(readme_block(), "README.md", "exec"), namespace)
    table = namespace["result"].table.set_index("retrievers")
    assert table.loc["with deep memory", "context_recall"] > table.loc["without deep memory", "context_recall"]
    saved = ConversationStore(tmp_path / "chats").load("support-1").turns
    assert [t.standalone_question for t in saved] == ["How do I undo a git commit?", "How do I undo a pushed git commit?"]
    queries, relevance = read_query_log(tmp_path / "chats" / "feedback.jsonl")
    assert queries == ["How do I undo a git commit?", "How do I undo a pushed git commit?"]
    assert relevance == [[("git", 1.0)], [("git", 1.0)]]
    assert store.deep_memory.get_model() is not None and llm.calls["unexpected"] == []
    newest = store.deep_memory.list_models()[-1]["name"]  # trained on the feedback plus model_1's data
    assert store.deep_memory.training_data(newest)[0] == train_queries + queries
