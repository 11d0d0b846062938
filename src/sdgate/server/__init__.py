"""The HTTP server: ``create_app(settings)`` and the dialects. Imports without torch."""
