"""dora_fx: QoE-aware hybrid parallelism for distributed edge AI, as a torch.fx compiler.

Importing ``dora_fx`` loads nothing but this table: each public name is imported from its
module on first use, so a saved stage file (which imports ``dora_fx.ir.comm_ops``) or a rank
process pulls in torch and its own code only, never the planner's solvers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it ("" for a submodule of that name)
_EXPORTS = {
    "Block": "dora_fx.analysis.problem",
    "BackendOptionError": "dora_fx.errors",
    "CaptureError": "dora_fx.errors",
    "Cluster": "dora_fx.cost_models.cluster",
    "ClusterError": "dora_fx.errors",
    "CompiledModel": "dora_fx.api",
    "Device": "dora_fx.cost_models.device",
    "DeviceLost": "dora_fx.errors",
    "DoraError": "dora_fx.errors",
    "InfeasibleQoEError": "dora_fx.errors",
    "InputError": "dora_fx.errors",
    "Metrics": "dora_fx.analysis.evaluate",
    "Network": "dora_fx.cost_models.network",
    "PassError": "dora_fx.errors",
    "Plan": "dora_fx.ir.plan",
    "PlanError": "dora_fx.errors",
    "PlanFolderError": "dora_fx.errors",
    "PlanSet": "dora_fx.planner.plan_set",
    "Problem": "dora_fx.analysis.problem",
    "QoE": "dora_fx.qoe",
    "QoEError": "dora_fx.errors",
    "RankFailedError": "dora_fx.errors",
    "SimConfig": "dora_fx.sim.config",
    "SimResult": "dora_fx.sim.result",
    "Stage": "dora_fx.ir.plan",
    "VerificationError": "dora_fx.errors",
    "adapter": "dora_fx.adapter",
    "backend": "dora_fx.dynamo",
    "baselines": "dora_fx.planner.baselines",
    "calibrate": "dora_fx.cost_models.calibrate",
    "compile": "dora_fx.api",
    "evaluate": "dora_fx.analysis.evaluate",
    "load": "dora_fx.runtime.loaded",
    "presets": "dora_fx.cost_models.presets",
    "scenarios": "dora_fx.scenarios",
    "simulate": "dora_fx.sim.simulator",
    "solve": "dora_fx.planner.solve",
}
_MODULES = {"adapter", "baselines", "presets", "scenarios"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dora_fx' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name in _MODULES else getattr(loaded, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing of it runs
    from . import adapter, scenarios
    from .analysis.evaluate import Metrics, evaluate
    from .analysis.problem import Block, Problem
    from .api import CompiledModel, compile
    from .cost_models import presets
    from .cost_models.calibrate import calibrate
    from .cost_models.cluster import Cluster
    from .cost_models.device import Device
    from .cost_models.network import Network
    from .dynamo import backend
    from .errors import (
        BackendOptionError,
        CaptureError,
        ClusterError,
        DeviceLost,
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
    from .ir.plan import Plan, Stage
    from .planner import baselines
    from .planner.plan_set import PlanSet
    from .planner.solve import solve
    from .qoe import QoE
    from .runtime.loaded import load
    from .sim.config import SimConfig
    from .sim.result import SimResult
    from .sim.simulator import simulate
