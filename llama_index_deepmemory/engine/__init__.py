"""Backends Deep Memory ranks over: the embedded FAISS store (:mod:`.faiss_store`) and one adapter
per LlamaIndex vector store (:mod:`.qdrant`, :mod:`.chroma`, :mod:`.milvus`, :mod:`.postgres`,
:mod:`.generic`), all behind the protocol in :mod:`.backend`."""
