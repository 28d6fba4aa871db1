"""Backends Deep Memory ranks over: the embedded FAISS store (``store.py``) and wrapped
LlamaIndex vector stores (:mod:`.wrapped`)."""
