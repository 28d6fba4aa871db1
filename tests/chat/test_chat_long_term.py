"""Long-term conversation memory: a fact stated 30 turns earlier, long archived by the token
budget, reaches the prompt of the question that needs it, and not the prompt of an unrelated one
(the prompts the scripted local server received are inspected)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llama_index.llms.openai import OpenAI

import team_docs as td
from llama_index_deepmemory.chat import ConversationStore, DeepMemoryChatEngine
from scripted_llm import ScriptedLLM, scripted_server

FACT = "Please remember: my parking spot is number B-17 on the second level of the east garage."
NEEDS_IT = "Where did I say my parking spot is?"
UNRELATED = "How do I request vacation days?"
FILLER = ["How do I bake sourdough?", "How do I fix a flat tire?", "How do I file my tax return?",
          "How do I undo a git commit?", "When are production deploys?", "What does the on-call engineer do?",
          "How do I connect to the VPN?", "My printer is jammed, what now?", "How hot should espresso water be?",
          "My laptop will not boot."]


def client(server) -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_base=server.url("/v1"), api_key="test", max_retries=0, timeout=20.0)


def _prompt_text(call: dict) -> str:
    return json.dumps(call["messages"])


@pytest.mark.slow
def test_a_fact_from_30_turns_ago_comes_back_when_needed_and_only_then(minilm, tmp_path: Path) -> None:
    store, _ = td.build_index(minilm)
    llm = ScriptedLLM()
    with scripted_server(llm, max_lifetime_s=300) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="long", history_dir=tmp_path, top_k=2,
                                      token_budget=150)
        engine.chat(FACT)
        answers = [engine.chat(FILLER[i % len(FILLER)]) for i in range(29)]
        archived = [i for i, answer in enumerate(answers, start=1) if answer.history_turns_trimmed]
        assert archived and archived[0] <= 5  # the fact left the budget within a few turns ...
        assert all("B-17" not in _prompt_text(llm.calls["chat"][i]) for i in archived)  # ... and filler never pulls it back
        assert answers[-1].history_turns_trimmed >= 20
        active = engine.memory.get()  # what LlamaIndex's Memory keeps in the budget now
        assert "B-17" not in json.dumps([m.content for m in active])

        needed = engine.chat(NEEDS_IT)
        prompt = _prompt_text(llm.calls["chat"][-1])
        assert "B-17" in prompt and "<earlier_turns>" in prompt
        assert "B-17" in llm.calls["condense"][-1]["history"]  # the condense step saw it too
        engine.chat(UNRELATED)
        assert "B-17" not in _prompt_text(llm.calls["chat"][-1])

        # a new engine (as in another process) brings it back from the store alone
        resumed = DeepMemoryChatEngine(store, client(server), conversation_id="long",
                                       history_dir=ConversationStore(tmp_path), top_k=2, token_budget=150)
        resumed.chat(NEEDS_IT)
        assert "B-17" in _prompt_text(llm.calls["chat"][-1])
    assert needed.turn_number == 31 and len(resumed.turns) == 33


def test_the_cutoff_has_a_margin(minilm) -> None:
    """Archived turns are found by what the user said: the README's cosines (all-MiniLM-L6-v2)."""
    from llama_index_deepmemory.chat.long_term import DEFAULT_CUTOFF

    fact = np.array(minilm.get_text_embedding(FACT))
    cosine = {q: float(np.array(minilm.get_query_embedding(q)) @ fact) for q in [NEEDS_IT, UNRELATED, *FILLER]}
    others = max(v for q, v in cosine.items() if q != NEEDS_IT)
    assert round(cosine[NEEDS_IT], 2) == 0.65 and round(others, 2) == 0.11
    assert others + 0.3 < DEFAULT_CUTOFF < cosine[NEEDS_IT] - 0.15
