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

The executors that run plans on the distributed runtime are in ``executors``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import DoraError
from .compose import Composition

__all__ = ["WeightedRoundRobin", "PlanFailure", "PlanExecutor", "MultiPlanDispatcher", "DispatchResult"]


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
        self.dead_plans: set[str] = set()
        self.router = WeightedRoundRobin(composition.weights())

    def _without_dead_plans(self, composition: Composition) -> Composition:
        """``composition`` with no request sent to a plan that failed."""
        if not self.dead_plans & set(composition.used):
            return composition
        rates = {p: 0.0 if p in self.dead_plans else r for p, r in composition.rates_rps.items()}
        excluded = {**composition.excluded, **dict.fromkeys(self.dead_plans, "failed")}
        return replace(composition, rates_rps=rates, excluded=excluded)

    def switch(self, composition: Composition) -> None:
        """Take ``composition`` from the next request on."""
        self.composition = composition
        self.router.set_weights(composition.weights())

    def route(self, request_ids: Sequence[int]) -> dict[str, list[int]]:
        batches: dict[str, list[int]] = {}
        for rid in request_ids:
            batches.setdefault(self.router.next(), []).append(rid)
        return batches

    def run(self, requests: Mapping[int, Any], max_failures: int = 8) -> DispatchResult:
        """Serve every request exactly once (by id), re-sending what a failed plan left.

        Plans run side by side (a thread per batch); a failure is handled the moment it is
        reported: re-compose, then route its unanswered requests to the survivors at once,
        while the other plans go on. A failure's ``switch_s`` runs from that report to the
        first answer to a re-sent request, ``recovered_s`` to the last (an executor that
        streams answers, ``streams_answers``, times each one; others, their batch)."""
        started = time.monotonic()
        result = DispatchResult({}, {}, compositions=[self.composition])
        events: queue.Queue[_Event] = queue.Queue()
        answered_at: dict[int, float] = {}
        active = self._launch(self.route(list(requests)), requests, events, answered_at)
        result.rounds = 1
        resent_by: list[tuple[dict[str, Any], set[int]]] = []
        while active:
            plan, ids, answers, failure, error = events.get()
            active -= 1
            if error is not None:  # not a lost device: the caller's to handle
                raise DoraError(f"plan {plan!r} could not serve requests {ids}: {error}") from error
            now = time.monotonic()
            for rid, output in answers.items():
                answered_at.setdefault(rid, now)
                self._answer(result, rid, plan, output)
            if failure is None:
                continue
            if len(result.failures) >= max_failures:
                raise DoraError(
                    f"{failure}; gave up after {max_failures} plan failures"
                ) from failure
            unanswered = [rid for rid in ids if rid not in result.outputs]
            record = self._fail_over(failure, plan, unanswered, result)
            resent_by.append((record, set(unanswered)))
            active += self._launch(self.route(unanswered), requests, events, answered_at)
            result.rounds += 1
        for record, resent in resent_by:
            failed_at = record.pop("failed_at")
            times = [answered_at[rid] - failed_at for rid in resent if rid in answered_at]
            record["switch_s"] = min(times, default=float("nan"))
            record["recovered_s"] = max(times, default=float("nan"))
        result.lost = [rid for rid in requests if rid not in result.outputs]
        result.wall_s = time.monotonic() - started
        return result

    def _fail_over(
        self, failure: PlanFailure, plan: str, unanswered: list[int], result: DispatchResult
    ) -> dict[str, Any]:
        """Drop the lost devices (and the failed plan, whatever it names), re-compose over the
        survivors; the failure's record."""
        failed_at = time.monotonic()
        self.dead = self.dead | set(failure.devices)
        self.dead_plans.add(plan)
        composition = self._without_dead_plans(self.recompose(self.dead))
        decision_s = time.monotonic() - failed_at
        if not composition.used:
            raise DoraError(
                f"{failure}; no plan of the set survives without {sorted(self.dead)}: "
                f"{len(unanswered)} request(s) cannot be re-sent ({composition.excluded})"
            ) from failure
        self.switch(composition)
        result.compositions.append(composition)
        result.resent += unanswered
        record = {
            "plan": plan,
            "devices": list(failure.devices),
            "message": str(failure),
            "unanswered": len(unanswered),
            "resent_on": sorted(composition.used),
            "decision_s": decision_s,
            "failed_at": failed_at,
        }
        result.failures.append(record)
        return record

    def _answer(self, result: DispatchResult, rid: int, plan: str, output: Any) -> None:
        if rid in result.outputs:
            result.duplicates += 1
            return
        result.outputs[rid] = output
        result.served_by[rid] = plan

    def _launch(
        self,
        batches: Mapping[str, list[int]],
        requests: Mapping[int, Any],
        events: queue.Queue[_Event],
        answered_at: dict[int, float],
    ) -> int:
        """Start a thread per plan's batch; each puts (plan, ids, answers, failure, error) on
        ``events`` when it ends, whatever happens. Returns how many were started."""
        streams = getattr(self.executor, "streams_answers", False)

        def stamp(rid: int, _output: Any) -> None:
            answered_at.setdefault(rid, time.monotonic())

        def work(plan: str, ids: list[int]) -> None:
            items = [(rid, requests[rid]) for rid in ids]
            try:
                if streams:
                    answers = self.executor.run(plan, items, on_answer=stamp)  # type: ignore[call-arg]
                else:
                    answers = self.executor.run(plan, items)
                events.put((plan, ids, answers, None, None))
            except PlanFailure as failure:
                events.put((plan, ids, failure.answered, failure, None))
            except BaseException as error:  # noqa: BLE001 - reported to run(), never lost
                events.put((plan, ids, {}, None, error))

        for plan, ids in batches.items():
            threading.Thread(target=work, args=(plan, ids), daemon=True).start()
        return len(batches)


# what a batch's thread reports: plan, request ids, answers, a lost-device failure, another error
_Event = tuple[str, list[int], dict[int, Any], PlanFailure | None, BaseException | None]


