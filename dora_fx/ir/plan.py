"""The plan IR: which contiguous range of blocks each pipeline stage runs, on which devices.

A plan has one text form and one JSON form; both round-trip exactly (floats are written with
``repr``), so tests and users can write plans by hand::

    plan balanced-flops batch=8
    stage 0 blocks=0:14 devices=phone
    stage 1 blocks=14:40 devices=laptop,jetson shares=0.375,0.625 compute_s=0.0123
    predicted latency_s=0.0345
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlanError

__all__ = ["Plan", "Stage", "parse_fields"]

@dataclass(frozen=True)
class Stage:
    """One pipeline stage: blocks ``[block_start, block_stop)`` on one device or a
    data-parallel group whose batch shares sum to 1."""

    index: int
    block_start: int
    block_stop: int
    devices: tuple[str, ...]
    shares: tuple[float, ...] = ()
    predicted: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        shares = tuple(float(s) for s in self.shares) or (1.0 / len(self.devices),) * len(
            self.devices
        )
        object.__setattr__(self, "shares", shares)
        if not self.devices:
            raise PlanError(f"stage {self.index} has no device")
        if self.block_stop <= self.block_start:
            raise PlanError(
                f"stage {self.index} has an empty block range "
                f"{self.block_start}:{self.block_stop}"
            )
        if len(shares) != len(self.devices):
            raise PlanError(
                f"stage {self.index}: {len(self.devices)} devices but {len(shares)} shares"
            )
        if any(s <= 0 for s in shares) or not math.isclose(sum(shares), 1.0, rel_tol=1e-9):
            raise PlanError(f"stage {self.index}: shares must be positive and sum to 1, got {shares}")

    @property
    def data_parallel(self) -> bool:
        return len(self.devices) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "blocks": [self.block_start, self.block_stop],
            "devices": list(self.devices),
            "shares": list(self.shares),
            "predicted": dict(self.predicted),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stage:
        start, stop = data["blocks"]
        return cls(
            index=data["index"],
            block_start=start,
            block_stop=stop,
            devices=tuple(data["devices"]),
            shares=tuple(data.get("shares", ())),
            predicted=dict(data.get("predicted", {})),
        )

    def to_text(self) -> str:
        tokens = [
            "stage",
            str(self.index),
            f"blocks={self.block_start}:{self.block_stop}",
            "devices=" + ",".join(self.devices),
        ]
        if self.data_parallel:
            tokens.append("shares=" + ",".join(repr(s) for s in self.shares))
        tokens += [f"{k}={v!r}" for k, v in self.predicted.items()]
        return " ".join(shlex.quote(t) for t in tokens)

    @classmethod
    def from_text(cls, line: str) -> Stage:
        tokens = shlex.split(line)
        if len(tokens) < 4 or tokens[0] != "stage":
            raise PlanError(f"not a stage line: {line!r}")
        fields = parse_fields(tokens[2:], line)
        start, _, stop = fields.pop("blocks").partition(":")
        devices = tuple(fields.pop("devices").split(","))
        shares_text = fields.pop("shares", None)
        shares = tuple(float(s) for s in shares_text.split(",")) if shares_text else ()
        predicted = {k: float(v) for k, v in fields.items()}
        return cls(int(tokens[1]), int(start), int(stop), devices, shares, predicted)


@dataclass(frozen=True)
class Plan:
    """A pipeline of stages over contiguous block ranges, in order."""

    name: str
    stages: tuple[Stage, ...]
    batch: int = 1
    predicted: dict[str, float] = field(default_factory=dict)
    gap: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise PlanError(f"plan {self.name!r} has no stage")
        for position, stage in enumerate(self.stages):
            if stage.index != position:
                raise PlanError(
                    f"plan {self.name!r}: stage at position {position} has index {stage.index}"
                )
            if position and stage.block_start != self.stages[position - 1].block_stop:
                raise PlanError(
                    f"plan {self.name!r}: stage {position} starts at block {stage.block_start} "
                    f"but stage {position - 1} ends at {self.stages[position - 1].block_stop}; "
                    "stages must cover contiguous block ranges"
                )
        if self.stages[0].block_start != 0:
            raise PlanError(f"plan {self.name!r}: the first stage must start at block 0")

    @property
    def num_blocks(self) -> int:
        return self.stages[-1].block_stop

    @property
    def devices(self) -> list[str]:
        return [d for stage in self.stages for d in stage.devices]

    def stage_of_block(self, block: int) -> int:
        for stage in self.stages:
            if stage.block_start <= block < stage.block_stop:
                return stage.index
        raise PlanError(f"block {block} is outside plan {self.name!r} (0:{self.num_blocks})")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "batch": self.batch,
            "gap": self.gap,
            "predicted": dict(self.predicted),
            "stages": [s.to_json() for s in self.stages],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(
            name=data["name"],
            stages=tuple(Stage.from_json(s) for s in data["stages"]),
            batch=data.get("batch", 1),
            predicted=dict(data.get("predicted", {})),
            gap=data.get("gap"),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def loads(cls, text: str) -> Plan:
        return cls.from_json(json.loads(text))

    def to_text(self) -> str:
        head = ["plan", self.name, f"batch={self.batch}"]
        if self.gap is not None:
            head.append(f"gap={self.gap!r}")
        lines = [" ".join(shlex.quote(t) for t in head)]
        lines += [stage.to_text() for stage in self.stages]
        if self.predicted:
            lines.append(
                " ".join(["predicted"] + [f"{k}={v!r}" for k, v in self.predicted.items()])
            )
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> Plan:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if not lines:
            raise PlanError("empty plan text")
        head = shlex.split(lines[0])
        if len(head) < 2 or head[0] != "plan":
            raise PlanError(f"a plan text starts with 'plan NAME', got {lines[0]!r}")
        fields = parse_fields(head[2:], lines[0])
        stages, predicted = [], {}
        for line in lines[1:]:
            if line.startswith("predicted"):
                predicted = {k: float(v) for k, v in parse_fields(line.split()[1:], line).items()}
            else:
                stages.append(Stage.from_text(line))
        gap = fields.get("gap")
        return cls(
            name=head[1],
            stages=tuple(stages),
            batch=int(fields.get("batch", "1")),
            predicted=predicted,
            gap=None if gap is None else float(gap),
        )


def parse_fields(tokens: list[str], line: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``: the key=value tokens of the text forms."""
    fields = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise PlanError(f"expected key=value, got {token!r} in {line!r}")
        fields[key] = value
    return fields
