"""A local OpenAI-compatible server for the tutorials' flows: ``/v1/embeddings`` (deterministic
hashed bag-of-words vectors, so retrieval means something) and ``/v1/chat/completions`` (one
question per chunk for question generation, a first-sentence answer for query engines).

Both OpenAI clients work against it unchanged: LlamaIndex's ``OpenAIEmbedding`` / ``OpenAI`` and
LangChain's ``OpenAIEmbeddings(check_embedding_ctx_length=False)`` (which then sends texts, not
tiktoken ids), each asking for ``encoding_format="base64"`` or ``"float"``.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re

import numpy as np

from servers import LocalServer, Request, Response, chat_completion_payload, json_response, last_user_message

DIM = 256
STOP = frozenset("the a an and or of to in is are for on with by as it this that what does say about".split())
_CONTEXT = re.compile(r"---------------------\n(.*)\n---------------------", re.S)
_QUERY = re.compile(r"Query: (.*?)\nAnswer:", re.S)


def hashed_embedding(text: str) -> np.ndarray:
    """A unit (DIM,) float32 vector: each lower-case word adds +-1 at a hashed position."""
    vector = np.zeros(DIM, dtype=np.float32)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.md5(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "little") % DIM] += 1.0 if digest[4] & 1 else -1.0
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return vector / norm


def question_for(context: str) -> str:
    """One quiz question naming three of the chunk's content words (seeded by the chunk)."""
    words = sorted({w for w in re.findall(r"[a-z]+", context.lower()) if len(w) > 3 and w not in STOP})
    picked = random.Random(context).sample(words, min(3, len(words)))
    return f"What does the text say about {', '.join(picked)}?"


def _embeddings(request: Request) -> Response:
    payload = request.json()
    texts = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    if any(not isinstance(t, str) for t in texts):  # token ids: LangChain's check_embedding_ctx_length=True
        return json_response({"error": {"message": "send texts (check_embedding_ctx_length=False)"}}, status=400)
    data = []
    for i, text in enumerate(texts):
        vector = hashed_embedding(text)
        encoded = (base64.b64encode(vector.astype("<f4").tobytes()).decode()
                   if payload.get("encoding_format") == "base64" else vector.tolist())
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    return json_response({"object": "list", "data": data, "model": payload.get("model", "test"),
                          "usage": {"prompt_tokens": 1, "total_tokens": 1}})


def _chat(request: Request) -> Response:
    payload = request.json()
    message = last_user_message(payload.get("messages", []))
    context = _CONTEXT.search(message)
    if context is None:
        return json_response({"error": {"message": "unexpected prompt"}}, status=400)
    query = _QUERY.search(message)
    if query is not None:  # a query engine's answer
        answer = "Answer from context: " + context.group(1).strip().split(". ")[0]
    else:  # question generation
        answer = f"1. {question_for(context.group(1))}"
    return json_response(chat_completion_payload(answer, model=str(payload.get("model", "gpt-test"))))


def tutorial_server(max_lifetime_s: float = 120.0) -> LocalServer:
    """A not yet started server with both routes."""
    return LocalServer({("POST", "/v1/embeddings"): _embeddings, ("POST", "/v1/chat/completions"): _chat},
                       max_lifetime_s=max_lifetime_s)
