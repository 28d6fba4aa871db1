"""Node ids an engine can store, and back, without one node ever standing in for another.

Qdrant accepts only UUIDs (or integers) as point ids, so an id that is not a UUID (``node_7``) is
stored under ``uuid5(ID_NAMESPACE, id)`` with the original id in the node's metadata
(``deepmemory_id``, excluded from embedding and LLM text), restored on the way out. Every engine
adapter uses the same codec, so a collection reads the same through any of them.

Two guards keep the mapping honest: :func:`from_engine` trusts a ``deepmemory_id`` only when the
stored id is that id's uuid5 (metadata a user wrote cannot rename a node), and
:func:`check_owners` refuses an add whose stored id already belongs to another node (a UUID equal
to ``uuid5(ID_NAMESPACE, "node_7")`` cannot replace ``node_7``). User metadata named
``deepmemory_id`` is refused at add (:func:`check_reserved`).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Sequence

ID_KEY = "deepmemory_id"
ID_NAMESPACE = uuid.UUID("6f1c2a0e-4d43-5b8e-9a57-0d3e7c2b9f10")


def engine_id(node_id: str) -> str:
    """The id the engine stores ``node_id`` under: itself when it is a UUID, else its uuid5."""
    try:
        if str(uuid.UUID(node_id)) == node_id:
            return node_id
    except (ValueError, AttributeError, TypeError):
        pass
    return str(uuid.uuid5(ID_NAMESPACE, str(node_id)))


def check_reserved(nodes: Iterable[Any]) -> None:
    """Refuse user metadata under the reserved key (it would name the node's original id)."""
    for node in nodes:
        if ID_KEY in (node.metadata or {}):
            raise ValueError(
                f"node {node.node_id!r} has metadata key {ID_KEY!r}, which Deep Memory reserves for the ids it "
                f"stores; rename that metadata key"
            )


def check_owners(nodes: Sequence[Any], owners: dict[str, str]) -> None:
    """Refuse ``nodes`` whose stored id already holds (or, within the batch, maps from) another node.

    ``owners`` maps stored ids already in the engine to the node id each holds."""
    claimed: dict[str, str] = {}
    for node in nodes:
        stored = engine_id(node.node_id)
        other = claimed.get(stored, owners.get(stored))
        if other is not None and other != node.node_id:
            raise ValueError(
                f"node id {node.node_id!r} would be stored under {stored!r}, which already holds node {other!r}; "
                "nothing was added: give the node another id"
            )
        claimed[stored] = node.node_id


def owner(stored_id: str, metadata: dict) -> str:
    """The node id a stored node holds: its ``deepmemory_id`` when the stored id is that id's
    uuid5, else the stored id itself."""
    original = metadata.get(ID_KEY)
    if original is not None and engine_id(str(original)) == stored_id and str(original) != stored_id:
        return str(original)
    return stored_id


def to_engine(node: Any) -> Any:
    """A copy of ``node`` under its engine id, carrying the original id when they differ."""
    stored_id = engine_id(node.node_id)
    if stored_id == node.node_id:
        return node
    copy = node.model_copy(deep=True)
    copy.id_ = stored_id
    copy.metadata[ID_KEY] = node.node_id
    for keys in (copy.excluded_embed_metadata_keys, copy.excluded_llm_metadata_keys):
        if ID_KEY not in keys:
            keys.append(ID_KEY)
    return copy


def naming_itself(node: Any) -> Any:
    """A copy of ``node`` (stored under its own id) carrying its id under the id key, for an engine
    whose first add fixes the metadata fields (LanceDB): the key is then among them for the nodes
    stored under a uuid5 later. :func:`from_engine` removes it."""
    if ID_KEY in node.metadata:
        return node
    copy = node.model_copy(deep=True)
    copy.metadata[ID_KEY] = node.node_id
    for keys in (copy.excluded_embed_metadata_keys, copy.excluded_llm_metadata_keys):
        if ID_KEY not in keys:
            keys.append(ID_KEY)
    return copy


def from_engine(node: Any) -> Any:
    """``node`` as it was added: its original id restored and the id key removed, when the stored
    id is the original's uuid5 (else the node keeps its stored id and its metadata as they are,
    less an id key naming that same id: :func:`naming_itself`)."""
    original = owner(node.node_id, node.metadata)
    if original == node.node_id and node.metadata.get(ID_KEY) != node.node_id:
        return node
    node.metadata.pop(ID_KEY, None)
    node.id_ = original
    for keys in (node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys):
        while ID_KEY in keys:
            keys.remove(ID_KEY)
    return node
