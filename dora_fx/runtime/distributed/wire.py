"""Distributed runtime, wire format: how one message travels between two ranks over gloo.

A message is a fixed-size int64 *header* (kind, item, tag, dtype, shape, the item's batch,
send time, chunk index and count) on one gloo tag, then its payload (none when empty) on
another, so a receiver needs no shape agreed in advance. A tensor sent in ``c`` chunks travels
as ``c`` messages, each a near-equal piece of the flattened tensor whose header carries the
whole tensor's shape; ``receive_loop`` joins them again. An ``END`` header says the sender is
done. A ``NOTICE`` is a header alone: the message reached its planned destination, its payload
follows later as a ``LATE`` message (``links``: results a testbed's rank 0 only stands in for). ``links`` builds on this: who sends what to whom, and where it is filed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "chunk_sizes", "header", "end_header", "isend_message", "receive_loop", "DTYPES", "DATA",
    "NOTICE", "LATE",
]  # fmt: skip

HEADER_TAG, PAYLOAD_TAG = 1, 2
MAX_DIMS = 10
# kind, item, tag, ndim, dtype, batch, sent at (us, time.monotonic), chunk, chunks
FIELDS = 9
HEADER_LEN = FIELDS + MAX_DIMS  # then the dims
DATA, END, NOTICE, LATE = 0, 1, 2, 3
DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
]  # fmt: skip

# a received message: item, tag, tensor (chunks joined; a NOTICE's empty), batch, sent at
# (time.monotonic), kind (DATA, NOTICE or LATE)
Deliver = Callable[[int, int, torch.Tensor, int, float, int], None]


def chunk_sizes(numel: int, chunks: int) -> list[int]:
    """Elements of each chunk of a flattened tensor: near-equal, the first ones one larger."""
    base, extra = divmod(numel, chunks)
    return [base + (1 if i < extra else 0) for i in range(chunks)]


def header(
    kind: int,
    item: int,
    tag: int,
    tensor: torch.Tensor,
    batch: int,
    chunk: tuple[int, int] = (0, 1),
    shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """A message's header; a chunk's header carries the whole tensor's ``shape``."""
    shape = list(tensor.shape if shape is None else shape)
    if len(shape) > MAX_DIMS:
        raise ValueError(f"tensors of more than {MAX_DIMS} dims cannot be sent, got {len(shape)}")
    if tensor.dtype not in DTYPES:
        raise TypeError(f"cannot send a {tensor.dtype} tensor; supported: {DTYPES}")
    out = torch.zeros(HEADER_LEN, dtype=torch.int64)
    sent_us = int(time.monotonic() * 1e6)
    fields = [kind, item, tag, len(shape), DTYPES.index(tensor.dtype), batch, sent_us, *chunk]
    out[:FIELDS] = torch.tensor(fields, dtype=torch.int64)
    if shape:
        out[FIELDS : FIELDS + len(shape)] = torch.tensor(shape, dtype=torch.int64)
    return out


def end_header() -> torch.Tensor:
    """The header that tells a receiver its sender is done."""
    out = torch.zeros(HEADER_LEN, dtype=torch.int64)
    out[0] = END
    return out


def isend_message(dst: int, head: torch.Tensor, payload: torch.Tensor | None) -> list[Any]:
    """Post a message's gloo sends (header, then the payload unless empty); the caller keeps
    both tensors alive until the works complete, and holds the destination's send lock so
    messages to one rank do not interleave."""
    works = [dist.isend(head, dst, tag=HEADER_TAG)]
    if payload is not None and payload.numel():
        works.append(dist.isend(payload, dst, tag=PAYLOAD_TAG))
    return works


@dataclass
class _Partial:
    """Chunks of one message received so far."""

    parts: list[torch.Tensor | None]
    sent_at: float


def receive_loop(src: int, timeout: timedelta, deliver: Deliver) -> None:
    """Receive from ``src`` until its ``END`` header, handing every whole message (chunks
    joined) to ``deliver``; raises what gloo raises (a timeout, a dead peer)."""
    partial: dict[tuple[int, int], _Partial] = {}  # (item, tag) -> chunks so far
    while True:
        head = torch.empty(HEADER_LEN, dtype=torch.int64)
        _wait(dist.irecv(head, src, tag=HEADER_TAG), timeout)
        kind, item, tag, ndim, dtype, batch, sent_us, chunk, chunks = (
            int(v) for v in head[:FIELDS]
        )
        if kind == END:
            return
        shape = [int(v) for v in head[FIELDS : FIELDS + ndim]]
        if kind == NOTICE:
            deliver(item, tag, torch.empty(0, dtype=DTYPES[dtype]), batch, sent_us * 1e-6, kind)
            continue
        if chunks > 1:
            numel = 1
            for size in shape:
                numel *= size
            payload = torch.empty(chunk_sizes(numel, chunks)[chunk], dtype=DTYPES[dtype])
        else:
            payload = torch.empty(shape, dtype=DTYPES[dtype])
        if payload.numel():
            _wait(dist.irecv(payload, src, tag=PAYLOAD_TAG), timeout)
        sent_at = sent_us * 1e-6
        if chunks > 1:
            entry = partial.setdefault((item, tag), _Partial([None] * chunks, sent_at))
            entry.parts[chunk] = payload
            if any(p is None for p in entry.parts):
                continue
            del partial[(item, tag)]
            payload = torch.cat(entry.parts).view(shape)  # type: ignore[arg-type]
            sent_at = entry.sent_at
        deliver(item, tag, payload, batch, sent_at, kind)


def _wait(work: Any, timeout: timedelta) -> None:
    if work is not None:  # None: this rank is not in the group
        work.wait(timeout)
