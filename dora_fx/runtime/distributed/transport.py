"""Distributed runtime, transport: tensors between ranks over torch.distributed P2P.

Ranks follow the plan (``distributed_wiring``: stage major, then the devices of a data-parallel
group). A rank executes its stage's schedule (``distributed_schedule``) once per request, one
*item* per microbatch (item = request * microbatches + microbatch); its WAIT and SEND actions
come here. Rank 0 also is the source and the sink: it cuts requests into microbatches, sends
every stage the user inputs it uses, and collects the model outputs.

Every tensor travels as a self-describing message (``wire``: a fixed-size int64 header with
item, tag, dtype, shape, the item's batch, chunk index and count, then the payload), so
receives need no shape agreed in advance (the batch is dynamic) and a receiver thread per
sending rank receives continuously and files what arrives by ``(item, sender, tag)``. A SEND
in ``c`` chunks sends the flattened tensor in ``c`` consecutive pieces of near-equal size,
each with its own header; the receiver thread joins them into the tensor and files it when
the last one is in. So POST needs no gloo call (the receiver threads have receives posted at
all times): it registers the expected entry, and WAIT blocks until that entry is filed.

Every rank learns an item's global batch from the first header of it that it takes (rank 0
from the request) and forgets it when done with the item (``forget``), so a long session
keeps only the items in flight.

Data-parallel groups split every tensor with a ``batch_dim`` by the group's shares
(``distributed_wiring.split_sizes``): a sender slot sends each receiver slot the rows both hold
(possibly none, an empty piece), and the receiver concatenates the pieces in slot order; tensors
without a batch dim are sent by slot 0 to every slot. CUDA stages stage tensors through the CPU
for gloo.

Emulation: every message of a shaped send goes through the ``network_emulation.LinkShaper``,
with the priority ``(request, microbatch, -receiving stage)`` its ``critical-first`` pacing
uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from ...errors import RankFailedError
from ...ir.batch_split import batch_rows, split_sizes
from ...ir.schedule import ScheduleError
from ..network_emulation import LinkShaper
from .wire import DATA, chunk_sizes, end_header, header, isend_message, receive_loop
from .wiring import RankInfo, StageWiring

__all__ = [
    "DistTransport",
    "Sending",
    "INPUT_TAG",
    "OUTPUT_TAG",
]

INPUT_TAG = 1 << 24  # + user input position
OUTPUT_TAG = 2 << 24  # + user output position
_MAX_TRANSFER_LOG = 10_000
_MAX_PENDING = 64  # un-waited sends kept before the oldest are waited


def _bounds(batch: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    edges = [0]
    for size in split_sizes(batch, shares):
        edges.append(edges[-1] + size)
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class _Piece:
    tensor: torch.Tensor
    batch: int
    arrived_at: float


@dataclass
class _Mailbox:
    cond: threading.Condition = field(default_factory=threading.Condition)
    slots: dict[tuple[int, int, int], _Piece] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)  # by sending rank


@dataclass
class Sending:
    """One message on its way: ``left`` is set once it has left this rank (the gloo send
    completed, or under emulation the emulated link finished serializing it)."""

    dst: int
    item: int
    tag: int
    shaped: bool = False
    left: threading.Event = field(default_factory=threading.Event)
    works: list[Any] = field(default_factory=list)


@dataclass
class _Pending:
    """A gloo send not waited yet, with what it keeps alive and whom it goes to (to name the
    rank if waiting fails)."""

    work: Any
    dst: int
    item: int
    keep: tuple[torch.Tensor, ...]


class DistTransport:
    """The transport of one rank (see the module docstring)."""

    def __init__(
        self,
        me: RankInfo,
        wiring: StageWiring,
        timeout_s: float,
        device: torch.device | None = None,
        microbatches: int = 1,
    ) -> None:
        self.me, self.wiring, self.timeout_s = me, wiring, timeout_s
        self.device = device or torch.device("cpu")
        self.microbatches = microbatches
        self.batch: dict[int, int] = {}  # item -> its global batch (rows), from any header
        self.shaper: LinkShaper | None = None
        self.bytes_sent = 0
        # received messages: (sending rank, item, tag, bytes, sent at, arrived at) in wall seconds
        self.transfers: list[tuple[int, int, int, int, float, float]] = []
        links = wiring.links()
        self._sources = sorted(a for a, b in links if b == me.rank)
        self._destinations = sorted(b for a, b in links if a == me.rank)
        self._mail = _Mailbox()
        self._posted: set[tuple[int, int, int]] = set()  # (item, peer stage, tag)
        self._send_locks = {dst: threading.Lock() for dst in self._destinations}
        self._pending: list[_Pending] = []  # the main thread alone waits them
        self._pending_lock = threading.Lock()
        self._receivers = [
            threading.Thread(
                target=self._receive_from, args=(src,), daemon=True, name=f"dora-recv-{src}"
            )
            for src in self._sources
        ]
        for thread in self._receivers:
            thread.start()

    # -- the schedule's actions ----------------------------------------------------------

    def post(self, item: int, peer: int, tag: int) -> None:
        """POST: expect ``tag`` from stage ``peer`` for ``item``. The receiver threads have a
        receive posted at all times, so this only registers the entry WAIT will take."""
        self._posted.add((item, peer, tag))

    def wait(self, item: int, peer: int, tag: int) -> torch.Tensor:
        """WAIT: block until ``tag`` from stage ``peer`` has arrived for ``item`` (every piece
        of a data-parallel sender group, joined)."""
        try:
            self._posted.remove((item, peer, tag))
        except KeyError:
            raise ScheduleError(
                f"{self.me.describe()} waits for tag {tag} from stage {peer} (item {item}) "
                "without having posted that receive"
            ) from None
        batch_dim = self.wiring.recv_dims[self.me.stage][(peer, tag)]
        return self._gather(item, self.wiring.ranks_of(peer), tag, batch_dim)

    def send(
        self, item: int, tensor: torch.Tensor, peer: int, tag: int, chunks: int = 1
    ) -> list[Sending]:
        """SEND: hand ``tensor`` to the network for stage ``peer`` in ``chunks`` messages per
        receiving rank; returns at once with what SENT waits for."""
        batch_dim = self.wiring.send_dims[self.me.stage][(peer, tag)]
        return self._scatter(
            item, tensor, self.wiring.ranks_of(peer), tag, batch_dim, shaped=True, chunks=chunks
        )

    def sent(self, sendings: Sequence[Sending]) -> None:
        """SENT: block until every message of a SEND has left this rank."""
        deadline = time.monotonic() + self.timeout_s
        for sending in sendings:
            while not sending.left.wait(min(0.5, max(deadline - time.monotonic(), 0.0))):
                if self.shaper is not None and self.shaper.error is not None:
                    raise self.shaper.error
                if time.monotonic() >= deadline:
                    raise self._peer_failed(
                        sending.dst, sending.item,
                        TimeoutError(f"tag {sending.tag} did not leave in {self.timeout_s:g} s"),
                    )  # fmt: skip
            if sending.shaped:
                continue  # it left the emulated link; the real send follows at its arrival
            for work in sending.works:
                self._finish(work, sending.dst, sending.item, deadline)

    # -- user inputs and outputs ---------------------------------------------------------

    def scatter_inputs(self, item: int, flat: Sequence[Any]) -> None:
        """Rank 0: send every rank the user inputs its stage uses (rows of its share)."""
        self.batch[item] = rows = batch_rows(flat)
        for stage, positions in self.wiring.input_stages.items():
            for position in positions:
                value = flat[position]
                batched = isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows
                batch_dim = 0 if batched else None
                self._scatter(
                    item, value, self.wiring.ranks_of(stage), INPUT_TAG + position, batch_dim,
                    shaped=True,
                )  # fmt: skip

    def forget(self, item: int) -> None:
        """This rank is done with ``item``: drop what it knew of it (its global batch). Rank 0
        forgets an item once it collected its outputs (after running its own stage's actions
        for it), every other rank once it ran its actions for it."""
        self.batch.pop(item, None)

    def inputs(self, item: int) -> list[Any]:
        positions = self.wiring.input_stages[self.me.stage]
        return [self._take(0, INPUT_TAG + p, item).tensor for p in positions]

    def send_outputs(self, item: int, values: Sequence[Any]) -> None:
        positions = self.wiring.output_stages[self.me.stage]
        for position, value in zip(positions, values):
            batch_dim = self.wiring.output_dims.get(position)
            if batch_dim is None and self.me.slot:
                continue  # the group's slot 0 returns values that have no batch dim
            batch = self._global_batch(item, value, batch_dim)
            self._post(0, item, OUTPUT_TAG + position, value, batch, shaped=False)

    def collect_outputs(
        self, item: int, positions: Sequence[int]
    ) -> tuple[list[torch.Tensor], float]:
        """Rank 0: the model outputs of ``item`` (pieces of a group concatenated) and the time
        the last piece arrived."""
        values, arrived = [], 0.0
        owner = {p: s for s, ps in self.wiring.output_stages.items() for p in ps}
        for position in positions:
            batch_dim = self.wiring.output_dims.get(position)
            ranks = self.wiring.ranks_of(owner[position])
            sources = ranks[:1] if batch_dim is None else ranks
            pieces = [self._take(r.rank, OUTPUT_TAG + position, item) for r in sources]

            arrived = max([arrived, *(p.arrived_at for p in pieces)])
            tensors = [p.tensor for p in pieces]
            values.append(tensors[0] if batch_dim is None else torch.cat(tensors, batch_dim))
        return values, arrived

    # -- moving pieces -------------------------------------------------------------------

    def _scatter(
        self,
        item: int,
        value: Any,
        receivers: list[RankInfo],
        tag: int,
        batch_dim: int | None,
        shaped: bool,
        chunks: int = 1,
    ) -> list[Sending]:
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        sendings: list[Sending] = []
        if batch_dim is None:
            if self.me.slot == 0:
                for receiver in receivers:
                    sendings += self._post_chunks(
                        receiver.rank, item, tag, value, self.batch.get(item, 0), shaped, chunks
                    )
            return sendings
        batch = self._global_batch(item, value, batch_dim)
        mine = (
            _bounds(batch, self.me.shares)[self.me.slot]
            if self._in_group(value, batch_dim, batch)
            else (0, batch)
        )
        theirs = _bounds(batch, receivers[0].shares)
        for receiver, (lo, hi) in zip(receivers, theirs):
            start, stop = max(lo, mine[0]), min(hi, mine[1])
            piece = value.narrow(batch_dim, start - mine[0], max(stop - start, 0))
            sendings += self._post_chunks(receiver.rank, item, tag, piece, batch, shaped, chunks)
        return sendings

    def _in_group(self, value: torch.Tensor, batch_dim: int, batch: int) -> bool:
        """Whether ``value`` holds this rank's share of the rows rather than all of them."""
        return len(self.me.shares) > 1 and value.shape[batch_dim] != batch

    def _global_batch(self, item: int, value: Any, batch_dim: int | None) -> int:
        if item in self.batch:
            return self.batch[item]
        if isinstance(value, torch.Tensor) and batch_dim is not None and len(self.me.shares) == 1:
            return int(value.shape[batch_dim])
        return 0

    def _gather(
        self, item: int, senders: list[RankInfo], tag: int, batch_dim: int | None
    ) -> torch.Tensor:
        if batch_dim is None:
            return self._take(senders[0].rank, tag, item).tensor
        pieces = [self._take(s.rank, tag, item).tensor for s in senders]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, batch_dim)

    def _post_chunks(
        self, dst: int, item: int, tag: int, tensor: torch.Tensor, batch: int, shaped: bool,
        chunks: int,
    ) -> list[Sending]:  # fmt: skip
        """Send ``tensor`` as ``chunks`` messages (fewer when it has fewer elements)."""
        chunks = max(1, min(chunks, tensor.numel()))
        if chunks == 1 or dst == self.me.rank:
            return [self._post(dst, item, tag, tensor, batch, shaped)]
        flat = tensor.detach().reshape(-1)
        sendings, start = [], 0
        for index, size in enumerate(chunk_sizes(flat.numel(), chunks)):
            piece = flat.narrow(0, start, size)
            sendings.append(
                self._post(dst, item, tag, piece, batch, shaped, (index, chunks), tensor.shape)
            )
            start += size
        return sendings

    def _post(
        self,
        dst: int,
        item: int,
        tag: int,
        tensor: torch.Tensor,
        batch: int,
        shaped: bool,
        chunk: tuple[int, int] = (0, 1),
        shape: Sequence[int] | None = None,
    ) -> Sending:
        sending = Sending(dst, item, tag)
        if dst == self.me.rank:
            self._deposit(dst, item, tag, tensor, batch)
            sending.left.set()
            return sending
        payload = tensor.detach().to("cpu", copy=False).contiguous()
        head = header(DATA, item, tag, payload, batch, chunk, shape)
        nbytes = payload.numel() * payload.element_size()
        self.bytes_sent += nbytes
        sending.shaped = self.shaper is not None

        def transmit() -> None:
            with self._send_locks[dst]:
                works = isend_message(dst, head, payload)
            sending.works = works
            with self._pending_lock:
                self._pending.extend(_Pending(w, dst, item, (head, payload)) for w in works)
            if not sending.shaped:
                sending.left.set()

        if self.shaper is None:
            transmit()
        else:
            receiver = self.wiring.table[dst]
            to_stage = self.wiring.num_stages if tag >= OUTPUT_TAG else receiver.stage
            priority = (*divmod(item, self.microbatches), -to_stage)
            self.shaper.submit(
                dst, self.me.device, receiver.device, nbytes, transmit, shaped,
                priority=priority, on_left=sending.left.set,
            )  # fmt: skip
        self._reap()
        return sending

    def _reap(self) -> None:
        """Forget completed sends. Gloo calls a send completed only once it is waited on, so
        sends no SENT waits for (user inputs, outputs) would pile up with their tensors: the
        oldest beyond ``_MAX_PENDING`` are waited here (the receiving rank's thread always
        has a receive posted, so they complete). Only the rank's main thread reaps and runs
        SENT, and both wait a work only while it is not completed: never twice."""
        with self._pending_lock:
            self._pending = [p for p in self._pending if not p.work.is_completed()]
            excess = self._pending[: max(len(self._pending) - _MAX_PENDING, 0)]
        for pending in excess:
            self._finish(pending.work, pending.dst, pending.item, time.monotonic() + self.timeout_s)

    def _finish(self, work: Any, dst: int, item: int, deadline: float) -> None:
        """Wait a gloo send unless it completed (gloo marks a send completed only once it was
        waited, and waiting it again waits for another send: it would hang); a failure names
        the receiving rank. Main thread only."""
        if work.is_completed():
            return
        try:
            work.wait(timedelta(seconds=max(deadline - time.monotonic(), 1e-3)))
        except Exception as exc:  # noqa: BLE001 - gloo says why the peer is gone
            raise self._peer_failed(dst, item, exc) from None

    def _deposit(self, src: int, item: int, tag: int, tensor: torch.Tensor, batch: int) -> None:
        with self._mail.cond:
            self._mail.slots[(item, src, tag)] = _Piece(tensor, batch, time.monotonic())
            self._mail.cond.notify_all()

    def _take(self, src: int, tag: int, item: int) -> _Piece:
        key = (item, src, tag)
        deadline = time.monotonic() + self.timeout_s
        with self._mail.cond:
            while key not in self._mail.slots:
                if src in self._mail.errors:
                    raise self._peer_failed(src, item, self._mail.errors[src])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._peer_failed(
                        src, item, TimeoutError(f"nothing arrived in {self.timeout_s:g} s")
                    )
                self._mail.cond.wait(min(left, 0.5))
            piece = self._mail.slots.pop(key)
        if piece.batch:
            self.batch.setdefault(item, piece.batch)
        return _Piece(piece.tensor.to(self.device), piece.batch, piece.arrived_at)

    def _peer_failed(self, peer_rank: int, item: int, cause: BaseException) -> RankFailedError:
        peer = self.wiring.table[peer_rank]
        what = (
            "stopped (it hung or is far slower than the timeout allows)"
            if isinstance(cause, TimeoutError) or "imeout" in str(cause) or "imed out" in str(cause)
            else "disconnected (it died)"
        )
        error = RankFailedError(
            f"{self.me.describe()} waited on item {item} for {peer.describe()}, which "
            f"{what}: {str(cause).splitlines()[0][:200]}. Look at that rank's log; raise "
            "timeout_s if its stage is legitimately slow"
        )
        error.suspect_rank = peer_rank  # type: ignore[attr-defined]
        return error

    def _receive_from(self, src: int) -> None:
        """Receiver thread of ``src``: file every message it sends until it says it is done."""

        def deliver(item: int, tag: int, payload: torch.Tensor, batch: int, sent_at: float) -> None:
            self._deposit(src, item, tag, payload, batch)
            if len(self.transfers) < _MAX_TRANSFER_LOG:
                nbytes = payload.numel() * payload.element_size()
                self.transfers.append((src, item, tag, nbytes, sent_at, time.monotonic()))

        try:
            receive_loop(src, timedelta(seconds=self.timeout_s), deliver)
        except BaseException as exc:  # noqa: BLE001 - the main thread raises it
            with self._mail.cond:
                self._mail.errors[src] = exc
                self._mail.cond.notify_all()

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Tell every receiver this rank is done, let sends finish, join the receivers."""
        if self.shaper is not None:
            self.shaper.close(self.timeout_s)
        for dst in self._destinations:
            end = end_header()
            with self._send_locks[dst]:
                works = isend_message(dst, end, None)
            with self._pending_lock:
                self._pending.extend(_Pending(w, dst, -1, (end,)) for w in works)
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for entry in pending:
            self._finish(entry.work, entry.dst, entry.item, time.monotonic() + self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        for src, thread in zip(self._sources, self._receivers):
            thread.join(max(deadline - time.monotonic(), 0.0))
            if src in self._mail.errors:
                raise self._peer_failed(src, -1, self._mail.errors[src])
            if thread.is_alive():
                raise self._peer_failed(src, -1, TimeoutError("it never said it was done"))
