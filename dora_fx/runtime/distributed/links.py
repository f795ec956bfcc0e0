"""Distributed runtime, links: messages between this rank and each peer rank.

A message is one tensor for one *item* (one microbatch of one request) under a tag, in the wire
format of ``wire``. ``Links`` posts messages without blocking (in chunks when asked; through
the emulation's ``LinkShaper`` when one is installed), runs one receiver thread per sending
rank that files every message that arrives by ``(item, sender, tag)``, and hands filed pieces
to the rank's main thread (``take_first``). It knows ranks, not stages: ``transport`` decides
who sends which rows to whom.

Over a testbed's real links (``kernel_network``) a result computed on the sink device, whose
rank is not rank 0 (which only stands in for the sink), would load links the plan does not
use on its way to rank 0: its sender (``post(may_defer=True)``) posts a ``NOTICE`` (a header)
at once and keeps the payload until ``close``, where it follows as ``LATE``; the receiver
files the notice as a ``late`` piece and the payload for ``late_payload``. Such answers reach
the launcher after the run, and die with the sink's rank if it fails (the dispatcher then
re-sends those requests).

A dead or hung peer never hangs this rank: every wait has the run's ``timeout_s`` and a
failure is a ``RankFailedError`` naming the peer (``suspect_rank``), which the supervisor
follows to the culprit.
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
from ..network_emulation import LinkShaper
from .wire import DATA, LATE, NOTICE, chunk_sizes, end_header, header, isend_message, receive_loop
from .wiring import RankInfo

__all__ = ["Links", "Piece", "Sending"]

_MAX_TRANSFER_LOG = 10_000
_MAX_PENDING = 64  # un-waited sends kept before the oldest are waited


@dataclass
class Piece:
    """A message filed by a receiver thread: its tensor, the item's global batch (rows) its
    header carried, and when it arrived."""

    tensor: torch.Tensor
    batch: int
    arrived_at: float
    late: bool = False  # a notice: the payload comes after the run (``Links.late_payload``)


@dataclass
class _Mailbox:
    cond: threading.Condition = field(default_factory=threading.Condition)
    slots: dict[tuple[int, int, int], Piece] = field(default_factory=dict)  # (item, src, tag)
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


class Links:
    """This rank's messages to and from its peers (see the module docstring)."""

    def __init__(
        self,
        me: RankInfo,
        table: Sequence[RankInfo],
        sources: Sequence[int],
        destinations: Sequence[int],
        timeout_s: float,
        device: torch.device,
    ) -> None:
        self.me, self.table, self.timeout_s, self.device = me, list(table), timeout_s, device
        self.shaper: LinkShaper | None = None
        # the links between the ranks' hosts are real, shaped by the kernel (a testbed):
        # only the legs rank 0 stands in for (source, sink) go through the shaper
        self.kernel_network = False
        self.bytes_sent = 0
        self.addresses: dict[int, str] = {}  # rank -> host address, for errors (``rank``)
        # received messages: (sending rank, item, tag, bytes, sent at, arrived at) in wall seconds
        self.transfers: list[tuple[int, int, int, int, float, float]] = []
        self._sources, self._destinations = sorted(sources), sorted(destinations)
        self._mail = _Mailbox()
        self._send_locks = {dst: threading.Lock() for dst in self._destinations}
        self._pending: list[_Pending] = []  # the main thread alone waits them
        self._late_sends: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # dst, header, payload
        self._late: dict[tuple[int, int, int], torch.Tensor] = {}  # (item, src, tag) -> payload
        self._pending_lock = threading.Lock()
        self._receivers = [
            threading.Thread(
                target=self._receive_from, args=(src,), daemon=True, name=f"dora-recv-{src}"
            )
            for src in self._sources
        ]
        for thread in self._receivers:
            thread.start()

    # -- sending -------------------------------------------------------------------------

    def post_chunks(
        self, dst: int, item: int, tag: int, tensor: torch.Tensor, batch: int,
        shaped: bool, chunks: int, priority: tuple[int, int, int],
        devices: tuple[str, str] | None = None, may_defer: bool = False,
    ) -> list[Sending]:  # fmt: skip
        """Send ``tensor`` as ``chunks`` messages (fewer when it has fewer elements);
        ``devices``: the (from, to) devices the shaper emulates (default: the two ranks')."""
        chunks = max(1, min(chunks, tensor.numel()))
        if chunks == 1 or dst == self.me.rank:
            return [
                self.post(
                    dst, item, tag, tensor, batch, shaped, priority, devices=devices,
                    may_defer=may_defer,
                )  # fmt: skip
            ]
        flat = tensor.detach().reshape(-1)
        sendings, start = [], 0
        for index, size in enumerate(chunk_sizes(flat.numel(), chunks)):
            piece = flat.narrow(0, start, size)
            sendings.append(
                self.post(
                    dst, item, tag, piece, batch, shaped, priority, (index, chunks),
                    tensor.shape, devices,
                )  # fmt: skip
            )
            start += size
        return sendings

    def post(
        self,
        dst: int,
        item: int,
        tag: int,
        tensor: torch.Tensor,
        batch: int,
        shaped: bool,
        priority: tuple[int, int, int],
        chunk: tuple[int, int] = (0, 1),
        shape: Sequence[int] | None = None,
        devices: tuple[str, str] | None = None,
        may_defer: bool = False,
    ) -> Sending:
        """Post one message; returns at once with what ``sent`` waits for. ``priority`` is what
        the shaper's ``critical-first`` pacing orders flows by. A message to this rank itself
        is filed at once, or at its emulated arrival when ``devices`` are two (rank 0's user
        inputs from another source device, its outputs to another sink). ``may_defer``: a
        result that may travel as a notice now and its payload at ``close`` (module doc)."""
        sending = Sending(dst, item, tag)
        src_device, dst_device = devices or (self.me.device, self.table[dst].device)
        shaper = self._shaper_for(dst, src_device, dst_device)
        if dst == self.me.rank:
            if shaper is None or not shaped or src_device == dst_device:
                self._deposit(dst, item, tag, tensor, batch)
                sending.left.set()
                return sending
            nbytes = tensor.numel() * tensor.element_size()
            shaper.submit(
                dst, src_device, dst_device, nbytes,
                lambda: self._deposit(dst, item, tag, tensor, batch), True,
                priority=priority, on_left=sending.left.set,
            )  # fmt: skip
            sending.shaped = True
            return sending
        payload = tensor.detach().to("cpu", copy=False).contiguous()
        stands_in = self._real_leg(dst, src_device, dst_device) is False
        deferred = may_defer and stands_in and chunk[1] == 1
        head = header(NOTICE if deferred else DATA, item, tag, payload, batch, chunk, shape)
        nbytes = payload.numel() * payload.element_size()
        self.bytes_sent += nbytes
        sending.shaped = shaper is not None
        if deferred:
            late = header(LATE, item, tag, payload, batch)
            self._late_sends.append((dst, late, payload))

        def transmit() -> None:
            with self._send_locks[dst]:
                works = isend_message(dst, head, None if deferred else payload)
            sending.works = works
            with self._pending_lock:
                self._pending.extend(_Pending(w, dst, item, (head, payload)) for w in works)
            if not sending.shaped:
                sending.left.set()

        if shaper is None:
            transmit()
        else:
            shaper.submit(
                dst, src_device, dst_device, nbytes, transmit, shaped,
                priority=priority, on_left=sending.left.set,
            )  # fmt: skip
        self._reap()
        return sending

    def _real_leg(self, dst: int, src_device: str, dst_device: str) -> bool | None:
        """Over real links (``kernel_network``) to another rank: whether the message's planned
        way is the one between the two ranks' hosts (False: ``dst`` stands in for the device it
        goes to); None otherwise."""
        if not self.kernel_network or dst == self.me.rank:
            return None
        return (src_device, dst_device) == (self.me.device, self.table[dst].device)

    def late_payload(self, src: int, tag: int, item: int) -> torch.Tensor:
        """The payload of a ``late`` piece, once its sender closed (``close`` joined it)."""
        key = (item, src, tag)
        with self._mail.cond:
            if key not in self._late:
                raise self.peer_failed(src, item, RuntimeError(f"tag {tag}'s payload never came"))
            return self._late.pop(key).to(self.device)

    def _shaper_for(self, dst: int, src_device: str, dst_device: str) -> LinkShaper | None:
        """What paces a message: the shaper, except under ``kernel_network`` for one that
        travels between this rank's host and another rank's, whose link the kernel shapes."""
        return None if self._real_leg(dst, src_device, dst_device) else self.shaper

    def sent(self, sendings: Sequence[Sending]) -> None:
        """Block until every message of ``sendings`` has left this rank."""
        deadline = time.monotonic() + self.timeout_s
        for sending in sendings:
            while not sending.left.wait(min(0.5, max(deadline - time.monotonic(), 0.0))):
                if self.shaper is not None and self.shaper.error is not None:
                    raise self.shaper.error
                if time.monotonic() >= deadline:
                    raise self.peer_failed(
                        sending.dst, sending.item,
                        TimeoutError(f"tag {sending.tag} did not leave in {self.timeout_s:g} s"),
                    )  # fmt: skip
            if sending.shaped:
                continue  # it left the emulated link; the real send follows at its arrival
            for work in sending.works:
                self._finish(work, sending.dst, sending.item, deadline)

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
            raise self.peer_failed(dst, item, exc) from None

    # -- receiving -----------------------------------------------------------------------

    def take_first(self, sources: Sequence[int], tag: int, item: int) -> tuple[int, Piece]:
        """The first piece of ``item`` under ``tag`` filed from any of ``sources`` (its
        sender and the piece, moved to this rank's device); waits up to ``timeout_s``."""
        keys = [(item, src, tag) for src in sources]
        deadline = time.monotonic() + self.timeout_s
        with self._mail.cond:
            while True:
                found = next((key for key in keys if key in self._mail.slots), None)
                if found is not None:
                    break
                failed = next((src for src in sources if src in self._mail.errors), None)
                if failed is not None:
                    raise self.peer_failed(failed, item, self._mail.errors[failed])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.peer_failed(
                        sources[0], item, TimeoutError(f"nothing arrived in {self.timeout_s:g} s")
                    )
                self._mail.cond.wait(min(left, 0.5))
            piece = self._mail.slots.pop(found)
        return found[1], Piece(
            piece.tensor.to(self.device), piece.batch, piece.arrived_at, piece.late
        )

    def take(self, src: int, tag: int, item: int) -> Piece:
        return self.take_first([src], tag, item)[1]

    def _deposit(
        self, src: int, item: int, tag: int, tensor: torch.Tensor, batch: int, late: bool = False
    ) -> None:
        with self._mail.cond:
            self._mail.slots[(item, src, tag)] = Piece(tensor, batch, time.monotonic(), late)
            self._mail.cond.notify_all()

    def _receive_from(self, src: int) -> None:
        """Receiver thread of ``src``: file every message it sends until it says it is done."""

        def deliver(
            item: int, tag: int, payload: torch.Tensor, batch: int, sent_at: float, kind: int
        ) -> None:
            if kind == LATE:
                with self._mail.cond:
                    self._late[(item, src, tag)] = payload
                return
            self._deposit(src, item, tag, payload, batch, late=kind == NOTICE)
            if len(self.transfers) < _MAX_TRANSFER_LOG:
                nbytes = payload.numel() * payload.element_size()
                self.transfers.append((src, item, tag, nbytes, sent_at, time.monotonic()))

        try:
            receive_loop(src, timedelta(seconds=self.timeout_s), deliver)
        except BaseException as exc:  # noqa: BLE001 - the main thread raises it
            with self._mail.cond:
                self._mail.errors[src] = exc
                self._mail.cond.notify_all()

    # -- failure and shutdown ------------------------------------------------------------

    def peer_failed(self, peer_rank: int, item: int, cause: BaseException) -> RankFailedError:
        peer = self.table[peer_rank]
        what = (
            "stopped (it hung or is far slower than the timeout allows)"
            if isinstance(cause, TimeoutError) or "imeout" in str(cause) or "imed out" in str(cause)
            else "disconnected (it died)"
        )
        host = self.addresses.get(peer_rank)
        where = f" at {host}" if host else ""
        error = RankFailedError(
            f"{self.me.describe()} waited on item {item} for {peer.describe()}{where}, which "
            f"{what}: {str(cause).splitlines()[0][:200]}. Look at that rank's log; raise "
            "timeout_s if its stage is legitimately slow"
        )
        error.suspect_rank = peer_rank  # type: ignore[attr-defined]
        return error

    def close(self) -> None:
        """Tell every receiver this rank is done, let sends finish, join the receivers."""
        if self.shaper is not None:
            self.shaper.close(self.timeout_s)
        late, self._late_sends = self._late_sends, []
        for dst, head, payload in late:  # after every notice: the shaper sent them all
            with self._send_locks[dst]:
                works = isend_message(dst, head, payload)
            with self._pending_lock:
                self._pending.extend(_Pending(w, dst, -1, (head, payload)) for w in works)
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
                raise self.peer_failed(src, -1, self._mail.errors[src])
            if thread.is_alive():
                raise self.peer_failed(src, -1, TimeoutError("it never said it was done"))
