"""Turning documentation and query logs into nodes, questions and relevance lists."""
