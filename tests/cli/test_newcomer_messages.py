"""Issue 26 (findings 5 and 8, the command line): messages a newcomer reads say the right thing, and
`evaluate` caps --recall-k and reads several --query-log files (real MiniLM, real store)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from keyless import write_csv_log
from scripted_llm import ScriptedLLM, scripted_server

import team_docs as td
from llama_index_deepmemory.cli import main
from llama_index_deepmemory.cli_common import for_cli as _for_cli


@pytest.fixture(scope="module")
def pristine(minilm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The team handbook (16 pages) persisted as a CLI store (default embedding), no model yet."""
    store, _ = td.build_index(minilm)
    path = tmp_path_factory.mktemp("handbook") / "store"
    store.persist(str(path))
    return path


@pytest.fixture()
def store(pristine: Path, tmp_path: Path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    return path


def jargon_logs(folder: Path) -> tuple[Path, Path]:
    """The held-out jargon questions split over a JSONL and a CSV log."""
    rows = [(q, [page]) for page, (_, held_out) in td.JARGON.items() for q in held_out]
    first = folder / "a.jsonl"
    first.write_text("".join(json.dumps({"query": q, "relevant_ids": ids}) + "\n" for q, ids in rows[:2]))
    return first, write_csv_log(folder / "b.csv", rows[2:])


def test_evaluate_caps_recall_k_and_reads_several_query_logs(store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    first, second = jargon_logs(tmp_path)
    code = main(["evaluate", "--store", str(store), "--query-log", str(first), "--query-log", str(second),
                 "--recall-k", "1", "16", "1000000000", "--top-k", "1000000000", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"on 4 queries from {first} + {second}" in out
    assert "the store holds 16 nodes: recall@k for k >= 16 is recall@16" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["16"], ["1000000000"])}
    assert rows["1000000000"] == rows["16"] == ["100.0"]  # every page is within the whole store


def test_training_on_few_queries_warns_and_cli_hints_name_cli_commands(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # three questions plain search already answers at rank 1: nothing to gain, so the gate keeps the model off
    log = write_csv_log(tmp_path / "few.csv", [(td.PAGES[page].split(".")[0], [page]) for page in ("git", "tax", "bike")])
    with caplog.at_level(logging.WARNING, logger="llama_index_deepmemory.deep_memory.api"):
        assert main(["train", "--store", str(store), "--query-log", str(log), "--epochs", "2", "-q"]) == 0
    assert any("training on 3 queries, fewer than 10" in r.getMessage() for r in caplog.records)
    out = capsys.readouterr().out
    assert main(["status", "--store", str(store), "job_1"]) == 0
    status = capsys.readouterr().out
    for shown in (out, status):
        flat = " ".join(shown.replace("|", " ").split())  # status wraps its note in a table
        assert "not activated (activate anyway with `deepmemory activate model_1`)" in flat and "set_model" not in flat
    # the library's own hint (for Python users) and its CLI form
    from types import SimpleNamespace

    from llama_index_deepmemory.deep_memory.api import _not_improved_note

    note = _not_improved_note(SimpleNamespace(val_before={}, val_after={}), "model_3")
    assert note.endswith("(activate anyway with store.deep_memory.set_model('model_3'))")  # for Python users
    assert _for_cli(note).endswith("(activate anyway with `deepmemory activate model_3`)")


def test_chat_without_a_key_and_good_with_words(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["chat", "--store", str(store), "--conversation", "c1", "--history-dir", str(tmp_path / "chats")]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "synthetic" not in err and "question" not in err

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setattr(sys, "stdin", io.StringIO("How do I undo a git commit?\n/good x\n/good 1 two\n/good\n/good 1\n"))
    with scripted_server(ScriptedLLM()) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        code = main(["chat", "--store", str(store), "--conversation", "c2", "--history-dir", str(tmp_path / "chats"),
                     "--top-k", "2", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "invalid literal" not in out
    for typed in ("/good x", "/good 1 two", "/good"):
        assert f"feedback not logged: /good takes the numbers of the sources shown under the answer, e.g. /good 2 " \
               f"(got {typed!r})" in out
    assert "Thanks: logged" in out  # a number still works


def test_result_tables_print_every_column() -> None:
    from llama_index_deepmemory.answers import AnswerEvaluation, AnswerRecord, answer_table
    from llama_index_deepmemory.evaluation import display_results

    records = [AnswerRecord(retriever=name, query_id="q", question="?", retrieved_ids=["a"], relevant_ids=["a"],
                            answer="yes", context_recall=1.0, id_context_recall=1.0, id_context_precision=1.0)
               for name in ("without deep memory", "with deep memory")]
    result = AnswerEvaluation(table=answer_table(records), records=records)
    with pd.option_context("display.width", 40, "display.max_columns", 3):
        for shown in (str(result.table), repr(result.table), str(result.table.head(1))):
            assert "..." not in shown
            assert all(column in shown for column in result.table.columns)
        assert str(pd.DataFrame(result.table)).count("...") >= 1  # a plain DataFrame would have hidden columns
    assert result.table["judged"].tolist() == [1, 1]  # still a DataFrame for every use

    class Result:
        def __init__(self, values: dict) -> None:
            self.metric_vals_dict = values

    table = display_results(["a very long retriever name"] * 2, [[Result({f"metric_{i}": i for i in range(12)})]] * 2)
    with pd.option_context("display.width", 40):
        assert "..." not in str(table) and "metric_11" in str(table)
