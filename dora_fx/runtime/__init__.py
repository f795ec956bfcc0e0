from .launch import DistributedResult, run_local
from .local import LocalPipeline, StageModule

__all__ = ["DistributedResult", "LocalPipeline", "StageModule", "run_local"]
