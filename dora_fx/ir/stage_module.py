"""``StageModule``: one stage as the runtimes see it, whoever built it (the compiler's
``codegen`` pass, or a plan folder read back by ``artifact``), and ``instantiate_stage``, which
turns a stage's generated source into its module: both builders run the same code a person
reads in the saved ``stage_K.py``."""

from __future__ import annotations

import hashlib
import linecache
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StageModule", "instantiate_stage"]


@dataclass
class StageModule:
    """One stage as the runtimes see it: its module (an instance of the generated class), its
    wiring to the caller's inputs and outputs, its devices and their batch shares (the plan's),
    its readable source, and ``transfers``: the sends, receives and returned outputs with dtype,
    shape and batch dim (see ``compiler.passes.insert_comm.stage_transfers``)."""

    index: int
    module: torch.nn.Module
    input_indices: list[int]
    output_indices: list[int]
    devices: tuple[str, ...]
    code: str = ""
    node_names: list[str] = field(default_factory=list)
    transfers: dict[str, Any] = field(default_factory=dict)
    shares: tuple[float, ...] = (1.0,)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.module.state_dict().values())


def instantiate_stage(source: str, class_name: str, origin: str = "<dora stage>") -> torch.nn.Module:
    """Execute a stage's generated ``source`` as a module of its own and return an instance of
    ``class_name`` (weights still on the meta device: the caller fills them in). ``origin``
    names the file in tracebacks."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"_dora_stage_{digest}_{class_name}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__file__ = origin
        if origin.startswith("<"):  # not a file: let tracebacks show the generated lines
            linecache.cache[origin] = (len(source), None, source.splitlines(True), origin)
        exec(compile(source, origin, "exec"), module.__dict__)  # noqa: S102 - our generated code
        sys.modules[name] = module  # classes defined there pickle and inspect by name
    return getattr(module, class_name)()
