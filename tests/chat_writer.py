"""A child process for the many-processes chat tests: chats N turns into one conversation.

    python chat_writer.py LOCATIONS CONVERSATION WRITER TURNS API_BASE START_FILE WRITERS

Waits until START_FILE exists (so that every writer starts at once), then asks ``TURNS`` questions
``"<WRITER> question <i>"`` in the conversation of each location (``LOCATIONS`` separated by
``|``: folders or database URIs) through a real :class:`DeepMemoryChatEngine` (a small token
budget, so that the writers also archive turns concurrently), answered by the scripted local
server. Then it waits for all ``WRITERS`` writers to finish and prints one JSON line: per
location, the turns its engine saw before its first question and once every writer was done.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, LLMMetadata
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import CustomLLM
from llama_index.core.schema import TextNode

from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.chat import DeepMemoryChatEngine

START_WAIT_S = 60.0


class ServerLLM(CustomLLM):
    """The scripted server's chat completions API over plain httpx (the openai package takes seconds to
    import, and three of these processes start at once)."""

    api_base: str

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True)

    def _post(self, messages: list[dict]) -> str:
        reply = httpx.post(f"{self.api_base}/chat/completions", json={"model": "gpt-test", "messages": messages},
                           timeout=30.0)
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"]

    def chat(self, messages, **kwargs) -> ChatResponse:
        content = self._post([{"role": m.role.value, "content": m.content or ""} for m in messages])
        return ChatResponse(message=ChatMessage(role="assistant", content=content))

    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        return CompletionResponse(text=self._post([{"role": "user", "content": prompt}]))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
        raise NotImplementedError


def main(locations: list[str], conversation: str, writer: str, turns: int, api_base: str, start_file: str,
         writers: int) -> None:
    embed = MockEmbedding(embed_dim=8)
    store = DeepMemoryVectorStore(embed_model=embed)
    store.add([TextNode(id_=f"doc{i}", text=f"Document {i}. It says {i}.", embedding=embed.get_text_embedding(str(i)))
               for i in range(4)])
    llm = ServerLLM(api_base=api_base)
    engines = [DeepMemoryChatEngine(store, llm, conversation_id=conversation, history_dir=location, top_k=2,
                                    token_budget=60) for location in locations]
    _wait(lambda: Path(start_file).exists())
    before = [len(engine.turns) for engine in engines]
    for i in range(turns):
        for engine in engines:
            engine.chat(f"{writer} question {i}")
    Path(f"{start_file}.done-{writer}").touch()
    _wait(lambda: len(list(Path(start_file).parent.glob(Path(start_file).name + ".done-*"))) >= writers)
    print(json.dumps({"writer": writer, "before": before, "after": [len(engine.turns) for engine in engines]}), flush=True)


def _wait(condition) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


if __name__ == "__main__":
    locations, conversation, writer, turns, api_base, start_file, writers = sys.argv[1:8]
    main(locations.split("|"), conversation, writer, int(turns), api_base, start_file, int(writers))
