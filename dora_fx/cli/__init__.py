"""``dora-fx``: plan, simulate and run from the command line (``main``)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
