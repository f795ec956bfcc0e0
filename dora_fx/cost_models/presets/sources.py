"""Where every preset number comes from: preset -> field -> source (``docs/devices.md``)."""

from __future__ import annotations

__all__ = ["SOURCES"]

SOURCES: dict[str, dict[str, str]] = {}
