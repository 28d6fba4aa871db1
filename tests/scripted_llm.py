"""A deterministic 'LLM' for the chat and answer-evaluation tests, served by ``openai_chat_server``.

It reads each request the way a model would and answers by rule, so the tests exercise the real
prompts, the real OpenAI client and the real parsing:

- condense step (LlamaIndex's "Standalone question:" prompt): the follow-up rewritten by
  ``rewrites`` (follow-up -> standalone question); "I mean X" merged into the last user question
  ("What is a bluebird, X?"); else the follow-up unchanged;
- chat answer (our numbered-documents system prompt): the first sentence of document [1], cited;
- question answering (``ANSWER_PROMPT``): "Answer from context: " + the first context sentence;
- context-recall judge (ours, or RAGAS's prompt): the reference split into sentences, each attributed iff it occurs verbatim
  in the context, as JSON; ``garbage_for`` questions get an unparseable reply instead.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Iterable

from servers import Response, openai_chat_server

_JUDGE = re.compile(r"question: (.*?)\n\ncontext:\n(.*?)\n\nanswer:\n(.*?)\n\nJSON:", re.S)
_QA = re.compile(r"---------------------\n(.*?)\n---------------------.*?Query: (.*?)\nAnswer:", re.S)
_CONDENSE = re.compile(r"Chat History:\n(.*?)\n\s*Follow Up Input: (.*?)\n\s*Standalone question:", re.S)
_RAGAS = re.compile(r"Now perform the same with the following input\s*input: (\{.*?\})\s*Output:", re.S)
_DOC = re.compile(r"\[(\d+)\] ([^\n]*)")


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


class ScriptedLLM:
    """The responder; ``calls[kind]`` records what each kind of request saw (thread safe)."""

    def __init__(self, rewrites: dict[str, str] | None = None, garbage_for: Iterable[str] = ()) -> None:
        self.rewrites = dict(rewrites or {})
        self.garbage_for = set(garbage_for)
        self.calls: dict[str, list[dict]] = {"condense": [], "chat": [], "qa": [], "judge": [], "unexpected": []}
        self._lock = threading.Lock()

    def _record(self, kind: str, **seen: object) -> None:
        with self._lock:
            self.calls[kind].append(seen)

    def __call__(self, messages: list[dict]) -> "str | Response":
        texts = [_text(m) for m in messages]
        joined = "\n".join(texts)
        if (match := _CONDENSE.search(joined)) is not None:
            history, follow_up = match.group(1), match.group(2).strip()
            if follow_up in self.rewrites:
                standalone = self.rewrites[follow_up]
            elif follow_up.lower().startswith("i mean "):  # a clarification: merge it into the last question
                lines = [line.strip() for line in history.splitlines()]
                asked = [line[len("user: "):] for line in lines if line.lower().startswith("user: ")]
                standalone = f"{asked[-1].rstrip('?')}, {follow_up[len('i mean '):].rstrip('.?')}?" if asked else follow_up
            else:
                standalone = follow_up
            self._record("condense", history=history, follow_up=follow_up, standalone=standalone)
            return standalone
        judged = None
        if (match := _JUDGE.search(joined)) is not None:
            judged = match.group(1), match.group(2), match.group(3)
        elif (match := _RAGAS.search(joined)) is not None:  # RAGAS's LLMContextRecall prompt
            fields = json.loads(match.group(1))
            judged = fields["question"], fields["context"], fields["answer"]
        if judged is not None:
            question, context, reference = judged
            self._record("judge", question=question, context=context, reference=reference)
            if question in self.garbage_for:
                return "I think most of it is supported, roughly."
            flat = " ".join(context.split())
            classifications = [
                {"statement": s, "reason": "verbatim in the context" if s in flat else "not in the context",
                 "attributed": int(" ".join(s.split()) in flat)}
                for s in sentences(reference)
            ]
            return "```json\n" + json.dumps({"classifications": classifications}) + "\n```"
        if "numbered documents" in joined:
            system = texts[0]
            docs = {int(n): t for n, t in _DOC.findall(system)}
            user = texts[-1]
            self._record("chat", system=system, user=user, messages=messages)
            if not docs:
                return "I don't know."
            first = sentences(docs[min(docs)])[0]
            return f"{first} [{min(docs)}]"
        if (match := _QA.search(joined)) is not None:
            context, question = match.group(1), match.group(2)
            self._record("qa", question=question, context=context)
            return "Answer from context: " + (sentences(context) or ["nothing"])[0]
        self._record("unexpected", messages=messages)
        return Response(400, json.dumps({"error": {"message": f"unexpected prompt: {joined[:200]}"}}).encode(),
                        {"Content-Type": "application/json"})


def scripted_server(llm: ScriptedLLM, max_lifetime_s: float = 120.0):
    """A not yet started local OpenAI-compatible server answering with ``llm``."""
    return openai_chat_server(llm, max_lifetime_s=max_lifetime_s)
