from .local import LocalPipeline, StageModule

__all__ = ["LocalPipeline", "StageModule"]
