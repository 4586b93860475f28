"""Retrieval tools: BM25, dense encoding and search, hard-negative mining."""

import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # faiss logs every SIMD variant it tries
