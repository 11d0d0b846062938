"""sdgate: a self-hosted Stable Diffusion service, its SDK and CLI.

Importing ``sdgate`` never imports torch: the SDK and CLI run on machines without it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
