"""The multi-plan dispatcher: every request goes to one plan of the set; nothing is lost.

Routing follows the composition's rates by *smooth weighted round robin* (deterministic: each
plan's credit grows by its weight per request, the richest plan takes the request and pays
the total), so over any window the plans' shares of requests track the rates to within one
request. A new composition takes effect at the next request boundary: requests already
handed to a plan stay there.

Execution is behind ``PlanExecutor``: ``run(plan, [(request_id, inputs), ...])`` returns the
outputs by id, or raises ``PlanFailure`` naming the lost device(s) and carrying the answers
the plan gave before it failed. The dispatcher then drops every plan that uses a lost
device, re-composes over the survivors (``on_change``), and re-sends exactly the unanswered
ids; a request id is answered once (a second answer is counted in ``duplicates`` and
dropped), so the output stream has each id exactly once.

``LauncherExecutor`` runs a saved plan folder per plan with the distributed launcher
(``runtime.launch.run_local``: one process per device, gloo, emulation), all plans of a round
side by side in threads.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import DoraError, RankFailedError
from .compose import Composition

__all__ = [
    "WeightedRoundRobin",
    "PlanFailure",
    "PlanExecutor",
    "MultiPlanDispatcher",
    "DispatchResult",
    "LauncherExecutor",
]


class PlanFailure(DoraError, RuntimeError):
    """A plan lost device(s) while serving; ``answered`` holds the outputs it gave first."""

    def __init__(
        self,
        plan: str,
        devices: Sequence[str],
        message: str,
        answered: Mapping[int, Any] | None = None,
    ) -> None:
        super().__init__(f"plan {plan!r} lost device(s) {list(devices)}: {message}")
        self.plan = plan
        self.devices = tuple(devices)
        self.answered = dict(answered or {})


class PlanExecutor(Protocol):
    def run(self, plan: str, items: Sequence[tuple[int, Any]]) -> dict[int, Any]: ...


class WeightedRoundRobin:
    """Smooth weighted round robin over plans (nginx's): deterministic, evenly interleaved."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        self.weights = {p: w for p, w in weights.items() if w > 0}
        if not self.weights:
            raise DoraError("no plan has a positive rate: nothing to route to")
        self.credit = dict.fromkeys(self.weights, 0.0)

    def next(self) -> str:
        total = sum(self.weights.values())
        for plan, weight in self.weights.items():
            self.credit[plan] += weight
        chosen = max(self.credit, key=lambda p: self.credit[p])
        self.credit[chosen] -= total
        return chosen


@dataclass
class DispatchResult:
    outputs: dict[int, Any]
    served_by: dict[int, str]
    resent: list[int] = field(default_factory=list)
    duplicates: int = 0
    lost: list[int] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    compositions: list[Composition] = field(default_factory=list)
    rounds: int = 0
    wall_s: float = 0.0

    def summary(self) -> str:
        plans: dict[str, int] = {}
        for plan in self.served_by.values():
            plans[plan] = plans.get(plan, 0) + 1
        lines = [
            f"{len(self.outputs)} answered, {len(self.lost)} lost, {self.duplicates} duplicated, "
            f"{len(self.resent)} re-sent, {self.rounds} round(s), {self.wall_s:.1f} s wall",
            "answers by plan: " + ", ".join(f"{p} {n}" for p, n in sorted(plans.items())),
        ]
        for f in self.failures:
            lines.append(
                f"failure: plan {f['plan']} lost {','.join(f['devices'])}; "
                f"{f['unanswered']} unanswered re-sent on {','.join(f['resent_on']) or 'nothing'}; "
                f"re-composed in {1e3 * f['decision_s']:.2f} ms, switch {f['switch_s']:.3f} s"
            )
        return "\n".join(lines)


class MultiPlanDispatcher:
    """Holds the plan set; routes requests to plans by the current composition.

    ``plans``: name -> the devices it uses. ``recompose(dead_devices)`` returns the new
    composition over plans that avoid them (the adapter's job; see ``adapter.Adapter``).
    """

    def __init__(
        self,
        plans: Mapping[str, Sequence[str]],
        composition: Composition,
        executor: PlanExecutor,
        recompose: Callable[[frozenset[str]], Composition],
    ) -> None:
        self.plans = {p: tuple(d) for p, d in plans.items()}
        self.composition = composition
        self.executor = executor
        self.recompose = recompose
        self.dead: frozenset[str] = frozenset()
        self.router = WeightedRoundRobin(composition.weights())

    def switch(self, composition: Composition) -> None:
        """Take ``composition`` from the next request on."""
        self.composition = composition
        self.router.set_weights(composition.weights())

    def route(self, request_ids: Sequence[int]) -> dict[str, list[int]]:
        batches: dict[str, list[int]] = {}
        for rid in request_ids:
            batches.setdefault(self.router.next(), []).append(rid)
        return batches

    def run(self, requests: Mapping[int, Any], max_rounds: int = 8) -> DispatchResult:
        """Serve every request exactly once (by id), re-sending what a failed plan left.

        A failure's ``switch_s`` runs from the moment the executor reported it to the first
        answer of a plan that took re-sent requests, ``recovered_s`` to the last."""
        started = time.monotonic()
        result = DispatchResult({}, {}, compositions=[self.composition])
        pending = list(requests)
        open_failures: list[dict[str, Any]] = []
        while pending and result.rounds < max_rounds:
            result.rounds += 1
            resent = set(pending) if open_failures else set()
            batches = self.route(pending)
            outcomes = self._run_round(batches, requests)
            pending = []
            finished = [
                done for plan, (_, _, done) in outcomes.items() if resent & set(batches[plan])
            ]
            for f in open_failures:
                if finished:
                    f["switch_s"] = min(finished) - f["failed_at"]
                    f["recovered_s"] = max(finished) - f["failed_at"]
            open_failures = []
            for plan, (answers, failure, done) in outcomes.items():
                for rid, output in answers.items():
                    self._answer(result, rid, plan, output)
                if failure is None:
                    continue
                unanswered = [rid for rid in batches[plan] if rid not in result.outputs]
                self.dead = self.dead | set(failure.devices)
                decided = time.monotonic()
                composition = self.recompose(self.dead)
                decision_s = time.monotonic() - decided
                if not composition.used:
                    raise DoraError(
                        f"{failure}; no plan of the set survives without "
                        f"{sorted(self.dead)}: {len(unanswered)} request(s) cannot be re-sent "
                        f"({composition.excluded})"
                    ) from failure
                self.switch(composition)
                result.compositions.append(composition)
                pending += unanswered
                result.resent += unanswered
                record = {
                    "plan": plan,
                    "devices": list(failure.devices),
                    "message": str(failure),
                    "unanswered": len(unanswered),
                    "resent_on": sorted(composition.used),
                    "decision_s": decision_s,
                    "failed_at": done,
                }
                result.failures.append(record)
                open_failures.append(record)
        result.lost = [rid for rid in requests if rid not in result.outputs]
        result.wall_s = time.monotonic() - started
        for f in result.failures:
            f.pop("failed_at", None)
            f.setdefault("switch_s", float("nan"))
            f.setdefault("recovered_s", float("nan"))
        return result

    def _answer(self, result: DispatchResult, rid: int, plan: str, output: Any) -> None:
        if rid in result.outputs:
            result.duplicates += 1
            return
        result.outputs[rid] = output
        result.served_by[rid] = plan

    def _run_round(
        self,
        batches: Mapping[str, list[int]],
        requests: Mapping[int, Any],
    ) -> dict[str, tuple[dict[int, Any], PlanFailure | None, float]]:
        """Run every plan's batch side by side (one thread per plan); each outcome carries
        the answers, the failure if any, and when the plan finished or failed."""
        outcomes: dict[str, tuple[dict[int, Any], PlanFailure | None, float]] = {}
        lock = threading.Lock()

        def work(plan: str, ids: list[int]) -> None:
            try:
                answers = self.executor.run(plan, [(rid, requests[rid]) for rid in ids])
                outcome: tuple[dict[int, Any], PlanFailure | None, float] = (
                    answers,
                    None,
                    time.monotonic(),
                )
            except PlanFailure as failure:
                outcome = (failure.answered, failure, time.monotonic())
            with lock:
                outcomes[plan] = outcome

        threads = [threading.Thread(target=work, args=item) for item in batches.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes


_DEVICE = re.compile(r"on device '([^']+)'")


class LauncherExecutor:
    """Runs each plan's batch as one distributed run of its saved folder (``run_local``).

    ``faults``: plan -> the launcher's ``fault=`` option for that plan's *first* run (a real
    kill of one rank's process). A ``RankFailedError`` becomes a ``PlanFailure`` naming the
    device of the rank the launcher blames. The launcher returns outputs only for a run that
    completes, so a failed run's requests are all unanswered and all re-sent.
    """

    def __init__(
        self,
        folders: Mapping[str, str | Path],
        faults: Mapping[str, dict[str, Any]] | None = None,
        serialize: bool = False,
        **run_options: Any,
    ) -> None:
        self.folders = {p: Path(f) for p, f in folders.items()}
        self.faults = dict(faults or {})
        self.run_options = run_options
        self.runs: list[dict[str, Any]] = []
        # ``serialize``: one launcher run at a time (on a host with few cores, two runs side
        # by side stretch each other's emulated time).
        self._one_at_a_time = threading.Lock() if serialize else None

    def run(self, plan: str, items: Sequence[tuple[int, Any]]) -> dict[int, Any]:
        from ..runtime.launch import run_local

        fault = self.faults.pop(plan, None)
        if self._one_at_a_time is None:
            return self._run(plan, items, fault, run_local)
        with self._one_at_a_time:
            return self._run(plan, items, fault, run_local)

    def _run(
        self, plan: str, items: Sequence[tuple[int, Any]], fault: Any, run_local: Any
    ) -> dict[int, Any]:
        started = time.monotonic()
        try:
            result = run_local(
                self.folders[plan], [inputs for _, inputs in items], fault=fault, **self.run_options
            )
        except RankFailedError as exc:
            self.runs.append({"plan": plan, "items": len(items), "failed": True,
                              "wall_s": time.monotonic() - started})  # fmt: skip
            devices = _DEVICE.findall(str(exc))[:1] or ["?"]
            raise PlanFailure(plan, devices, str(exc)) from exc
        self.runs.append({"plan": plan, "items": len(items), "failed": False,
                          "wall_s": time.monotonic() - started,
                          "latency_p50_s": result.latency_p50_s})  # fmt: skip
        if len(result.outputs) != len(items):
            raise DoraError(
                f"plan {plan!r}: the launcher returned {len(result.outputs)} outputs for "
                f"{len(items)} requests"
            )
        return {rid: out for (rid, _), out in zip(items, result.outputs, strict=True)}
