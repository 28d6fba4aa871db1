"""Smoke runs of the demo pipeline on a tiny docs folder (real MiniLM, store, training, evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import last_user_message, openai_chat_server

from llama_index_deepmemory.demo import run_demo
from llama_index_deepmemory.store import DeepMemoryVectorStore

FAQ = [
    ("How do I sort a list?", "Call sorted(items) for a new list or items.sort() to sort in place."),
    ("How do I read a file line by line?", "Iterate over the open file object in a for loop."),
    ("How do I copy a dictionary?", "Use dict.copy() for a shallow copy or copy.deepcopy for a deep one."),
    ("Why are default arguments shared?", "Default values are evaluated once, when the function is defined."),
    ("How do I run a shell command?", "Use subprocess.run with a list of arguments."),
    ("How do I format a float with two decimals?", "Write f'{value:.2f}' in an f-string."),
    ("How do I measure elapsed time?", "Take time.perf_counter() before and after and subtract."),
    ("How do I remove duplicates from a list?", "Build dict.fromkeys(items) to keep the order, then list() it."),
    ("How do I parse JSON?", "json.loads turns a JSON string into Python objects."),
    ("How do I make an HTTP request?", "urllib.request.urlopen fetches a URL from the standard library."),
    ("How do I generate random numbers?", "The random module offers random(), randint() and choice()."),
    ("How do I check the Python version?", "Look at sys.version_info or run python --version."),
]

TUTORIAL = {
    "classes": "Classes bundle data and behaviour; methods take self.",
    "errors": "Exceptions are raised with raise and handled with try and except.",
    "modules": "A module is a file of definitions; import makes them available.",
    "strings": "Strings are immutable sequences of characters with methods like split and join.",
}


def write_docs(root: Path) -> Path:
    (root / "faq").mkdir(parents=True)
    sections = "".join(
        f"<section id='q{i}'><h3>{q}<a class='headerlink' href='#q{i}'>¶</a></h3><p>{a}</p></section>"
        for i, (q, a) in enumerate(FAQ)
    )
    (root / "faq" / "programming.html").write_text(
        f"<html><body><div role='main'><section id='top'><h1>Programming FAQ</h1>{sections}</section></div>"
        "</body></html>", "utf-8")
    (root / "tutorial").mkdir()
    for name, text in TUTORIAL.items():
        (root / "tutorial" / f"{name}.html").write_text(
            f"<html><body><div role='main'><h1>{name}</h1><p>{text}</p></div></body></html>", "utf-8")
    return root


def test_demo_runs_offline_and_reuses_cached_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = write_docs(tmp_path / "docs")
    cache, out = tmp_path / "cache", tmp_path / "out"
    result = run_demo(docs, questions="faq", max_nodes=20, test_fraction=0.25, cache_dir=cache, out_dir=out,
                      train_options={"epochs": 3}, show_progress=False)
    printed = capsys.readouterr().out
    assert result.question_source == "Python FAQ questions"
    assert (result.num_nodes, result.num_train_queries, result.num_test_queries) == (16, 9, 3)
    assert result.retrievers["retrievers"].tolist() == ["without deep memory", "with deep memory"]
    assert list(result.recall.columns) == ["without deep memory", "with deep memory"]
    assert result.recall.index.tolist() == list(range(1, 101))
    assert result.recall.iloc[-1].tolist() == [1.0, 1.0]  # 16 nodes: everything is within the top 100
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"
    assert len(DeepMemoryVectorStore.from_persist_path(str(result.store_path))) == 16
    assert (out / "train_dataset.json").is_file() and (out / "test_dataset.json").is_file()
    for text in ("Recall@k on 3 held-out questions", "Deep Memory minus plain store", "RetrieverEvaluator", "Times:", "--docs"):
        assert text in printed

    cache_files = list((cache / "embeddings").iterdir())
    assert len(cache_files) == 1
    written = cache_files[0].stat().st_mtime_ns
    run_demo(docs, questions="faq", max_nodes=20, test_fraction=0.25, cache_dir=cache, out_dir=out,
             train_options={"epochs": 3}, show_progress=False)
    assert cache_files[0].stat().st_mtime_ns == written  # nothing new was embedded


def test_demo_with_llm_questions_for_docs_without_faq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = write_docs(tmp_path / "docs") / "tutorial"

    def responder(messages: list[dict]) -> str:
        topic = next(name for name, text in TUTORIAL.items() if text in last_user_message(messages))
        return f"1. What does the tutorial say about {topic}?"

    with openai_chat_server(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        result = run_demo(docs, questions="openai", max_nodes=10, test_fraction=0.5, use_cache=False,
                          out_dir=tmp_path / "out", train_options={"epochs": 2}, show_progress=False)
    assert result.question_source.startswith("synthetic questions")
    assert (result.num_nodes, result.num_train_queries, result.num_test_queries) == (4, 2, 2)


def test_demo_without_faq_or_key_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    docs = write_docs(tmp_path / "docs") / "tutorial"
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        run_demo(docs, out_dir=tmp_path / "out", show_progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_demo(tmp_path / "empty", out_dir=tmp_path / "out", show_progress=False, questions="faq")


def test_demo_stays_offline_with_a_key_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26: OPENAI_API_KEY alone never makes the demo call an LLM; --llm (questions="openai") does."""
    from llama_index_deepmemory.cli import main
    from llama_index_deepmemory.demo import load_demo_data

    requests: list[list[dict]] = []

    def responder(messages: list[dict]) -> str:
        requests.append(messages)
        return "1. What is this about?"

    docs = write_docs(tmp_path / "docs")
    with openai_chat_server(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        nodes, train, test, source = load_demo_data(docs, max_nodes=20, out_dir=tmp_path / "out", show_progress=False)
        assert source == "Python FAQ questions" and len(train.queries) + len(test.queries) == len(FAQ)
        assert requests == []  # the key was set, the server was up, and nothing asked it
        # docs without a FAQ: an error naming --llm, still no request
        assert main(["demo", "--docs", str(docs / "tutorial"), "--out-dir", str(tmp_path / "o2"), "-q"]) == 2
        assert "--llm" in capsys.readouterr().err and requests == []
        assert main(["demo", "--llm", "--questions", "faq", "--docs", str(docs)]) == 2
        assert "give one of them" in capsys.readouterr().err
        *_, source = load_demo_data(docs / "tutorial", questions="openai", max_nodes=10, test_fraction=0.5,
                                    out_dir=tmp_path / "o3", show_progress=False)
    assert source.startswith("synthetic questions") and len(requests) == len(TUTORIAL)


def test_recall_verdict_says_where_deep_memory_wins_and_loses() -> None:
    import pandas as pd

    from llama_index_deepmemory.demo import recall_verdict

    def table(without: list[float], with_dm: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"without deep memory": without, "with deep memory": with_dm}, index=[1, 3, 5, 10])

    mixed = recall_verdict(table([0.596, 0.808, 0.885, 0.923], [0.615, 0.769, 0.846, 0.923]))
    assert mixed == ("Deep Memory minus plain store, recall points: @1 +1.9, @3 -3.9, @5 -3.9, @10 +0.0; "
                     "it helps at k=1 and loses at k=3, 5.")
    assert recall_verdict(table([0.5] * 4, [0.4] * 4)).endswith("it loses at k=1, 3, 5, 10 and never helps.")
    assert recall_verdict(table([0.5] * 4, [0.6] * 4)).endswith("it helps at k=1, 3, 5, 10 and loses nowhere.")
    assert recall_verdict(table([0.5] * 4, [0.5] * 4)).endswith("no change at any k.")
