"""dora_fx: QoE-aware hybrid parallelism for distributed edge AI, as a torch.fx compiler."""

from . import adapter, baselines, scenarios
from .api import CompiledModel, compile, load
from .cost_models import Cluster, Device, Network
from .errors import (
    CaptureError,
    ClusterError,
    DoraError,
    InfeasibleQoEError,
    InputError,
    PassError,
    PlanError,
    PlanFolderError,
    QoEError,
    RankFailedError,
    VerificationError,
)
from .evaluate import Metrics, evaluate
from .ir import Plan, Stage
from .planner import PlanSet, solve
from .problem import Block, Problem
from .qoe import QoE

__version__ = "0.1.0"

__all__ = [
    "Block",
    "CaptureError",
    "Cluster",
    "ClusterError",
    "CompiledModel",
    "Device",
    "DoraError",
    "InfeasibleQoEError",
    "InputError",
    "Metrics",
    "Network",
    "PassError",
    "Plan",
    "PlanSet",
    "PlanError",
    "PlanFolderError",
    "Problem",
    "QoE",
    "QoEError",
    "RankFailedError",
    "Stage",
    "VerificationError",
    "adapter",
    "baselines",
    "compile",
    "evaluate",
    "load",
    "scenarios",
    "solve",
]
