"""Distributed training, transport: activations down the pipeline (as inference moves them),
their gradients back up, the user inputs and the targets from rank 0.

A gradient goes back the way its activation came, row for row: the receiving stage's member
sends each member of the sending group the gradient rows both hold (``DistTransport._scatter``
with the roles swapped), and the sending member joins the pieces of the receiving members
that hold rows, in member order (``_gather``), so a data-parallel group on either side gets
exactly the gradient of the rows it computed. Gradients travel under ``GRAD_TAG + tag``,
targets under ``TARGET_TAG + leaf``; rank 0 sends the last stage the rows of each target
its members hold (the one batch split, as for inputs).

Links: the inference wiring's pairs, each also reversed (gradients), and rank 0 to every rank
of the last stage (targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...artifact.manifest import PlanFolder
from ...errors import InputError
from ...ir.train_schedule import Transfer
from .links import Sending
from .transport import INPUT_TAG, OUTPUT_TAG, DistTransport
from .wiring import StageWiring

__all__ = [
    "GRAD_TAG",
    "TARGET_TAG",
    "TrainWiring",
    "TrainTransport",
    "grad_tags",
    "training_transfers",
]

GRAD_TAG = 3 << 24  # + activation tag
TARGET_TAG = 4 << 24  # + target leaf position


def training_transfers(folder: PlanFolder) -> list[Transfer]:
    """The plan folder's stage transfers for the training schedule: a float tensor's gradient
    flows back, a shape integer's (or any integer tensor's) does not."""
    out = []
    for entry in folder.stages:
        for send in entry.transfers["sends"]:
            dtype = (send.get("tensor") or {}).get("dtype", "")
            grad = dtype.startswith(("float", "bfloat"))
            out.append(Transfer(entry.index, int(send["peer"]), int(send["tag"]), grad))
    return out


def grad_tags(transfers: list[Transfer], stage: int) -> set[tuple[int, int]]:
    """(peer stage, tag) of ``stage``'s transfers, both ways, whose gradient flows back."""
    sent = {(t.dst, t.tag) for t in transfers if t.src == stage and t.grad}
    return sent | {(t.src, t.tag) for t in transfers if t.dst == stage and t.grad}


class TrainWiring(StageWiring):
    """The inference wiring with the links training adds (see the module doc)."""

    @property
    def last_stage(self) -> int:
        return self.num_stages - 1

    def links(self) -> set[tuple[int, int]]:
        pairs = super().links()
        pairs |= {(b, a) for a, b in pairs}
        pairs |= {(0, r.rank) for r in self.ranks_of(self.last_stage)}
        return {(a, b) for a, b in pairs if a != b}


class TrainTransport(DistTransport):
    """One rank's transport for training (see the module doc)."""

    wiring: TrainWiring

    def receive(self, item: int, peer: int, tag: int) -> torch.Tensor:
        """RECV: block until activation ``tag`` of ``item`` from stage ``peer`` is here."""
        self.post(item, peer, tag)
        return self.wait(item, peer, tag)

    def grad_send(self, item: int, grad: torch.Tensor, peer: int, tag: int) -> list[Sending]:
        """GSEND: the gradient of activation ``tag`` received from stage ``peer``, back to it."""
        batch_dim = self.wiring.recv_dims[self.me.stage][(peer, tag)]
        receivers = self.wiring.ranks_of(peer)
        self._check_batched(batch_dim, receivers, peer, tag)
        return self._scatter(item, grad, receivers, GRAD_TAG + tag, batch_dim, shaped=True)

    def grad_wait(self, item: int, peer: int, tag: int) -> torch.Tensor:
        """GRECV: the gradient of activation ``tag`` this rank sent stage ``peer``."""
        batch_dim = self.wiring.send_dims[self.me.stage][(peer, tag)]
        return self._gather(item, self.wiring.ranks_of(peer), GRAD_TAG + tag, batch_dim)

    def scatter_targets(self, item: int, leaves: Sequence[Any]) -> None:
        """Rank 0, after ``scatter_inputs`` of ``item``: the last stage's rows of each target."""
        rows = self.batch[item]
        for position, leaf in enumerate(leaves):
            value = leaf if isinstance(leaf, torch.Tensor) else torch.as_tensor(leaf)
            batched = value.dim() > 0 and value.shape[0] == rows
            self._scatter(
                item, value, self.wiring.ranks_of(self.wiring.last_stage), TARGET_TAG + position,
                0 if batched else None, shaped=True, source=True,
            )  # fmt: skip

    def targets(self, item: int, count: int) -> list[torch.Tensor]:
        """The last stage: this rank's rows of the ``count`` target leaves of ``item``."""
        return [self._take([0], TARGET_TAG + p, item) for p in range(count)]

    def _check_batched(self, batch_dim: int | None, receivers: list[Any], peer: int, tag: int) -> None:
        if batch_dim is None and (len(receivers) > 1 or len(self.me.shares) > 1):
            raise InputError(
                f"stage {self.me.stage} received tag {tag} from stage {peer} without a batch dim, "
                "and a data-parallel group is on one side: the gradient of such a value cannot be "
                "split by rows; put both stages on one device each"
            )

    def _post_chunks(
        self, dst: int, item: int, tag: int, tensor: torch.Tensor, batch: int, shaped: bool,
        chunks: int,
    ) -> list[Sending]:  # fmt: skip
        receiver = self.wiring.table[dst]
        src = self.me.device
        if INPUT_TAG <= tag < OUTPUT_TAG or tag >= TARGET_TAG:
            src = self.wiring.source or src  # user data leaves the source device
        priority = (*divmod(item, self.microbatches), -receiver.stage)
        return self.links.post_chunks(
            dst, item, tag, tensor, batch, shaped, chunks, priority, (src, receiver.device)
        )
