"""``Restriction.key``: the unrestricted key (made once, asked by every Deep Memory query's
``usable_ids``) is the digest every restriction gets, and restrictions differ by key."""

from __future__ import annotations

import hashlib
import json

from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from llama_index_deepmemory.engine.backend import Restriction


def _digest(filters: str, node_ids: object, doc_ids: object) -> str:
    """The key as computed before the unrestricted one was kept: sha1 of the JSON triple."""
    return hashlib.sha1(json.dumps([filters, node_ids, doc_ids]).encode()).hexdigest()


def test_unrestricted_key_is_the_digest_of_no_restriction() -> None:
    assert Restriction().key() == _digest("", None, None)
    assert Restriction().key() == Restriction(None, None, None).key()


def test_restricted_keys_are_their_digests_and_differ() -> None:
    filters = MetadataFilters(filters=[MetadataFilter(key="topic", value="a")])
    cases = [
        (Restriction(filters=filters), _digest(filters.model_dump_json(), None, None)),
        (Restriction(node_ids=("a", "b")), _digest("", ["a", "b"], None)),
        (Restriction(doc_ids=()), _digest("", None, [])),
        (Restriction(doc_ids=("d",)), _digest("", None, ["d"])),
    ]
    for restriction, expected in cases:
        assert restriction.key() == expected
    keys = [Restriction().key()] + [r.key() for r, _ in cases]
    assert len(set(keys)) == len(keys)
