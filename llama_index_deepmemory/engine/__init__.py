"""Backends Deep Memory ranks over: the embedded FAISS store (:mod:`.faiss_store`, its snapshots
:mod:`.faiss_snapshot`, the view it hands the ranking :mod:`.faiss_view`) and one adapter per
LlamaIndex vector store (:mod:`.qdrant`, :mod:`.chroma`, :mod:`.milvus`, :mod:`.postgres`,
:mod:`.generic`), all behind the protocol in :mod:`.backend`."""
