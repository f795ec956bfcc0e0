"""The runtimes: in-process (``local``) and one process per device over torch.distributed
(``launch``). ``launch`` loads on first use, so ``python -m dora_fx.runtime.launch`` (the
torchrun entry point) runs it as ``__main__`` without it being imported first."""

from typing import Any

from .local import LocalPipeline, StageModule

__all__ = ["DistributedResult", "LocalPipeline", "StageModule", "run_local"]


def __getattr__(name: str) -> Any:
    if name in ("DistributedResult", "run_local"):
        from . import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
