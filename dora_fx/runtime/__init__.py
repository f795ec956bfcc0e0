"""The runtimes: in-process (``local``, and ``loaded`` for a plan folder) and one process per
device over torch.distributed (``distributed``). The distributed launcher loads on first use
(``run_local``, ``DistributedResult``), so importing the in-process runtime does not start it."""

from typing import Any

from .loaded import LoadedModel, load
from .local import LocalPipeline

__all__ = ["DistributedResult", "LoadedModel", "LocalPipeline", "load", "run_local"]


def __getattr__(name: str) -> Any:
    if name in ("DistributedResult", "run_local"):
        from .distributed import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
