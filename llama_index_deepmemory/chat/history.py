"""Turns, conversations and their ids; the JSON files of earlier versions, read for migration.

A :class:`Turn` is one exchange: the user's message, the standalone question it was condensed to,
the answer, the sources shown under it and any feedback given on them. Conversations now live in
a LlamaIndex SQL chat store (:mod:`~llama_index_deepmemory.chat.conversations`); the versioned
JSON file per conversation that earlier versions wrote (``<folder>/<conversation_id>.json``) is
read here, so that the store can migrate it on first use (:func:`read_legacy_file`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

FORMAT = "llama-index-deepmemory/conversation"
FORMAT_VERSION = 1
SUFFIX = ".json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # always used with fullmatch
_FORBIDDEN = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL character", "/": "a path separator '/'",
              "\\": "a path separator '\\'"}
SNIPPET_CHARS = 300


def is_conversation_id(text: str) -> bool:
    """True when ``text`` is a valid conversation id (see :func:`check_conversation_id`)."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None and not text.endswith(SUFFIX)


def check_conversation_id(conversation_id: Any) -> str:
    """The id if it is a safe name (letters, digits, ``.``, ``_``, ``-``; 1-100 chars, full match), else ValueError."""
    if is_conversation_id(conversation_id):
        return conversation_id
    rule = ("use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit and not ending in "
            f"{SUFFIX!r} (e.g. 'support-2024')")
    if isinstance(conversation_id, str):
        found = [name for char, name in _FORBIDDEN.items() if char in conversation_id]
        if found:
            rule = f"it contains {' and '.join(found)}; " + rule
    raise ValueError(f"conversation id {conversation_id!r} is not allowed: {rule}")


@dataclass
class Source:
    """One retrieved node shown under an answer (``rank`` 1 = best)."""

    rank: int
    node_id: str
    score: float | None
    text: str  # the start of the node's text (up to SNIPPET_CHARS characters)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Source":
        score = data.get("score")
        return cls(int(data["rank"]), str(data["node_id"]), None if score is None else float(score), str(data.get("text", "")))


@dataclass
class Turn:
    """One exchange: the user's message, the question retrieval used, the answer and its sources."""

    user: str
    assistant: str
    standalone_question: str
    sources: list[Source] = field(default_factory=list)
    deep_memory: bool = False
    created_at: float = field(default_factory=time.time)
    feedback: list[dict[str, Any]] = field(default_factory=list)  # {"node_ids": [...], "kind": ..., "at": ...}
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # links its messages and notes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Turn":
        extra = {"turn_id": str(data["turn_id"])} if data.get("turn_id") else {}
        return cls(
            user=str(data["user"]),
            assistant=str(data["assistant"]),
            standalone_question=str(data.get("standalone_question") or data["user"]),
            sources=[Source.from_dict(s) for s in data.get("sources", [])],
            deep_memory=bool(data.get("deep_memory", False)),
            created_at=float(data.get("created_at", 0.0)),
            feedback=[dict(f) for f in data.get("feedback", [])],
            **extra,
        )


@dataclass
class Conversation:
    """Every turn of one conversation, oldest first."""

    conversation_id: str
    turns: list[Turn] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "conversation_id": self.conversation_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "turns": [asdict(turn) for turn in self.turns],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "conversation") -> "Conversation":
        """Parse :meth:`to_dict`'s shape; ValueError naming ``where`` and the problem otherwise."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{where} is not a llama-index-deepmemory conversation file (no format {FORMAT!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise ValueError(
                f"{where} has conversation format_version {version!r}, this package reads {FORMAT_VERSION}"
                + ("; upgrade llama-index-deepmemory" if newer else "")
            )
        try:
            return cls(
                conversation_id=check_conversation_id(data["conversation_id"]),
                turns=[Turn.from_dict(turn) for turn in data.get("turns", [])],
                created_at=float(data.get("created_at", 0.0)),
                updated_at=float(data.get("updated_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where} is malformed ({type(exc).__name__}: {exc}); move it aside to start afresh") from exc


def read_legacy_file(path: Path, conversation_id: str) -> Conversation:
    """The conversation in an earlier version's JSON file; ValueError (nothing changed) when it is damaged.

    Turns get the ids ``legacy-1``, ``legacy-2``, ... so that a migration that stopped half way
    can tell which turns it already copied.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it aside to start the conversation afresh") from exc
    conversation = Conversation.from_dict(data, where=str(path))
    if conversation.conversation_id != conversation_id:
        raise ValueError(f"{path} holds conversation {conversation.conversation_id!r}, not {conversation_id!r}")
    for number, turn in enumerate(conversation.turns, start=1):
        turn.turn_id = f"legacy-{number}"
    logger.debug("Read %d turns of %s from %s", len(conversation.turns), conversation_id, path)
    return conversation


def legacy_ids(folder: Path) -> list[str]:
    """The conversation ids that have an earlier version's JSON file in ``folder``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}")
                  if p.is_file() and is_conversation_id(p.name[: -len(SUFFIX)]))
