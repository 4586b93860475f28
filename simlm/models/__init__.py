"""Plain torch/Hugging Face models: the dense text encoder shared by every bi-encoder stage."""
