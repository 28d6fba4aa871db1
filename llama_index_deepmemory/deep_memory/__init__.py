"""Deep Memory: train, manage and apply retrieval adapters for a DeepMemoryVectorStore."""
