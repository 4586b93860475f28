"""Callbacks that connect training to retrieval: full-corpus evaluation and hard-negative mining."""

from simlm.callbacks.negative_mining import NegativeMining
from simlm.callbacks.retrieval_evaluation import RetrievalEvaluation

__all__ = ["NegativeMining", "RetrievalEvaluation"]
