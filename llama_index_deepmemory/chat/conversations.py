"""Conversations in a LlamaIndex chat store: every turn appended when it happens, by any process.

A conversation is a LlamaIndex ``Memory`` session (session id = conversation id) in an SQL chat
store (:mod:`~llama_index_deepmemory.chat.storage`): each turn adds its user and assistant
messages in one INSERT, so concurrent writers never overwrite each other, and each process's
turns stay in its order. What a turn needs besides its text (the standalone question, the
sources, Deep Memory on or off) and feedback given later are appended as notes under the key
``<conversation_id>#notes`` of the same store. Conversations written by earlier versions (one
JSON file each in the folder) are migrated on first use; the file is renamed ``*.json.migrated``
once every turn is in the store, and a damaged file is refused (nothing changes).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from llama_index_deepmemory.chat import storage
from llama_index_deepmemory.chat.feedback import locked
from llama_index_deepmemory.chat.history import (
    SUFFIX, Conversation, Source, Turn, check_conversation_id, is_conversation_id, legacy_ids, read_legacy_file,
)

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import Memory

logger = logging.getLogger(__name__)

NOTES = "#notes"  # key suffix of a conversation's notes ('#' never occurs in an id)
TURN_KEY = "turn_id"  # additional_kwargs key linking a message to its turn
MIGRATED = ".migrated"


def turn_messages(turn: Turn) -> list["ChatMessage"]:
    """The user and assistant messages of ``turn``, each carrying its turn id."""
    from llama_index.core.llms import ChatMessage, MessageRole

    kwargs = {TURN_KEY: turn.turn_id}
    return [ChatMessage(role=MessageRole.USER, content=turn.user, additional_kwargs=dict(kwargs)),
            ChatMessage(role=MessageRole.ASSISTANT, content=turn.assistant, additional_kwargs=dict(kwargs))]


def turn_note(turn: Turn) -> dict[str, Any]:
    """What a turn keeps besides its two messages."""
    return {"kind": "turn", TURN_KEY: turn.turn_id, "standalone_question": turn.standalone_question,
            "sources": [asdict(s) for s in turn.sources], "deep_memory": turn.deep_memory, "created_at": turn.created_at}


def pair_turns(messages: Sequence["ChatMessage"]) -> list[Turn]:
    """Messages (oldest first) -> turns: linked by turn id, else a user message and the answer after it."""
    turns: list[Turn] = []
    by_id: dict[str, Turn] = {}
    for number, message in enumerate(messages):
        turn_id = str(message.additional_kwargs.get(TURN_KEY) or "")
        text = message.content or ""
        role = getattr(message.role, "value", message.role)
        if role == "user":
            turn = Turn(user=text, assistant="", standalone_question=text, turn_id=turn_id or f"message-{number}")
            turns.append(turn)
            by_id[turn.turn_id] = turn
        elif role == "assistant":
            target = by_id.get(turn_id) if turn_id else (turns[-1] if turns and not turns[-1].assistant else None)
            if target is None:
                continue  # an answer without its question (e.g. archived apart): not a turn
            target.assistant = (target.assistant + "\n" + text) if target.assistant else text
    return turns


def apply_notes(turns: list[Turn], notes: Sequence["ChatMessage"], where: str) -> None:
    """Give ``turns`` their standalone questions, sources and feedback from the notes."""
    by_id = {turn.turn_id: turn for turn in turns}
    for note_message in notes:
        try:
            note = json.loads(note_message.content or "")
            turn = by_id.get(str(note.get(TURN_KEY)))
            if turn is None:
                continue  # a note written just before its turn, or for a turn another process is writing
            if note.get("kind") == "turn":
                turn.standalone_question = str(note.get("standalone_question") or turn.user)
                turn.sources = [Source.from_dict(s) for s in note.get("sources", [])]
                turn.deep_memory = bool(note.get("deep_memory", False))
                turn.created_at = float(note.get("created_at", 0.0))
            elif note.get("kind") == "feedback":
                turn.feedback.append(dict(note["feedback"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            logger.warning("Skipping a malformed note in %s: %s", where, exc)


class ConversationStore:
    """Every conversation in one LlamaIndex chat store.

    Args:
        location: a folder (the SQLite file ``conversations.db`` inside, created if missing; JSON
            conversations of earlier versions there are migrated), a database URI
            (``postgresql://...``, ``sqlite:///...``) or a LlamaIndex chat store.
    """

    def __init__(self, location: Any = "deepmemory-chats") -> None:
        self.chat_store, self.location, self.folder = storage.open_chat_store(location)
        self._ready = False
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"ConversationStore({self.location!r})"

    @property
    def path(self) -> Path | None:
        """The SQLite file of a folder store (None for a URI or a given chat store)."""
        return None if self.folder is None else self.folder / storage.DB_NAME

    def run(self, coro: Any) -> Any:
        """Run one of the chat store's coroutines (after creating its table if needed).

        In a process forked after the store was used, the parent's pooled connections (whose
        threads or event loop the child lacks) are first dropped, unclosed, so the child opens its own.
        """
        if self._pid != os.getpid():
            storage.forget_connections(self.chat_store)
            self._pid = os.getpid()

        async def prepared() -> Any:
            try:
                if not self._ready:
                    await storage.ready(self.chat_store)
                    self._ready = True
            except BaseException:
                coro.close()  # never started
                raise
            return await coro

        try:
            return storage.run(prepared())
        except Exception as exc:
            damage = storage.damage(exc)
            if damage is None:
                raise
            raise ValueError(f"the conversation store {self.location} is damaged ({damage}); nothing was changed: "
                             "restore it from a backup, or recover it with `sqlite3 FILE .recover` and move "
                             "the damaged file (and its -wal/-shm files) aside") from exc

    # --- reading ---------------------------------------------------------------------------
    def load(self, conversation_id: str, create: bool = True) -> Conversation:
        """Every turn of the conversation, oldest first (an empty one when new and ``create``)."""
        check_conversation_id(conversation_id)
        self.migrate(conversation_id)
        conversation = self.run(self._aload(conversation_id))
        if not conversation.turns and not create:
            raise FileNotFoundError(f"no conversation {conversation_id!r} in {self.location}; list them with .list()")
        return conversation

    async def _aload(self, conversation_id: str) -> Conversation:
        messages = await self.chat_store.get_messages(conversation_id, status=None)
        notes = await self.chat_store.get_messages(conversation_id + NOTES, status=None)
        turns = pair_turns(messages)
        apply_notes(turns, notes, f"{self.location} ({conversation_id})")
        created = min((t.created_at for t in turns if t.created_at), default=0.0)
        updated = max((t.created_at for t in turns), default=0.0)
        return Conversation(conversation_id, turns=turns, created_at=created, updated_at=updated)

    def exists(self, conversation_id: str) -> bool:
        check_conversation_id(conversation_id)
        if self.folder is not None and (self.folder / f"{conversation_id}{SUFFIX}").is_file():
            return True
        return bool(self.run(self.chat_store.count_messages(conversation_id, status=None)))

    def list(self) -> list[str]:
        """The stored conversation ids (and those still in earlier versions' JSON files), sorted."""
        keys = self.run(self.chat_store.get_keys())
        ids = {key for key in keys if is_conversation_id(key)}
        if self.folder is not None:
            ids.update(legacy_ids(self.folder))
        return sorted(ids)

    # --- writing ---------------------------------------------------------------------------
    def append_turn(self, conversation_id: str, turn: Turn, memory: "Memory | None" = None) -> None:
        """Append ``turn``: its note, then its two messages in one INSERT (through ``memory``
        when given, so that its token budget moves older turns to long-term memory)."""
        check_conversation_id(conversation_id)
        if not isinstance(turn, Turn):
            raise TypeError(f"a turn is a Turn(user=..., assistant=..., standalone_question=...), got {turn!r}")
        self.run(self.aappend_turn(conversation_id, turn, memory))

    async def aappend_turn(self, conversation_id: str, turn: Turn, memory: "Memory | None" = None) -> None:
        await self._anote(conversation_id, turn_note(turn))
        for feedback in turn.feedback:
            await self._anote(conversation_id, {"kind": "feedback", TURN_KEY: turn.turn_id, "feedback": feedback})
        if memory is not None:
            await memory.aput_messages(turn_messages(turn))
        else:
            await self.chat_store.add_messages(conversation_id, turn_messages(turn))

    def add_feedback(self, conversation_id: str, turn_id: str, feedback: dict[str, Any]) -> None:
        """Record feedback on a turn (appended; the turn itself is never rewritten).

        The conversation and the turn must exist (feedback on neither would never be read back).
        """
        check_conversation_id(conversation_id)
        if not isinstance(feedback, dict):
            raise TypeError(f"feedback is a dict, e.g. {{'kind': 'helpful', 'node_ids': ['node_7']}}, got {feedback!r}")
        self.migrate(conversation_id)
        turn_ids = [t.turn_id for t in pair_turns(self.run(self.chat_store.get_messages(conversation_id, status=None)))]
        if not turn_ids:
            raise FileNotFoundError(f"no conversation {conversation_id!r} in {self.location}; list them with .list()")
        if turn_id not in turn_ids:
            raise ValueError(f"no turn {turn_id!r} in conversation {conversation_id!r}; give feedback on one of its "
                             f"turns' turn_id: {turn_ids[-5:]} (the latest)")
        self.note_feedback(conversation_id, turn_id, feedback)

    def note_feedback(self, conversation_id: str, turn_id: str, feedback: dict[str, Any]) -> None:
        """:meth:`add_feedback` for a turn the caller holds (just stored, or read from this conversation):
        no re-read of the conversation to check that it exists."""
        self.run(self._anote(conversation_id, {"kind": "feedback", TURN_KEY: turn_id, "feedback": feedback}))

    async def _anote(self, conversation_id: str, note: dict[str, Any]) -> None:
        from llama_index.core.llms import ChatMessage, MessageRole

        message = ChatMessage(role=MessageRole.SYSTEM, content=json.dumps(note, ensure_ascii=False))
        await self.chat_store.add_message(conversation_id + NOTES, message)

    # --- earlier versions' JSON files --------------------------------------------------------
    def migrate(self, conversation_id: str) -> int:
        """Copy an earlier version's JSON file of the conversation into the store; returns the turns copied.

        Runs once per file, under a lock file, so that processes starting together copy it once;
        the file is renamed ``<id>.json.migrated`` only after every turn is stored.
        """
        if self.folder is None:
            return 0
        legacy = self.folder / f"{check_conversation_id(conversation_id)}{SUFFIX}"
        if not legacy.is_file():
            return 0
        with locked(self.folder / f"{conversation_id}.migrate"):
            if not legacy.is_file():  # another process migrated it meanwhile
                return 0
            old = read_legacy_file(legacy, conversation_id)
            stored = self.run(self.chat_store.get_messages(conversation_id, status=None))
            done = {str(m.additional_kwargs.get(TURN_KEY)) for m in stored}
            todo = [turn for turn in old.turns if turn.turn_id not in done]
            if todo:
                self.run(self._acopy(conversation_id, todo))
            os.replace(legacy, legacy.with_name(legacy.name + MIGRATED))
        logger.info("Migrated %d turns of %s from %s into %s", len(todo), conversation_id, legacy, self.location)
        return len(todo)

    async def _acopy(self, conversation_id: str, turns: list[Turn]) -> None:
        from llama_index.core.llms import ChatMessage, MessageRole

        notes = [turn_note(t) for t in turns]
        notes += [{"kind": "feedback", TURN_KEY: t.turn_id, "feedback": f} for t in turns for f in t.feedback]
        await self.chat_store.add_messages(conversation_id + NOTES, [
            ChatMessage(role=MessageRole.SYSTEM, content=json.dumps(n, ensure_ascii=False)) for n in notes])
        await self.chat_store.add_messages(conversation_id, [m for t in turns for m in turn_messages(t)])
