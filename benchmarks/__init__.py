"""Side-by-side measurements against reference implementations measured in the same run."""
