"""The README's usage example runs as written, against a local OpenAI-compatible server."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import pytest
from servers import last_user_message, openai_chat_server

ROOT = Path(__file__).resolve().parents[2]
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


def keyless_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## No API key[^\n]*\n(.*?)\n## ", text, re.S)
    assert match, "README.md lost its '## No API key' section"
    return match.group(1)


def keyless_blocks() -> tuple[str, str]:
    section = keyless_section()
    python = re.search(r"```python\n(.*?)```", section, re.S)
    shell = re.search(r"```bash\n(.*?)```", section, re.S)
    assert python and shell, "the 'No API key' section needs a python and a bash block"
    return python.group(1), shell.group(1)


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from keyless import make_beir

    return make_beir(tmp_path_factory.mktemp("keyless") / "scifact")


def test_readme_keyless_python_example_runs(
    beir_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], minilm,
    caplog: pytest.LogCaptureFixture,
) -> None:
    code, _ = keyless_blocks()
    assert len(code.strip().splitlines()) <= 20, "keep the README example short"
    assert 'load_beir("scifact")' in code
    monkeypatch.chdir(beir_folder.parent)  # the example's relative "scifact" is the small fixture folder
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("LLAMA_INDEX_DEEPMEMORY_CACHE", str(tmp_path / "cache"))  # the embedding cache, here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    store, test_relevance = namespace["store"], namespace["test_relevance"]
    assert store.deep_memory.get_model() is not None
    assert "Evaluating with Deep Memory" in out
    assert "validation nDCG@10" in out and "model_1 is now the active model" in out  # the training summary
    # the test queries name each chunk by a code word only the training queries share
    result = store.deep_memory.evaluate(namespace["test_queries"], test_relevance, top_k=(1, 5))
    assert result["with model"]["recall@1"] >= result["without model"]["recall@1"] + 0.3
    top = out.strip().splitlines()[-1]
    assert top == test_relevance[0][0][0]  # the printed top hit is the first test query's document
    saved = beir_folder.parent / "storage" / "scifact-python"
    assert (saved / "manifest.json").is_file()
    from llama_index_deepmemory import DeepMemoryVectorStore

    assert DeepMemoryVectorStore.from_persist_path(str(saved)).embed_model is store.embed_model  # recorded, reloaded
    # one embedding cache: the command line's ingest of the same folder embeds nothing again
    from llama_index_deepmemory.cli import main

    with caplog.at_level(logging.INFO, logger="llama_index_deepmemory.embeddings"):
        assert main(["ingest", "scifact", "--store", str(tmp_path / "cli-store"), "-q"]) == 0
    n_docs = len(namespace["beir"].nodes())
    assert f"Embedding 0 texts ({n_docs} cached)" in caplog.text


def test_readme_keyless_cli_example_runs(
    beir_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    from llama_index_deepmemory.cli import main

    _, shell = keyless_blocks()
    commands = [shlex.split(line, comments=True) for line in shell.strip().splitlines()]
    assert [c[:2] for c in commands][:3] == [["deepmemory", "ingest"], ["deepmemory", "train"], ["deepmemory", "evaluate"]]
    work = tmp_path / "work"
    work.mkdir()
    (work / "scifact").symlink_to(beir_folder)
    monkeypatch.chdir(work)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    outputs = []
    for argv in commands:
        assert argv[0] == "deepmemory"
        code = main([*argv[1:], "-q"])
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err)
        outputs.append(captured.out)
    ingest, train, evaluate, query, models = outputs
    n_docs = len((beir_folder / "corpus.jsonl").read_text().splitlines())
    assert f"Stored {n_docs} nodes from {n_docs} documents of the BEIR folder" in ingest
    assert "active Deep Memory model: model_1" in train and "validation nDCG@10" in train
    rows = {line.split()[0]: line.split()[1:] for line in evaluate.splitlines() if re.match(r"^\d+\s", line)}
    without, with_dm = (float(v) for v in rows["1"])
    assert with_dm >= without + 30.0  # recall@1 in %, with Deep Memory far ahead on the code-word queries
    assert "with Deep Memory (model_1)" in query
    assert models.startswith("* model_1")


def test_readme_usage_example_without_a_key_stops_at_the_first_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm
) -> None:
    from llama_index_deepmemory import PermanentLLMError

    code = readme_example().replace("/usr/share/doc/python3.11/html/faq", str(DOCS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(PermanentLLMError) as caught:
        exec(compile(code, "README.md", "exec"), {})
    message = str(caught.value)
    assert "node 'node_0'" in message and "Missing credentials" in message and "nothing was retried" in message
    assert "'No API key' section" in message
    assert len(message.splitlines()) == 1
