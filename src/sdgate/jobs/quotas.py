"""Per-principal limits kept in the database, so they hold across API nodes (see ``admission.py``)."""
