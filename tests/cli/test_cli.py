"""The ``deepmemory`` command on a tiny HTML folder (real MiniLM, real store, local fake OpenAI API)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from keyless import write_csv_log
from servers import last_user_message, openai_chat_server

from llama_index_deepmemory.cli import TRAIN_DEFAULTS, _format_results, build_parser, main
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


def write_site(folder: Path) -> Path:
    folder.mkdir()
    for name, (title, text) in PAGES.items():
        (folder / name).write_text(
            f"<html><head><title>{title}</title></head><body><nav>menu</nav>"
            f"<div role='main'><h1>{title}</h1><p>{text}</p></div></body></html>", "utf-8")
    return folder


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    return write_site(tmp_path / "site")


@pytest.fixture(scope="module")
def pristine_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ingested store per module; tests get a copy (ingest output is checked by test_ingest_output)."""
    root = tmp_path_factory.mktemp("pristine")
    path = root / "store"
    assert main(["ingest", str(write_site(root / "site")), "--store", str(path), "--cache-dir", str(root / "cache"), "-q"]) == 0
    return path


@pytest.fixture()
def store(pristine_store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(pristine_store, path)
    return path


def test_ingest_output(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    assert main(["ingest", str(site), "--store", str(path), "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    assert "Stored 4 nodes from 4 pages" in capsys.readouterr().out
    assert (path / "manifest.json").is_file()


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
    assert main(["train", "--store", str(store)]) == 2  # sources may now be combined: at least one is required
    assert "train needs training data: --questions FILE.json, --query-log LOG" in capsys.readouterr().err


# --- issue 16: inputs checked first, damaged stores kept, model management, batch queries ------
def subcommand_parsers() -> dict[str, "argparse.ArgumentParser"]:
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_has_help_with_its_default() -> None:
    import argparse

    parsers = {"": build_parser(), **subcommand_parsers()}
    assert {"ingest", "generate", "train", "evaluate", "query", "status", "models", "activate", "demo"} <= set(parsers)
    undocumented = []
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = action.help or ""
            in_required_group = any(action in g._group_actions and g.required for g in parser._mutually_exclusive_groups)
            needs_default = bool(action.option_strings) and not action.required and not in_required_group
            if not text or (needs_default and "default" not in text and action.dest != "deep_memory"):
                undocumented.append((name, action.option_strings or action.dest, text))
    assert undocumented == []


def test_train_defaults_in_help_are_the_library_defaults() -> None:
    from llama_index_deepmemory.deep_memory.training import TrainOptions

    defaults = TrainOptions()
    assert TRAIN_DEFAULTS == {name: getattr(defaults, name) for name in TRAIN_DEFAULTS}
    text = subcommand_parsers()["train"].format_help()
    assert f"default: {defaults.epochs}" in text and f"default: {defaults.learning_rate}" in text


def test_bad_inputs_fail_before_the_embedding_model_loads(store: Path, site: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    (damaged / "manifest.json").unlink()
    bad_log = tmp_path / "bad.csv"
    bad_log.write_text("question,ids\nx,node_1\n", "utf-8")
    foreign_log = tmp_path / "foreign.csv"
    foreign_log.write_text("query,relevant_ids\nx,elsewhere_1;elsewhere_2\n", "utf-8")
    cases = [
        (["query", "x", "--store", str(tmp_path / "nowhere")], "no store at"),
        (["query", "x", "--store", str(damaged)], "damaged store"),
        (["query", "--file", str(tmp_path / "none.txt"), "--store", str(store)], "query file"),
        (["train", "--store", str(store), "--query-log", str(tmp_path / "none.csv")], "query log"),
        (["train", "--store", str(store), "--query-log", str(bad_log)], "missing column 'query'"),
        (["evaluate", "--store", str(store), "--query-log", str(foreign_log)], "2 node ids that are not in"),
        (["evaluate", "--store", str(store), "--beir", str(tmp_path / "nobeir")], "BEIR folder"),
        (["ingest", str(site), "--store", str(tmp_path / "new"), "--embed-model", "BAAI/bge-small-en-v1.5"],
         "neither a local folder nor in the Hugging Face cache"),
        (["ingest", str(site), "--store", str(tmp_path / "new"), "--embed-model", "./no/such/model"], "does not exist"),
    ]
    code = (
        "import json, sys, time\nfrom llama_index_deepmemory.cli import main\n"
        f"cases = {json.dumps([argv for argv, _ in cases])}\n"
        "for argv in cases:\n"
        "    start = time.perf_counter()\n"
        "    print('RC', main(argv), round(time.perf_counter() - start, 1), file=sys.stderr, flush=True)\n"
        "print('LOADED', 'sentence_transformers' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    lines = result.stderr.strip().splitlines()
    assert "LOADED False" in lines[-1], result.stderr  # no case loaded the embedding model
    errors = [line for line in lines if line.startswith("deepmemory ")]
    codes = [line for line in lines if line.startswith("RC ")]
    assert len(errors) == len(codes) == len(cases), result.stderr
    for (argv, expected), error, rc in zip(cases, errors, codes):
        assert rc.split()[1] == "2", (argv, rc)
        assert expected in error, (argv, error)


def test_ingest_never_overwrites_a_damaged_store(store: Path, site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_questions(store.parent / "questions.json", store)
    assert main(["train", "--store", str(store), "--questions", str(questions), "--epochs", "2", "--always-activate", "-q"]) == 0
    (store / "manifest.json").unlink()
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    capsys.readouterr()
    assert main(["ingest", str(site), "--store", str(store), "-q"]) == 2
    err = capsys.readouterr().err
    assert "damaged store" in err and "manifest.json is missing" in err and "--replace" in err and "backup" in err
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before  # nothing touched
    assert any(name.endswith("arrays.safetensors") for name in before)  # the trained model is still there
    other = store.parent / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", "utf-8")
    assert main(["ingest", str(site), "--store", str(other), "-q"]) == 2
    assert "not empty" in capsys.readouterr().err and (other / "notes.txt").read_text("utf-8") == "mine"
    assert main(["ingest", str(site), "--store", str(store), "--replace", "-q"]) == 0
    assert (store / "manifest.json").is_file()


def test_status_models_and_activate(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--store", str(store)]) == 0
    assert "No Deep Memory models" in capsys.readouterr().out
    questions = write_questions(tmp_path / "questions.json", store)
    assert main(["train", "--store", str(store), "--questions", str(questions), "--epochs", "2", "--always-activate", "-q"]) == 0
    train_out = capsys.readouterr().out
    assert train_out.count("model_1") >= 2 and "validation nDCG@10" in train_out
    assert not ("not activated" in train_out and "activated anyway" in train_out)  # one story, not two
    assert main(["models", "--store", str(store)]) == 0
    models_out = capsys.readouterr().out
    assert models_out.splitlines()[0].startswith("* model_1  job job_1: ")
    assert "validation nDCG@10" in models_out
    assert main(["status", "--store", str(store)]) == 0
    status_out = capsys.readouterr().out
    assert "job_1" in status_out and "completed" in status_out and "Active Deep Memory model: model_1" in status_out
    assert main(["status", "job_1", "--store", str(store)]) == 0
    assert "model_1:" in capsys.readouterr().out
    assert main(["status", "job_9", "--store", str(store)]) == 2
    assert "no job 'job_9'" in capsys.readouterr().err
    assert main(["activate", "none", "--store", str(store)]) == 0
    assert "active Deep Memory model: none" in capsys.readouterr().out
    assert main(["query", "dates", "--store", str(store), "-q"]) == 0
    assert "without Deep Memory" in capsys.readouterr().out
    assert main(["activate", "model_7", "--store", str(store)]) == 2
    assert "kept models: ['model_1']" in capsys.readouterr().err
    assert main(["activate", "model_1", "--store", str(store)]) == 0
    assert main(["query", "dates", "--store", str(store), "-q"]) == 0
    assert "with Deep Memory (model_1)" in capsys.readouterr().out


def test_evaluate_reads_the_query_logs_train_reads(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = node_ids_by_page(store)
    log = write_csv_log(tmp_path / "test_log.csv", [(q, [ids[page]]) for q, page in QUESTIONS.items()])
    assert main(["train", "--store", str(store), "--query-log", str(log), "--epochs", "2", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--store", str(store), "--query-log", str(log), "--recall-k", "1", "4", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"on 4 queries from {log}" in out
    recall_rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if re.match(r"^\d+\s", line)}
    assert float(recall_rows["4"][0]) == 100.0  # 4 pages: every page is within the top 4


def test_query_batch_stdin_and_interactive(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import io

    ids = node_ids_by_page(store)
    queries = tmp_path / "queries.txt"
    queries.write_text("How do I sort a list in reverse order?\n\nHow can two threads share data safely?\n", "utf-8")
    assert main(["query", "--file", str(queries), "--store", str(store), "--top-k", "1", "-q"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("\n\n") if b.strip()]
    assert len(blocks) == 2
    assert blocks[0].splitlines()[2].split()[2] == ids["sorting.html"]
    assert blocks[1].splitlines()[2].split()[2] == ids["threads.html"]
    assert "Threads (threads.html)" in blocks[1]  # the source page's title and path

    monkeypatch.setattr(sys, "stdin", io.StringIO("How do I add three days to a date?\n"))
    assert main(["query", "--store", str(store), "--top-k", "1", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[2] == ids["dates.html"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("How do I read every line of a text file?\n\n"))
    assert main(["query", "--store", str(store), "--top-k", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("Top 1 for") == 1 and ids["files.html"] in out


def test_result_table_stays_aligned_with_long_ids() -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    results = [
        NodeWithScore(node=TextNode(id_="n1", text="short", metadata={"title": "A", "path": "a.html"}), score=0.9),
        NodeWithScore(node=TextNode(id_="a-very-long-node-identifier-" * 3, text="long", metadata={"url": "http://x/b"}),
                      score=0.5),
    ]
    lines = _format_results(results)
    header, first, second = lines[0], lines[1], lines[3]
    column = header.index("source")
    assert first[column:].startswith("A (a.html)") and second[column:].startswith("http://x/b")
    assert lines[2].strip() == "short" and lines[4].strip() == "long"


def test_generate_without_a_key_points_to_the_keyless_path(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["generate", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "--query-log" in err and "questions='faq'" not in err


def test_quiet_hides_every_progress_bar(store: Path, tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "questions.json", store)
    result = subprocess.run(
        [sys.executable, "-m", "llama_index_deepmemory.cli", "train", "--store", str(store), "--questions", str(questions),
         "--epochs", "2", "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr and "%|" not in result.stderr, result.stderr


def test_training_summary_names_the_gate_metric_and_the_model(store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_questions(tmp_path / "questions.json", store)
    assert main(["train", "--store", str(store), "--questions", str(questions), "--epochs", "2", "-q"]) == 0
    out = capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.startswith("Deep Memory job job_1 completed:"))
    assert re.search(r"validation nDCG@10 \d\.\d{3} -> \d\.\d{3} \([+-]\d\.\d{3}\)", summary), summary
    assert "model_1: " in summary and ("query adapter" in summary or "keyword (BM25) re-scoring only" in summary)
    assert ("is now the active model" in summary) != ("not activated" in summary)


def test_a_corrupted_store_file_says_what_to_do(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((store / "manifest.json").read_text("utf-8"))
    target = store / manifest["generation"] / "nodes.jsonl"
    data = bytearray(target.read_bytes())
    data[10] ^= 1  # one flipped bit, same size
    target.write_bytes(bytes(data))
    assert main(["query", "x", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "fails its sha256 check" in err and "backup" in err and "--replace" in err
    target.write_bytes(bytes(data[:-5]))
    assert main(["models", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "bytes, the manifest says" in err and "backup" in err


@pytest.mark.slow
def test_two_train_commands_on_one_store_at_once_keep_both(store: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Two `deepmemory train` processes on one store at once: both exit 0 and both models and jobs
    are kept (distinct ids); then `models --delete/--prune` remove models, never the active one."""
    questions = write_questions(tmp_path / "questions.json", store)
    command = [sys.executable, "-m", "llama_index_deepmemory.cli", "train", "--store", str(store), "--questions",
               str(questions), "--epochs", "2", "--always-activate", "-q"]
    children = [subprocess.Popen(command + ["--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for seed in (1, 2)]
    outputs = [child.communicate(timeout=600) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err[-1500:] for _, err in outputs]
    assert main(["status", "--store", str(store)]) == 0
    status = capsys.readouterr().out
    assert re.search(r"job_1\s+completed", status) and re.search(r"job_2\s+completed", status), status
    assert main(["models", "--store", str(store)]) == 0
    listed = capsys.readouterr().out
    assert "model_1" in listed and "model_2" in listed, listed
    active = re.search(r"^\* (model_\d)", listed, re.M).group(1)
    other = "model_2" if active == "model_1" else "model_1"
    assert main(["models", "--store", str(store), "--delete", active]) == 2
    assert "is the active model and cannot be deleted" in capsys.readouterr().err
    assert main(["models", "--store", str(store), "--delete", other]) == 0
    assert f"Deleted {other}." in capsys.readouterr().out
    assert main(["models", "--store", str(store), "--prune", "0"]) == 0
    assert "Pruned 0 model(s)" in capsys.readouterr().out
