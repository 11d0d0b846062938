"""openai dialect."""
