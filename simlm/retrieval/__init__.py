"""Retrieval tools: BM25, dense encoding and search, hard-negative mining."""
