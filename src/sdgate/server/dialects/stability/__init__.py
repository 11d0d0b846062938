"""stability dialect."""
