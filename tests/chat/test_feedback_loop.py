"""Learning from use, end to end: chat turns whose helpful source is marked go to the query log,
`deepmemory train --query-log` retrains on it, and the marked page moves into the top 3 for a
paraphrase it never saw, while unrelated questions keep their results."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.llms.openai import OpenAI

import team_docs as td
from llama_index_deepmemory import DeepMemoryVectorStore, read_query_log
from llama_index_deepmemory.chat import DeepMemoryChatEngine
from llama_index_deepmemory.cli import main
from scripted_llm import ScriptedLLM, scripted_server

# Team jargon: "a bluebird" is a failed nightly build. The bird pages win plain retrieval.
FEEDBACK_QUESTIONS = [
    "We got a bluebird last night, how do I fix it?",
    "the bluebird is back, what should I do?",
    "We had a bluebird overnight, how do we fix it?",
    "how do I recover after last night's bluebird?",
]
PARAPHRASE = "How can I get rid of the bluebird we had overnight?"
UNRELATED = [
    "How do I bake sourdough?", "how to undo a git commit", "my printer is jammed", "when do songbirds migrate?",
    "How do I connect to the VPN?", "where do bluebirds nest?", "what is the espresso pressure?",
]
CHAT_TOP_K = 8


def client(server) -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_base=server.url("/v1"), api_key="test", max_retries=0, timeout=20.0)


@pytest.mark.slow
def test_feedback_moves_the_marked_source_up_for_paraphrases(minilm, tmp_path: Path, capsys) -> None:
    store, index = td.build_index(minilm)
    store_dir, chats, log = tmp_path / "store", tmp_path / "chats", tmp_path / "chats" / "feedback.jsonl"
    assert "build" not in td.top_ids(index, PARAPHRASE, 3, deep_memory=False)
    before = {q: td.top_ids(index, q, 3, deep_memory=False) for q in UNRELATED}

    with scripted_server(ScriptedLLM()) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="oncall", history_dir=chats,
                                      top_k=CHAT_TOP_K, feedback_log=log)
        for question in FEEDBACK_QUESTIONS:
            answer = engine.chat(question)
            ranks = [s.rank for s in answer.sources if s.node_id == "build"]
            assert ranks and ranks[0] > 3, f"the build page should be shown but low for {question!r}"
            engine.mark_helpful(ranks)  # the user marks the source that actually helped
    assert read_query_log(log) == (FEEDBACK_QUESTIONS, [[("build", 1.0)]] * len(FEEDBACK_QUESTIONS))

    # retrain with the command line, on the log the chat wrote
    store.persist(str(store_dir))
    assert main(["train", "--store", str(store_dir), "--query-log", str(log)]) == 0
    assert "active Deep Memory model: model_1" in capsys.readouterr().out

    retrained = DeepMemoryVectorStore.from_persist_path(str(store_dir), embed_model=minilm)
    retrained_index = VectorStoreIndex.from_vector_store(retrained, embed_model=minilm)
    assert "build" in td.top_ids(retrained_index, PARAPHRASE, 3, deep_memory=True)
    for question, plain in before.items():
        after = td.top_ids(retrained_index, question, 3, deep_memory=True)
        assert after[0] == plain[0], f"{question!r}: top result changed from {plain[0]} to {after[0]}"
        if "bird" in question:  # the real birds keep their pages
            assert set(after) == set(plain), question

    # and the chat, resumed on the retrained store, now answers the paraphrase from the build page
    with scripted_server(ScriptedLLM()) as server:
        engine = DeepMemoryChatEngine(retrained, client(server), conversation_id="oncall", history_dir=chats, top_k=3)
        assert engine.deep_memory is True and len(engine.turns) == len(FEEDBACK_QUESTIONS)
        answer = engine.chat(PARAPHRASE)
    assert "build" in [s.node_id for s in answer.sources] and answer.turn.deep_memory
