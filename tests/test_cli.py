"""The ``deepmemory`` command on a tiny HTML folder (real MiniLM, real store, local fake OpenAI API)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from servers import last_user_message, openai_chat_server

from llama_index_deepmemory.cli import main
from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset

PAGES = {
    "sorting.html": ("Sorting", "Use sorted(items) to get a new sorted list, or list.sort() to sort in place. "
                     "The key argument sorts by a computed value and reverse=True sorts descending."),
    "files.html": ("Files", "Open a file with open(path) inside a with statement. Read lines with readlines() "
                   "and write text with write(); the file is closed when the block ends."),
    "threads.html": ("Threads", "The threading module starts threads; a Lock protects shared state. "
                     "The global interpreter lock lets one thread run Python bytecode at a time."),
    "dates.html": ("Dates", "The datetime module represents dates and times; timedelta adds days, "
                   "and strftime formats a date as text."),
}
QUESTIONS = {
    "How do I sort a list in reverse order?": "sorting.html",
    "How do I read every line of a text file?": "files.html",
    "How can two threads share data safely?": "threads.html",
    "How do I add three days to a date?": "dates.html",
}


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    for name, (title, text) in PAGES.items():
        (folder / name).write_text(
            f"<html><head><title>{title}</title></head><body><nav>menu</nav>"
            f"<div role='main'><h1>{title}</h1><p>{text}</p></div></body></html>", "utf-8")
    return folder


@pytest.fixture()
def store(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "store"
    assert main(["ingest", str(site), "--store", str(path), "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    assert "Stored 4 nodes from 4 pages" in capsys.readouterr().out
    return path


def node_ids_by_page(store: Path) -> dict[str, str]:
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    nodes = DeepMemoryVectorStore.from_persist_path(str(store)).get_nodes()
    return {node.metadata["path"]: node.node_id for node in nodes}


def write_questions(path: Path, store: Path) -> Path:
    ids = node_ids_by_page(store)
    dataset = EmbeddingQAFinetuneDataset(
        queries={f"q{i}": q for i, q in enumerate(QUESTIONS)},
        corpus={},
        relevant_docs={f"q{i}": [ids[page]] for i, page in enumerate(QUESTIONS.values())},
    )
    dataset.save_json(path)
    return path


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys\nfrom llama_index_deepmemory import cli\n"
        "for argv in (['--help'], ['demo', '--help'], ['ingest', '--help'], ['evaluate', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit as exc:\n        assert exc.code == 0\n"
        "heavy = [m for m in ('torch', 'llama_index', 'faiss', 'pandas', 'matplotlib', 'bs4') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    module = subprocess.run(
        [sys.executable, "-m", "llama_index_deepmemory.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert module.returncode == 0 and "demo" in module.stdout and "ingest" in module.stdout


def test_ingest_then_query_finds_the_right_page(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = node_ids_by_page(store)
    assert main(["query", "How do I sort a list in reverse order?", "--store", str(store), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "without Deep Memory" in out  # nothing trained yet
    first_row = out.splitlines()[2].split()
    assert first_row[0] == "1" and first_row[2] == ids["sorting.html"]


def test_train_evaluate_and_query_with_deep_memory(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_questions(tmp_path / "questions.json", store)
    assert main(["train", "--store", str(store), "--questions", str(questions), "--epochs", "3", "--always-activate", "-q"]) == 0
    assert "active Deep Memory model: model_1" in capsys.readouterr().out
    plot = tmp_path / "recall.png"
    code = main(["evaluate", "--store", str(store), "--questions", str(questions), "--recall-k", "1", "2", "4",
                 "--metrics", "hit_rate", "mrr", "ndcg", "--top-k", "4", "--plot", str(plot), "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "retrievers" in out and "hit_rate" in out and "ndcg" in out
    table = out[out.index("RetrieverEvaluator"):].splitlines()
    assert table[1].split() == ["retrievers", "hit_rate", "mrr", "ndcg"]
    assert table[2].split()[:3] == ["without", "deep", "memory"] and table[3].split()[:3] == ["with", "deep", "memory"]
    # every question's page is among 4 pages: recall@4 and hit_rate@4 are 100% for the plain store
    recall_rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if re.match(r"^\d+\s", line)}
    assert float(recall_rows["4"][0]) == 100.0
    assert float(table[2].split()[3]) == 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["query", "dates", "--store", str(store), "--no-deep-memory"]) == 0
    assert "without Deep Memory" in capsys.readouterr().out
    assert main(["query", "dates", "--store", str(store)]) == 0
    assert "with Deep Memory" in capsys.readouterr().out


def test_generate_with_an_openai_compatible_server(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def responder(messages: list[dict]) -> str:
        text = last_user_message(messages)
        topic = next(title for title, body in PAGES.values() if body[:30] in text)
        return f"1. What does the {topic} page explain?"

    with openai_chat_server(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        out_dir = tmp_path / "questions"
        code = main(["generate", "--store", str(store), "--out-dir", str(out_dir), "--test-fraction", "0.25",
                     "--workers", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    train = EmbeddingQAFinetuneDataset.from_json(out_dir / "train_dataset.json")
    test = EmbeddingQAFinetuneDataset.from_json(out_dir / "test_dataset.json")
    assert len(train.queries) == 3 and len(test.queries) == 1
    titles = {node_id: PAGES[page][0] for page, node_id in node_ids_by_page(store).items()}
    for dataset in (train, test):
        for qid, query in dataset.queries.items():
            (node_id,) = dataset.relevant_docs[qid]
            assert query == f"What does the {titles[node_id]} page explain?"


def test_user_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, site: Path, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    cases = [
        (["query", "x", "--store", str(tmp_path / "nowhere")], "no store at"),
        (["ingest", str(site), "--store", str(store)], "already exists"),
        (["ingest", str(tmp_path / "missing"), "--store", str(tmp_path / "s2")], "missing"),
        (["evaluate", "--store", str(store), "--questions", str(tmp_path / "absent.json")], "not found"),
        (["demo", "--docs", str(site), "--questions", "faq", "--out-dir", str(tmp_path / "d")], "no FAQ pages"),
    ]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cases.append((["generate", "--store", str(store)], "OPENAI_API_KEY"))
    foreign = tmp_path / "foreign.json"
    EmbeddingQAFinetuneDataset(queries={"q": "x"}, corpus={}, relevant_docs={"q": ["elsewhere_1"]}).save_json(foreign)
    cases.append((["evaluate", "--store", str(store), "--questions", str(foreign)], "not in"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", "utf-8")
    cases.append((["train", "--store", str(store), "--questions", str(bad_json)], "invalid JSON"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--store", str(store)])  # argparse: --questions or --query-log required
    assert exc.value.code == 2
