"""Monitoring: what the runtime measures, and when the adapter should decide again.

* **moving averages** (exponentially weighted, ``alpha`` per observation) of each stage's
  compute time, each link's transfer rate and the request inter-arrival time, each against the
  figure the current composition assumed (its *baseline*). A quantity has *drifted* when its
  average is off its baseline by more than ``threshold`` (relative), after at least
  ``min_samples`` observations;
* **heartbeats**: a device not heard from for ``heartbeat_timeout_s`` is presumed gone.

``Monitor.changes()`` says what drifted or died; the adapter then re-composes (milliseconds)
and ``rebase`` makes the new figures the baseline. Re-planning from the problem is the
adapter's business, and only when no composition meets the QoE (see ``adapter.Adapter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Ewma", "Monitor", "Drift"]


@dataclass
class Ewma:
    alpha: float = 0.2
    value: float | None = None
    samples: int = 0

    def update(self, x: float) -> float:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)
        self.samples += 1
        return self.value


@dataclass(frozen=True)
class Drift:
    key: str
    baseline: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline > 0 else float("inf")

    def __str__(self) -> str:
        return f"{self.key}: {self.measured:.4g} vs {self.baseline:.4g} assumed (x{self.ratio:.2f})"


@dataclass
class Monitor:
    """Keys are free-form: ``stage:PLAN:K`` (seconds), ``link:SRC->DST`` (bytes/s), ``load``
    (requests/s, from inter-arrival times)."""

    threshold: float = 0.2
    alpha: float = 0.2
    min_samples: int = 3
    heartbeat_timeout_s: float = 0.3
    baseline: dict[str, float] = field(default_factory=dict)
    averages: dict[str, Ewma] = field(default_factory=dict)
    last_heard_s: dict[str, float] = field(default_factory=dict)
    _last_arrival_s: float | None = None

    def observe(self, key: str, value: float) -> Drift | None:
        """Record one measurement; return the drift if ``key`` is now off its baseline."""
        average = self.averages.setdefault(key, Ewma(self.alpha))
        measured = average.update(value)
        base = self.baseline.get(key)
        if base is None or average.samples < self.min_samples:
            return None
        if abs(measured - base) > self.threshold * abs(base):
            return Drift(key, base, measured)
        return None

    def observe_transfer(self, src: str, dst: str, nbytes: float, seconds: float) -> Drift | None:
        return self.observe(f"link:{src}->{dst}", nbytes / seconds if seconds > 0 else 0.0)

    def observe_stage(self, plan: str, stage: int, seconds: float) -> Drift | None:
        return self.observe(f"stage:{plan}:{stage}", seconds)

    def observe_arrival(self, now_s: float) -> Drift | None:
        last, self._last_arrival_s = self._last_arrival_s, now_s
        if last is None or now_s <= last:
            return None
        return self.observe("load", 1.0 / (now_s - last))

    def heartbeat(self, device: str, now_s: float) -> None:
        self.last_heard_s[device] = now_s

    def dead(self, now_s: float) -> set[str]:
        return {d for d, t in self.last_heard_s.items() if now_s - t > self.heartbeat_timeout_s}

    def drifts(self) -> list[Drift]:
        out = []
        for key, base in self.baseline.items():
            average = self.averages.get(key)
            if average is None or average.value is None or average.samples < self.min_samples:
                continue
            if abs(average.value - base) > self.threshold * abs(base):
                out.append(Drift(key, base, average.value))
        return out

    def rebase(self, baseline: dict[str, float], keep_averages: bool = True) -> None:
        """New assumed figures (after a re-composition)."""
        self.baseline = dict(baseline)
        if not keep_averages:
            self.averages.clear()
