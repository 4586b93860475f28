"""simlm: SimLM-style dense passage retrieval on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
