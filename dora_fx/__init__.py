"""dora_fx: QoE-aware hybrid parallelism for distributed edge AI, as a torch.fx compiler."""

from . import adapter, baselines, scenarios
from .api import CompiledModel, compile, load
from .cost_models import Cluster, Device, Network, presets
from .cost_models.calibrate import calibrate
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
from .sim import SimConfig, SimResult, simulate

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
    "SimConfig",
    "SimResult",
    "Stage",
    "VerificationError",
    "adapter",
    "baselines",
    "calibrate",
    "compile",
    "evaluate",
    "load",
    "presets",
    "scenarios",
    "simulate",
    "solve",
]
