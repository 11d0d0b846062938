"""The ``sdgate`` command line. Imports without torch."""
