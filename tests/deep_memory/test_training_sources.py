"""Learning that accumulates: a model keeps a record of what it was trained on (persisted with the
store), `train_on_feedback` and `deepmemory train` add the new data to it by default, and
`deepmemory train` merges several sources at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import TextNode

import team_docs as td
from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.chat import append_feedback, train_on_feedback
from llama_index_deepmemory.cli import main
from llama_index_deepmemory.data.questions import dataset_from_query_relevance
from llama_index_deepmemory.deep_memory.training_record import TrainingRecord, merge_query_relevance
from llama_index_deepmemory.metrics import ndcg_at_k
from synthetic import normalise

OPTIONS = dict(epochs=8, learning_rate=2e-2, batch_size=32, num_threads=1, seed=0)
DIM, N_DOCS = 16, 300


class LookupEmbedding(BaseEmbedding):
    """A fixed text -> vector table (the synthetic task's query vectors), as a LlamaIndex embedding."""

    _table: dict = PrivateAttr(default_factory=dict)

    @property
    def table(self) -> dict:
        """The text -> vector table the test fills."""
        return self._table

    def _get_query_embedding(self, query: str) -> list[float]:
        return list(self._table[query])

    def _get_text_embedding(self, text: str) -> list[float]:
        return list(self._table[text])

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def _task(rng: np.random.Generator, name: str, n: int, table: dict[str, Any]) -> dict[str, Any]:
    """``n`` questions unrelated to their random documents: training texts (asked twice, slightly
    reworded) and held-out paraphrases."""
    base = normalise(rng.normal(size=(n, DIM)))
    targets = rng.integers(0, N_DOCS, size=n)
    parts: dict[str, Any] = {}
    for part, copies in (("train", 2), ("held", 1)):
        texts, relevance = [], []
        for copy in range(copies):
            vectors = normalise(base + 0.05 * rng.normal(size=base.shape))
            for i, (vector, target) in enumerate(zip(vectors, targets)):
                text = f"{name} {part} question {i} version {copy}"
                table[text] = vector
                texts.append(text)
                relevance.append([(f"node_{target}", 1.0)])
        parts[part] = (texts, relevance)
    return parts


def _ndcg(store: DeepMemoryVectorStore, model: str, texts: list[str], relevance, table) -> float:
    store.deep_memory.set_model(model)
    ranked = store.deep_memory.search_ids(np.array([table[t] for t in texts]), 10, deep_memory=True, texts=texts)
    return float(ndcg_at_k(ranked, relevance, 10))


@pytest.mark.slow
def test_feedback_adds_to_what_the_model_learned(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    embed = LookupEmbedding()
    table = embed.table
    store = DeepMemoryVectorStore(embed_model=embed)
    store.add([TextNode(id_=f"node_{i}", text=f"document {i}", embedding=v.tolist())
               for i, v in enumerate(normalise(rng.normal(size=(N_DOCS, DIM))))])
    a, b = _task(rng, "A", 30, table), _task(rng, "B", 15, table)

    store.deep_memory.train(*a["train"], **OPTIONS)
    assert store.deep_memory.get_model() == "model_1"
    assert store.deep_memory.training_data() == merge_query_relevance(a["train"])

    log = tmp_path / "feedback.jsonl"
    for text, pairs in zip(*b["train"]):
        append_feedback(log, text, [node for node, _ in pairs])
    train_on_feedback(store, log, **OPTIONS)
    assert [m["name"] for m in store.deep_memory.list_models()] == ["model_1", "model_2"]
    queries, _ = store.deep_memory.training_data("model_2")
    assert queries == a["train"][0] + b["train"][0]  # A's data kept, B's added

    train_on_feedback(store, log, include_trained=False, **OPTIONS)  # the old behaviour, for contrast: B alone
    a_only, accumulated, b_only = (_ndcg(store, m, *a["held"], table) for m in ("model_1", "model_2", "model_3"))
    gain_b = [_ndcg(store, m, *b["held"], table) for m in ("model_1", "model_2")]
    assert accumulated >= a_only - 0.01, (a_only, accumulated)  # A's held-out questions: as good as before ...
    assert gain_b[1] > gain_b[0] + 0.3, gain_b  # ... and B's paraphrases are now found
    assert b_only < a_only - 0.3, (a_only, b_only)  # training on the feedback alone would have forgotten A
    print(f"nDCG@10 A held-out: A alone {a_only:.3f}, A then feedback B {accumulated:.3f}, B alone {b_only:.3f}; "
          f"B held-out: {gain_b[0]:.3f} -> {gain_b[1]:.3f}")

    # the record is persisted with the store
    store.persist(str(tmp_path / "store"))
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), load_recorded_embedding=False)
    assert loaded.deep_memory.training_data("model_2") == store.deep_memory.training_data("model_2")


def test_merge_and_record_format() -> None:
    merged = merge_query_relevance((["q1", "q2"], [[("a", 1.0)], [("b", 0.5)]]), (["q2", "q3"], [[("b", 1.0), ("c", 0.2)], [("d", 1.0)]]))
    assert merged == (["q1", "q2", "q3"], [[("a", 1.0)], [("b", 1.0), ("c", 0.2)], [("d", 1.0)]])
    record = TrainingRecord.of(*merged)
    assert TrainingRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    with pytest.raises(ValueError, match="format_version 2.*upgrade"):
        TrainingRecord.from_json({**record.to_json(), "format_version": 2})
    with pytest.raises(ValueError, match="malformed"):
        TrainingRecord.from_json({**record.to_json(), "relevance": [[["a", "x"]]]})


@pytest.mark.slow
def test_cli_train_merges_sources_and_adds_to_the_active_model(minilm, tmp_path: Path, capsys) -> None:
    store, _ = td.build_index(minilm)
    store_dir = tmp_path / "store"
    store.persist(str(store_dir))
    rows = {page: qs for page, (qs, _) in td.JARGON.items()}
    questions = tmp_path / "questions.json"
    dataset_from_query_relevance(rows["build"] + rows["deploy"],
                                 [[("build", 1.0)]] * 4 + [[("deploy", 1.0)]] * 4).save_json(questions)
    logs = []
    for page in ("vpn", "oncall"):
        logs.append(tmp_path / f"{page}.jsonl")
        for question in rows[page]:
            append_feedback(logs[-1], question, [page])
    argv = ["train", "--store", str(store_dir), "--questions", str(questions), "--query-log", str(logs[0]),
            "--query-log", str(logs[1]), "--epochs", "5", "--always-activate", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"Training on 16 merged queries (8 from {questions}, 4 from {logs[0]}, 4 from {logs[1]})." in out
    assert "active Deep Memory model: model_1" in out

    feedback = tmp_path / "feedback.jsonl"
    append_feedback(feedback, td.JARGON["build"][1][0], ["build"])
    append_feedback(feedback, rows["vpn"][0], ["vpn", "laptop"])  # a known question, one more relevant page
    assert main(["train", "--store", str(store_dir), "--query-log", str(feedback), "--epochs", "5", "-q"]) == 0
    out = capsys.readouterr().out
    assert (f"Training on 17 merged queries (2 from {feedback}, 16 from the 16 queries model_1 was trained on)."
            in out)
    loaded = DeepMemoryVectorStore.from_persist_path(str(store_dir), load_recorded_embedding=False)
    queries, relevance = loaded.deep_memory.training_data("model_2")
    assert len(queries) == 17 and dict(relevance[queries.index(rows["vpn"][0])]) == {"vpn": 1.0, "laptop": 1.0}

    assert main(["train", "--store", str(store_dir), "--query-log", str(feedback), "--fresh", "--epochs", "5",
                 "--always-activate", "-q"]) == 0
    assert f"Training on {feedback}." in capsys.readouterr().out
    assert main(["train", "--store", str(store_dir), "-q"]) == 2
    assert "train needs training data" in capsys.readouterr().err
