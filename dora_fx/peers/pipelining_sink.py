"""A pipelining peer's results returned to the sink over a real network (a testbed run).

On emulated links the last stage's outputs reach the sink as a token the link shaper holds
for the outputs' bytes (``pipelining_rank._return``). Over kernel-shaped links nothing paces
the token, so with ``PeerConfig.return_outputs`` the last stage sends the outputs' bytes
themselves to rank 0 when rank 0 runs on the sink device (the cluster's source: the phone that
asked, as Dora's plans return their results there): the bytes cross the same shaped links
Dora's results do. Rank 0 posts every receive up front in a thread that stamps each arrival
(its own compute does not delay the stamp). A sink that is no rank's device keeps the token.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["OUTPUT_TAG", "SinkArrivals", "output_bytes", "send_outputs"]

OUTPUT_TAG = 8


def output_bytes(out: Any) -> torch.Tensor:
    """The outputs' bytes as one flat uint8 tensor (what crosses to the sink)."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        return torch.empty(0, dtype=torch.uint8)
    return torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in leaves])


def send_outputs(out: Any, group: Any, pending: list[tuple[Any, torch.Tensor]]) -> None:
    """The last stage: one request's outputs to rank 0 (the sink's rank), not waited for."""
    payload = output_bytes(out)
    pending.append((dist.isend(payload, 0, group=group, tag=OUTPUT_TAG), payload))


class SinkArrivals:
    """Rank 0: the arrival times of ``count`` outputs of ``nbytes`` each from rank ``src``."""

    def __init__(self, group: Any, src: int, nbytes: int, count: int, timeout_s: float) -> None:
        self.times: list[float] = []
        self.error: BaseException | None = None
        self._timeout_s = timeout_s
        self._ready = threading.Condition()
        args = (group, src, nbytes, count)
        self._thread = threading.Thread(target=self._receive, args=args, daemon=True)
        self._thread.start()

    def _receive(self, group: Any, src: int, nbytes: int, count: int) -> None:
        try:
            for _ in range(count):
                buffer = torch.empty(nbytes, dtype=torch.uint8)
                work = dist.irecv(buffer, src, group=group, tag=OUTPUT_TAG)
                assert work is not None
                work.wait()
                with self._ready:
                    self.times.append(time.monotonic())
                    self._ready.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting rank
            with self._ready:
                self.error = exc
                self._ready.notify_all()

    def take(self, index: int) -> float:
        """When request ``index``'s outputs arrived (waits for them, at most the timeout)."""
        with self._ready:
            ok = self._ready.wait_for(
                lambda: len(self.times) > index or self.error is not None, self._timeout_s
            )
        if self.error is not None:
            raise RuntimeError(f"receiving request {index}'s outputs at the sink failed") from self.error
        if not ok:
            raise TimeoutError(
                f"request {index}'s outputs did not reach the sink within {self._timeout_s:g} s"
            )
        return self.times[index]
