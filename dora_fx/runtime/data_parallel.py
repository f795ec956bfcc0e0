"""Running a data-parallel stage in-process: the stage's module runs once per replica on that
replica's share of the batch, and what the replicas send or return is concatenated again.

Shares become integer batch slices by largest remainder (``split_sizes``). A tensor is sliced
and concatenated along its ``batch_dim`` (recorded per transfer in plan.json); tensors without a
batch dim (position ids, masks broadcast over the batch) go whole to every replica, and are
taken from the first replica on the way out.
"""

from __future__ import annotations

from typing import Any

import torch

from ..ir.comm_ops import use_transport

__all__ = ["run_replicated", "ShardView", "slice_along", "join_along"]


def slice_along(value: Any, dim: int | None, start: int, size: int) -> Any:
    """``value``'s rows ``start:start+size`` along ``dim``; the whole value without a dim."""
    return _slice(value, dim, start, size)


def join_along(pieces: list[Any], dim: int | None) -> Any:
    """Concatenate microbatch / replica pieces along ``dim``; without a dim the first piece."""
    return _join(pieces, dim)


def _slice(value: Any, dim: int | None, start: int, size: int) -> Any:
    if dim is None or not isinstance(value, torch.Tensor):
        return value
    return value.narrow(dim, start, size)


def _join(pieces: list[Any], dim: int | None) -> Any:
    if dim is None or not isinstance(pieces[0], torch.Tensor):
        return pieces[0]
    return torch.cat(pieces, dim=dim)


class ShardView:
    """The transport one replica sees: its slice of every received tensor; sends collected."""

    def __init__(self, received: dict[tuple[int, int], torch.Tensor], recv_dims: dict[int, int | None],
                 start: int, size: int) -> None:
        self.received, self.recv_dims = received, recv_dims
        self.start, self.size = start, size
        self.sent: dict[tuple[int, int], torch.Tensor] = {}

    def recv(self, peer: int, tag: int) -> torch.Tensor:
        return _slice(self.received[(peer, tag)], self.recv_dims.get(tag), self.start, self.size)

    def send(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        self.sent[(peer, tag)] = tensor


def run_replicated(
    module: torch.nn.Module,
    inputs: list[Any],
    input_dims: list[int | None],
    received: dict[tuple[int, int], torch.Tensor],
    transfers: dict[str, Any],
    sizes: list[int],
) -> tuple[dict[tuple[int, int], torch.Tensor], list[Any]]:
    """Run ``module`` once per non-empty share; return (sends joined, outputs joined)."""
    recv_dims = {r["tag"]: _batch_dim(r) for r in transfers.get("recvs", [])}
    send_dims = {(s["peer"], s["tag"]): _batch_dim(s) for s in transfers.get("sends", [])}
    output_dims = [None if o is None else o["batch_dim"] for o in transfers.get("outputs", [])]
    views, outputs, start = [], [], 0
    for size in sizes:
        if size == 0:
            continue
        view = ShardView(received, recv_dims, start, size)
        with use_transport(view):
            outputs.append(module(*[_slice(x, d, start, size) for x, d in zip(inputs, input_dims)]))
        views.append(view)
        start += size
    sent = {key: _join([v.sent[key] for v in views], send_dims.get(key)) for key in views[0].sent}
    joined = [_join([out[k] for out in outputs], output_dims[k] if k < len(output_dims) else None)
              for k in range(len(outputs[0]))]
    return sent, joined


def _batch_dim(transfer: dict[str, Any]) -> int | None:
    tensor = transfer.get("tensor")
    return None if tensor is None else tensor.get("batch_dim")
