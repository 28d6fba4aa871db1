"""Persisted conversations: one versioned JSON file per conversation id, written atomically.

A conversation file (``<folder>/<conversation_id>.json``) holds every turn: the user's message,
the standalone question it was condensed to, the answer, the sources shown under it and any
feedback given on them. Writes go to a temporary file beside the target, are fsynced and then
``os.replace``-d over it, so a crash leaves either the old or the new file, never half of one.
Two processes writing the same conversation at once: the last write wins (no merge).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llama_index_deepmemory.atomic import write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "llama-index-deepmemory/conversation"
FORMAT_VERSION = 1
SUFFIX = ".json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SNIPPET_CHARS = 300


def check_conversation_id(conversation_id: Any) -> str:
    """The id if it is a safe file name (letters, digits, ``.``, ``_``, ``-``; 1-100 chars), else ValueError."""
    if not isinstance(conversation_id, str) or not _NAME.match(conversation_id) or conversation_id.endswith(SUFFIX):
        raise ValueError(
            f"conversation id {conversation_id!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'support-2024')"
        )
    return conversation_id


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Turn":
        return cls(
            user=str(data["user"]),
            assistant=str(data["assistant"]),
            standalone_question=str(data.get("standalone_question") or data["user"]),
            sources=[Source.from_dict(s) for s in data.get("sources", [])],
            deep_memory=bool(data.get("deep_memory", False)),
            created_at=float(data.get("created_at", 0.0)),
            feedback=[dict(f) for f in data.get("feedback", [])],
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


class ConversationStore:
    """The conversations in one folder, one ``<conversation_id>.json`` file each."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"conversation folder {self.folder} is a file; name a folder (it is created if missing)")

    def __repr__(self) -> str:
        return f"ConversationStore({str(self.folder)!r})"

    def path(self, conversation_id: str) -> Path:
        """Where the conversation's file lives."""
        return self.folder / f"{check_conversation_id(conversation_id)}{SUFFIX}"

    def exists(self, conversation_id: str) -> bool:
        return self.path(conversation_id).is_file()

    def load(self, conversation_id: str, create: bool = True) -> Conversation:
        """The saved conversation, or a new empty one (``create=True``) when there is none."""
        path = self.path(conversation_id)
        if not path.is_file():
            if not create:
                raise FileNotFoundError(f"no conversation {conversation_id!r} in {self.folder}; list them with .list()")
            return Conversation(conversation_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); move it aside to start the conversation afresh") from exc
        conversation = Conversation.from_dict(data, where=str(path))
        if conversation.conversation_id != conversation_id:
            raise ValueError(f"{path} holds conversation {conversation.conversation_id!r}, not {conversation_id!r}")
        logger.debug("Loaded conversation %s (%d turns) from %s", conversation_id, len(conversation.turns), path)
        return conversation

    def save(self, conversation: Conversation) -> Path:
        """Write the conversation atomically; returns its path."""
        conversation.updated_at = time.time()
        path = self.path(conversation.conversation_id)
        write_json_atomic(path, conversation.to_dict())
        return path

    def list(self) -> list[str]:
        """The saved conversation ids, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name[: -len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}")
            if p.is_file() and _NAME.match(p.name[: -len(SUFFIX)])
        )
