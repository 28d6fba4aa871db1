"""The node codec of the embedded store: a LlamaIndex node <-> one row of JSON strings
(id, text, metadata, ref_doc_id, class name, other fields), as the node table keeps and persists it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from llama_index.core.schema import BaseNode, Document, ImageNode, IndexNode, MetadataMode, Node, TextNode

NODE_CLASSES: dict[str, type[BaseNode]] = {
    cls.class_name(): cls for cls in (TextNode, Node, IndexNode, ImageNode, Document)
}
_EXTRA_EXCLUDE = {"id_", "embedding", "metadata", "text", "text_resource"}


def _jsonable_scalar(value: Any) -> Any:
    """JSON ``default`` hook: numpy scalars (np.int64, np.float32, np.bool_) become Python ones."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, default=_jsonable_scalar
).encode  # NaN/inf allowed: metadata floats round-trip as they did


def _metadata_json(node_id: str, metadata: dict[str, Any]) -> str:
    """Compact JSON of a node's metadata; TypeError naming the node, key and type it cannot hold."""
    try:
        return _encode(metadata)
    except (TypeError, ValueError, RecursionError):
        for key, value in metadata.items():
            try:
                _encode({key: value})
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError(
                    f"node {node_id!r}: metadata[{key!r}] holds a {type(value).__name__} ({exc}); "
                    "metadata values must be JSON-compatible (str, int, float, bool, None, lists and "
                    "dicts of them). Convert it first, e.g. str(value) or value.tolist()."
                ) from None
        raise


def _extras_json(node_id: str, extras: dict[str, Any]) -> str:
    """Compact JSON of a node's other fields (pydantic's JSON conversion as the fallback)."""
    try:
        return _encode(extras)
    except (TypeError, ValueError):
        from pydantic_core import PydanticSerializationError, to_jsonable_python

        try:
            return _encode(to_jsonable_python(extras))
        except (TypeError, ValueError, PydanticSerializationError) as exc:
            raise TypeError(
                f"node {node_id!r}: fields {sorted(extras)} cannot be saved as JSON ({exc}); "
                "keep node fields and relationship metadata JSON-compatible."
            ) from None


def check_saveable(row: tuple[str, str, str, str | None, str, str]) -> None:
    """ValueError when a row's text cannot be written as UTF-8 (lone surrogates)."""
    node_id, text, metadata, ref, _node_type, extras = row
    if node_id.isascii() and text.isascii() and metadata.isascii() and extras.isascii() and (
        ref is None or ref.isascii()
    ):
        return  # the common case: ASCII always encodes
    for field, value in zip(("id", "text", "metadata", "ref_doc_id", "node type", "other fields"), row):
        if value is not None and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"node {row[0]!r}: its {field} holds {value[exc.start:exc.end]!r} at position "
                    f"{exc.start}, a lone surrogate that cannot be saved as UTF-8; fix the text "
                    "(e.g. decode the source with errors='replace')."
                ) from None


# TextNode fields kept in "extras" when they differ from their defaults (fast path of _node_fields)
_TEXT_NODE_DEFAULTS = {
    name: field.get_default(call_default_factory=True)
    for name, field in TextNode.model_fields.items()
    if name not in _EXTRA_EXCLUDE and name != "relationships"
}


def _related_json(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"node_id": info.node_id}
    if info.node_type is not None:
        out["node_type"] = getattr(info.node_type, "value", info.node_type)
    if info.metadata:
        out["metadata"] = info.metadata
    if info.hash is not None:
        out["hash"] = info.hash
    return out


def _text_node_extras(node: TextNode) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    values = node.__dict__  # pydantic keeps field values here; faster than getattr per field
    for name, default in _TEXT_NODE_DEFAULTS.items():
        value = values[name]
        if value != default:
            extras[name] = value
    if node.relationships:
        extras["relationships"] = {
            getattr(key, "value", key): (
                [_related_json(i) for i in info] if isinstance(info, list) else _related_json(info)
            )
            for key, info in node.relationships.items()
        }
    return extras


def node_fields(node: BaseNode) -> tuple[str, str, str, str | None, str, str]:
    """(id, text, metadata JSON, ref_doc_id, class name, other fields JSON) of a node."""
    if type(node) is TextNode:  # the common case, ~5x faster than model_dump
        extras = _text_node_extras(node)
        metadata = _metadata_json(node.id_, node.metadata)
        return (node.id_, node.text, metadata, node.ref_doc_id, "TextNode",
                _extras_json(node.id_, extras) if extras else "{}")
    node_type = node.class_name()
    cls = NODE_CLASSES.get(node_type, TextNode)
    exclude = set(_EXTRA_EXCLUDE)
    if cls is TextNode and type(node) is not TextNode:  # unknown subclass: keep TextNode fields
        exclude |= set(type(node).model_fields) - set(TextNode.model_fields)
        node_type = TextNode.class_name()
    extras = node.model_dump(mode="json", exclude=exclude, exclude_defaults=True)
    extras.pop("class_name", None)
    resource = getattr(node, "text_resource", None)
    if resource is not None:  # its text is the row's text; keep its path, url, mimetype, ...
        kept = resource.model_dump(mode="json", exclude_defaults=True)
        if kept.get("text"):
            del kept["text"]
        if kept:
            extras["text_resource"] = kept
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    return (node.node_id, text, _metadata_json(node.node_id, node.metadata), node.ref_doc_id, node_type,
            _extras_json(node.node_id, extras) if extras else "{}")


def build_node(node_id: str, text: str, metadata: str, node_type: str, extras: str) -> BaseNode:
    cls = NODE_CLASSES.get(node_type, TextNode)
    data = json.loads(extras)
    data["id_"] = node_id
    data["metadata"] = json.loads(metadata)
    if "text" in cls.model_fields:
        data["text"] = text
        if cls is IndexNode:  # its obj (a serialized node) is rebuilt as LlamaIndex's own stores do
            return cls.from_dict(data)
        return cls.model_validate(data)
    if text:  # the row's text back into the text_resource (set_content would drop its other fields)
        data["text_resource"] = {**data.get("text_resource", {}), "text": text}
    return cls.model_validate(data)
