"""The ``send`` / ``recv`` operators that make cross-stage tensors explicit in stage graphs.

They are custom ops (``torch.ops.dora.send``, ``torch.ops.dora.recv``) registered with
torch.library, and ``send`` is marked side-effectful so FX dead-code elimination keeps it even
though nothing uses its result. What they do is up to the *transport* the runtime installs
around a stage's forward: the in-process runtime uses a mailbox, the distributed runtime
torch.distributed point-to-point ops. ``tag`` identifies the value (unique per plan), ``peer`` the
other stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.fx.node
from torch.library import custom_op

__all__ = ["Transport", "Mailbox", "use_transport", "send", "recv"]


class Transport(Protocol):
    def send(self, tensor: torch.Tensor, peer: int, tag: int) -> None: ...

    def recv(self, peer: int, tag: int) -> torch.Tensor: ...


class Mailbox:
    """In-process transport: stages run one after another in one process."""

    def __init__(self, stage: int = 0) -> None:
        self.stage = stage
        self._slots: dict[tuple[int, int, int], torch.Tensor] = {}

    def send(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        self._slots[(self.stage, peer, tag)] = tensor

    def recv(self, peer: int, tag: int) -> torch.Tensor:
        return self.take(peer, self.stage, tag)

    def take(self, src: int, dst: int, tag: int) -> torch.Tensor:
        try:
            return self._slots.pop((src, dst, tag))
        except KeyError:
            raise RuntimeError(
                f"stage {dst} waits for tag {tag} from stage {src}, which was never sent; "
                "the stages ran out of order or the plan folder is inconsistent"
            ) from None

    @property
    def pending(self) -> list[tuple[int, int, int]]:
        return sorted(self._slots)


_current: Transport | None = None


@contextlib.contextmanager
def use_transport(transport: Transport) -> Iterator[Transport]:
    global _current
    previous, _current = _current, transport
    try:
        yield transport
    finally:
        _current = previous


def _transport() -> Transport:
    if _current is None:
        raise RuntimeError(
            "a dora_fx stage ran outside a runtime: call the CompiledModel (or "
            "dora_fx.load(...)) instead of a stage module directly, or wrap the call in "
            "dora_fx.ir.comm_ops.use_transport(...)"
        )
    return _current


@custom_op("dora::send", mutates_args=())
def send(tensor: torch.Tensor, peer: int, tag: int) -> None:
    _transport().send(tensor, peer, tag)


@custom_op("dora::recv", mutates_args=())
def recv(peer: int, tag: int) -> torch.Tensor:
    return _transport().recv(peer, tag)


SEND = torch.ops.dora.send.default
RECV = torch.ops.dora.recv.default
# Nothing consumes a send's result; without this, Graph.eliminate_dead_code would drop it.
torch.fx.node._side_effectful_functions.add(SEND)
torch.fx.node._side_effectful_functions.add(RECV)
