"""Domain types shared by every layer. Imports neither torch nor fastapi."""
