"""Distributed runtime, transport: tensors between stages and data-parallel groups.

Ranks follow the plan (``wiring``: stage major, then the devices of a data-parallel group). A
rank executes its stage's schedule (``runner``) once per request, one *item* per microbatch
(item = request * microbatches + microbatch); its POST, WAIT, SEND and SENT actions come here,
and ``links`` carries the messages. Rank 0 also stands for the source and the sink: it cuts
requests into microbatches, sends every stage the user inputs it uses (from the plan's source
device: ``wiring.source``), and collects the model outputs (sent to the sink device).

Data-parallel groups split an item's rows with the one batch split every runtime uses
(``ir.batch_split.split_sizes``, largest remainder over the group's shares). A sender sends each
receiving member the rows both hold (possibly none: an empty piece), and the receiver
concatenates the pieces of the senders that hold rows, in member order. A member the split
gives no rows *sits out* the item: it still receives its (empty) pieces, which tell it the
item's batch, but computes nothing and sends nothing, and no peer waits for it. Tensors
without a batch dim are sent by the group's first member with rows to every receiving member.
Every rank learns an item's global batch from the first header of it that it takes (rank 0
from the request) and forgets it when done with the item (``forget``), so a long session keeps
only the items in flight. CUDA stages stage tensors through the CPU for gloo.

Emulation: every message of a shaped send goes through the ``network_emulation.LinkShaper``,
with the priority ``(request, microbatch, -receiving stage)`` its ``critical-first`` pacing
uses: user inputs on the links from the source device, outputs on the links to the sink (free
where the two devices are one: results computed on the sink, inputs used on the source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...ir.batch_split import batch_rows, row_bounds, split_sizes
from ...ir.schedule import ScheduleError
from ..network_emulation import LinkShaper
from .links import Links, Sending
from .wiring import RankInfo, StageWiring

__all__ = ["DistTransport", "Sending", "INPUT_TAG", "OUTPUT_TAG", "message_devices"]

INPUT_TAG = 1 << 24  # + user input position
OUTPUT_TAG = 2 << 24  # + user output position


def message_devices(wiring: StageWiring, sender: RankInfo, dst: int, tag: int) -> tuple[str, str]:
    """(from, to): the devices a message of ``sender`` to rank ``dst`` travels between on the
    emulated network. User inputs leave the source; outputs go to the sink (or stay where
    they were computed, without one); stage tensors go from device to device."""
    src, to = sender.device, wiring.table[dst].device
    if INPUT_TAG <= tag < OUTPUT_TAG:
        src = wiring.source or src
    elif tag >= OUTPUT_TAG:
        to = wiring.sink or src
    return src, to


@dataclass
class LateOutput:
    """An output of ``item`` some of whose pieces are notices (their payloads come at the
    senders' ``close``); ``join`` concatenates the pieces as ``collect_outputs`` does."""

    item: int
    tag: int
    batch_dim: int | None
    pieces: list[tuple[int, Any]]  # (sending rank, links.Piece)

    def join(self, links: Links) -> torch.Tensor:
        tensors = [
            links.late_payload(src, self.tag, self.item) if p.late else p.tensor
            for src, p in self.pieces
        ]
        return tensors[0] if self.batch_dim is None else torch.cat(tensors, self.batch_dim)


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
        self.microbatches = microbatches
        self.batch: dict[int, int] = {}  # item -> its global batch (rows), from any header
        links = wiring.links()
        self.links = Links(
            me, wiring.table, [a for a, b in links if b == me.rank],
            [b for a, b in links if a == me.rank], timeout_s, device or torch.device("cpu"),
        )  # fmt: skip
        self._posted: set[tuple[int, int, int]] = set()  # (item, peer stage, tag)

    @property
    def shaper(self) -> LinkShaper | None:
        return self.links.shaper

    @shaper.setter
    def shaper(self, shaper: LinkShaper | None) -> None:
        self.links.shaper = shaper

    @property
    def bytes_sent(self) -> int:
        return self.links.bytes_sent

    @property
    def transfers(self) -> list[tuple[int, int, int, int, float, float]]:
        return self.links.transfers

    # -- rows of an item -----------------------------------------------------------------

    def rows(self, item: int) -> int | None:
        """Rows of ``item`` this rank computes (None while its batch is unknown or 0)."""
        batch = self.batch.get(item)
        if not batch:
            return None
        if len(self.me.shares) == 1:
            return batch
        return split_sizes(batch, self.me.shares)[self.me.slot]

    def sits_out(self, item: int) -> bool:
        """Whether the batch split gives this rank no rows of ``item`` (see the module doc)."""
        return len(self.me.shares) > 1 and self.rows(item) == 0

    def _holders(self, item: int, ranks: list[RankInfo]) -> list[RankInfo]:
        """The members of a group that hold rows of ``item`` (all while its batch is unknown)."""
        batch = self.batch.get(item)
        if len(ranks) == 1 or not batch:
            return ranks
        return [r for r, size in zip(ranks, split_sizes(batch, ranks[0].shares)) if size]

    # -- the schedule's actions ----------------------------------------------------------

    def post(self, item: int, peer: int, tag: int) -> None:
        """POST: expect ``tag`` from stage ``peer`` for ``item``. The receiver threads have a
        receive posted at all times, so this only registers the entry WAIT will take."""
        self._posted.add((item, peer, tag))

    def wait(self, item: int, peer: int, tag: int) -> torch.Tensor:
        """WAIT: block until ``tag`` from stage ``peer`` has arrived for ``item`` (the pieces
        of every member of a data-parallel sender group that holds rows, joined)."""
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
        self.links.sent(sendings)

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
                    shaped=True, source=True,
                )  # fmt: skip


    def forget(self, item: int) -> None:
        """This rank is done with ``item``: drop what it knew of it (its global batch). Rank 0
        forgets an item once it collected its outputs (after running its own stage's actions
        for it), every other rank once it ran its actions for it."""
        self.batch.pop(item, None)

    def inputs(self, item: int) -> list[Any]:
        positions = self.wiring.input_stages[self.me.stage]
        return [self._take([0], INPUT_TAG + p, item) for p in positions]

    def send_outputs(self, item: int, values: Sequence[Any]) -> None:
        positions = self.wiring.output_stages[self.me.stage]
        first = self._first_holder(item)
        for position, value in zip(positions, values):
            batch_dim = self.wiring.output_dims.get(position)
            if batch_dim is None and not first:
                continue  # the group's first member with rows returns values without a batch dim
            batch = self._global_batch(item, value, batch_dim)
            self._post_chunks(0, item, OUTPUT_TAG + position, value, batch, True, 1)

    def collect_outputs(
        self, item: int, positions: Sequence[int]
    ) -> tuple[list[Any], float]:
        """Rank 0: the model outputs of ``item`` (pieces of a group concatenated) and the time
        the last piece arrived. An output of late pieces (``links``: noticed now, its payload
        after the run) is a ``LateOutput`` for ``resolve_late``."""
        values: list[Any] = []
        arrived = 0.0
        owner = {p: s for s, ps in self.wiring.output_stages.items() for p in ps}
        for position in positions:
            batch_dim = self.wiring.output_dims.get(position)
            holders = self._holders(item, self.wiring.ranks_of(owner[position]))
            sources = holders[:1] if batch_dim is None else holders
            tag = OUTPUT_TAG + position
            pieces = [(r.rank, self.links.take(r.rank, tag, item)) for r in sources]
            arrived = max([arrived, *(p.arrived_at for _, p in pieces)])
            late = LateOutput(item, tag, batch_dim, [(src, p) for src, p in pieces])
            values.append(late if any(p.late for _, p in pieces) else late.join(self.links))
        return values, arrived

    def resolve_late(self, value: Any) -> Any:
        """A collected output with its late payloads filled in (after ``close``)."""
        return value.join(self.links) if isinstance(value, LateOutput) else value

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
        source: bool = False,
    ) -> list[Sending]:
        """Send each receiving member its rows of ``value``. ``source``: rank 0 sending user
        inputs, which holds the whole request whatever its own stage's share."""
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        sendings: list[Sending] = []
        if batch_dim is None:
            if source or self._first_holder(item):
                batch = self.batch.get(item, 0)
                for receiver in receivers:
                    sendings += self._post_chunks(
                        receiver.rank, item, tag, value, batch, shaped, chunks
                    )
            return sendings
        batch = self._global_batch(item, value, batch_dim)
        in_group = len(self.me.shares) > 1 and not source
        mine = row_bounds(batch, self.me.shares)[self.me.slot] if in_group else (0, batch)
        theirs = row_bounds(batch, receivers[0].shares)
        for receiver, (lo, hi) in zip(receivers, theirs):
            start, stop = max(lo, mine[0]), min(hi, mine[1])
            if stop <= start:  # no rows in common: an empty piece, which carries the batch
                start = stop = mine[0]
            piece = value.narrow(batch_dim, start - mine[0], stop - start)
            sendings += self._post_chunks(receiver.rank, item, tag, piece, batch, shaped, chunks)
        return sendings

    def _first_holder(self, item: int) -> bool:
        """Whether this rank is its group's first member with rows of ``item``: the one that
        sends (and returns) the values without a batch dim."""
        return self._holders(item, self.wiring.ranks_of(self.me.stage))[0].rank == self.me.rank

    def _global_batch(self, item: int, value: Any, batch_dim: int | None) -> int:
        if item in self.batch:
            return self.batch[item]
        if isinstance(value, torch.Tensor) and batch_dim is not None and len(self.me.shares) == 1:
            return int(value.shape[batch_dim])
        return 0

    def _gather(
        self, item: int, senders: list[RankInfo], tag: int, batch_dim: int | None
    ) -> torch.Tensor:
        """The value ``senders`` send for ``item``: the first piece to arrive (from a member
        that holds rows: the others send nothing) tells the batch, and so which other members'
        pieces to wait for."""
        first, piece = self.links.take_first([s.rank for s in senders], tag, item)
        self._learn_batch(item, piece.batch)
        if batch_dim is None:
            return piece.tensor
        holders = self._holders(item, senders)
        pieces = {first: piece.tensor}
        for sender in holders:
            if sender.rank not in pieces:
                pieces[sender.rank] = self._take([sender.rank], tag, item)
        tensors = [pieces[s.rank] for s in holders]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, batch_dim)

    def _take(self, sources: Sequence[int], tag: int, item: int) -> torch.Tensor:
        _, piece = self.links.take_first(sources, tag, item)
        self._learn_batch(item, piece.batch)
        return piece.tensor

    def _learn_batch(self, item: int, batch: int) -> None:
        if batch:
            self.batch.setdefault(item, batch)

    def _post_chunks(
        self, dst: int, item: int, tag: int, tensor: torch.Tensor, batch: int, shaped: bool,
        chunks: int,
    ) -> list[Sending]:  # fmt: skip
        receiver = self.wiring.table[dst]
        to_stage = self.wiring.num_stages if tag >= OUTPUT_TAG else receiver.stage
        priority = (*divmod(item, self.microbatches), -to_stage)
        devices = message_devices(self.wiring, self.me, dst, tag)
        return self.links.post_chunks(
            dst, item, tag, tensor, batch, shaped, chunks, priority, devices,
            may_defer=tag >= OUTPUT_TAG and self.wiring.sink == self.me.device,
        )  # fmt: skip

    def close(self) -> None:
        """Tell every receiver this rank is done, let sends finish, join the receivers."""
        self.links.close()
