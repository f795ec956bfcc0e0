"""dora_fx: QoE-aware hybrid parallelism for distributed edge AI, as a torch.fx compiler."""

from . import scenarios
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
    VerificationError,
)
from .ir import Plan, Stage
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
    "Network",
    "PassError",
    "Plan",
    "PlanError",
    "PlanFolderError",
    "Problem",
    "QoE",
    "QoEError",
    "Stage",
    "VerificationError",
    "compile",
    "load",
    "scenarios",
]
