"""The runtime adapter's dispatcher over a testbed: each plan's batch runs over the namespaces
(``runs.run_plan``), and a lost host becomes the ``PlanFailure`` the dispatcher re-routes on.

``kill``: plan -> (device, answers) kills every process of that device's namespace (its host
dies) once the plan's first batch has returned that many answers, for the failure path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..adapter.dispatcher import PlanFailure
from ..errors import DeviceLost, RankFailedError
from .netns import NetnsCluster
from .runs import run_plan

__all__ = ["TestbedExecutor"]


class TestbedExecutor:
    """Runs each plan's batch as one ``run_plan`` over ``testbed`` (``run_options``: its
    keywords); answers stream back (``streams_answers``). Batches run one at a time (two runs
    side by side on one host stretch each other's emulated time), each on its own master
    port."""

    __test__ = False  # not a pytest test class, despite the name
    streams_answers = True

    def __init__(
        self,
        testbed: NetnsCluster,
        folders: Mapping[str, str | Path],
        kill: Mapping[str, tuple[str, int]] | None = None,
        port: int = 29700,
        **run_options: Any,
    ) -> None:
        self.testbed, self.folders = testbed, {p: Path(f) for p, f in folders.items()}
        self.kill = dict(kill or {})
        self.run_options = run_options
        self.runs: list[dict[str, Any]] = []
        self.errors: list[DeviceLost] = []  # what each failed batch raised
        self._port = port
        self._one_at_a_time = threading.Lock()

    def run(
        self,
        plan: str,
        items: Sequence[tuple[int, Any]],
        on_answer: Callable[[int, Any], None] | None = None,
    ) -> dict[int, Any]:
        with self._one_at_a_time:
            self._port += 1
            killer = self._killer(plan, on_answer)
            try:
                result = run_plan(
                    self.testbed, self.folders[plan], dict(items), port=self._port,
                    on_answer=killer, **self.run_options,
                )  # fmt: skip
            except RankFailedError as exc:
                self.runs.append({"plan": plan, "items": len(items), "failed": True})
                devices = [exc.device] if isinstance(exc, DeviceLost) else []
                if isinstance(exc, DeviceLost):
                    self.errors.append(exc)
                raise PlanFailure(plan, devices, str(exc), exc.answered) from exc
        self.runs.append({"plan": plan, "items": len(items), "failed": False,
                          "latency_p50_s": result.latency_p50_s})  # fmt: skip
        return dict(zip(result.request_ids, result.outputs, strict=True))

    def _killer(
        self, plan: str, on_answer: Callable[[int, Any], None] | None
    ) -> Callable[[int, Any], None]:
        """``on_answer`` that also kills the plan's victim host after its count of answers."""
        victim, after = self.kill.pop(plan, (None, 0))
        count = [0]

        def answered(rid: int, outputs: Any) -> None:
            count[0] += 1
            if victim is not None and count[0] == after:
                self.testbed.kill(victim)
            if on_answer is not None:
                on_answer(rid, outputs)

        return answered
