"""dora_fx as a torch.compile backend.

::

    fast = torch.compile(model, backend="dora", options={"devices": cluster, "qoe": qoe})
    fast = torch.compile(model, backend=dora_fx.backend(cluster, qoe))   # the same
    print(dora_fx.backend.explain_last())   # each Dynamo graph: its plan, or why it ran locally

The name ``dora`` resolves without importing dora_fx: pyproject registers ``dora_backend``
under the ``torch_dynamo_backends`` entry points. Options are ``options.OPTIONS``; how a graph
is planned and run is ``graphs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.fx

from ..qoe import QoE
from .graphs import DoraBackend, GraphRecord, last_backend
from .options import OPTIONS, BackendOptions

__all__ = ["backend", "dora_backend", "DoraBackend", "GraphRecord", "OPTIONS"]

_by_options: dict[int, tuple[Mapping[str, Any] | None, DoraBackend]] = {}


class _BackendFactory:
    """``dora_fx.backend``: ``backend(devices, qoe, **options)`` makes a backend for
    ``torch.compile(model, backend=...)``; ``backend.explain_last()`` reports the graphs of
    the backend that compiled last."""

    def __call__(self, devices: Any = None, qoe: QoE | None = None, **options: Any) -> DoraBackend:
        given = {**({} if devices is None else {"devices": devices}), "qoe": qoe, **options}
        return DoraBackend(BackendOptions.parse(given))

    def explain_last(self) -> str:
        last = last_backend()
        return "dora backend: no graph compiled yet" if last is None else last.explain()

    def __repr__(self) -> str:
        return "dora_fx.backend(devices, qoe=None, **options): the torch.compile backend"


backend = _BackendFactory()


def dora_backend(
    gm: torch.fx.GraphModule, example_inputs: list[Any], options: Mapping[str, Any] | None = None
) -> Callable[..., Any]:
    """The backend registered as ``dora``: the graphs of one ``torch.compile(...,
    options=...)`` call share one ``DoraBackend`` (keyed by that options dict)."""
    known = _by_options.get(id(options))
    if known is None or known[0] is not options:
        known = (options, DoraBackend(BackendOptions.parse(options)))
        _by_options[id(options)] = known  # the dict is kept, so its id is not reused
    return known[1](gm, example_inputs)
