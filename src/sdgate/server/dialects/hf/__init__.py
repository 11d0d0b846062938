"""hf dialect."""
