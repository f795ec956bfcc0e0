"""What the backend did with each Dynamo graph (``explain_last`` prints these)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GraphRecord", "flops_text"]


@dataclass
class GraphRecord:
    """One Dynamo graph as the backend handled it."""

    index: int
    ops: int  # call_function nodes of Dynamo's graph
    flops: float  # at its example inputs (matmuls and convolutions: FlopCounterMode)
    plan: str | None = None  # the plan's text, when planned
    reason: str = ""  # why it runs locally, when it does
    compile_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    backward: str | None = None  # how its backward runs, when AOTAutograd traced one

    def describe(self, min_flops: float) -> list[str]:
        head = f"graph {self.index}: {self.ops} ops, {flops_text(self.flops)} at its example inputs"
        if self.plan is None:
            reason = self.reason or "no call has run the plan yet (it is made on the first)"
            lines = [f"{head} -> runs on one device, as captured: {reason}"]
        else:
            stages = self.plan.count("\nstage ")
            lines = [f"{head} -> planned over {stages} stage(s):"]
            lines += [
                "    " + line for line in self.plan.splitlines() if not line.startswith("predicted")
            ]
        if self.backward is not None:
            lines.append(f"    {self.backward}")
        return lines + [f"    note: {n}" for n in self.notes]




def flops_text(flops: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f} FLOP"
