"""Domain errors. Each subclasses the builtin a user would catch and says what was
expected, what was found, where (node / stage / device / file), and what to do."""

from __future__ import annotations

from typing import Any

__all__ = [
    "DoraError",
    "CaptureError",
    "ClusterError",
    "QoEError",
    "InfeasibleQoEError",
    "PlanError",
    "PlanFolderError",
    "PassError",
    "VerificationError",
    "InputError",
    "BackendOptionError",
    "ProfileError",
    "RankFailedError",
    "DeviceLost",
]


class DoraError(Exception):
    """Base class of every error dora_fx raises on purpose."""


class CaptureError(DoraError, RuntimeError):
    """Neither torch.export nor symbolic_trace could capture the model."""


class ClusterError(DoraError, ValueError):
    """The devices or network given to compile() are unusable."""


class QoEError(DoraError, ValueError):
    """A QoE with negative, missing or contradictory numbers."""


class InfeasibleQoEError(DoraError, ValueError):
    """No plan can meet the QoE on this cluster."""


class PlanError(DoraError, ValueError):
    """A plan that does not fit the graph or the cluster."""


class PlanFolderError(DoraError, OSError):
    """A saved plan folder that is incomplete, tampered with or malformed."""


class PassError(DoraError, RuntimeError):
    """A compiler pass failed; the message names it and the passes that ran before."""


class VerificationError(DoraError, AssertionError):
    """The IR verifier (DORA_DEBUG=1) found a broken invariant."""


class InputError(DoraError, TypeError):
    """Inputs given at call time do not match those the model was compiled for."""


class BackendOptionError(DoraError, ValueError):
    """``torch.compile(..., backend="dora", options=...)`` got a missing, unknown or wrong
    option; the message names it and what it expects."""


class ProfileError(DoraError, ValueError):
    """A device profile JSON (from calibration, or written by hand) that is missing fields or holds
    values a device cannot have."""


class RankFailedError(DoraError, RuntimeError):
    """A rank of a distributed run died, hung or failed; the message names the rank, its stage
    and device, and what to do. ``answered``: request id -> outputs given before the failure
    (filled by a streaming ``runtime.distributed.session.Session``)."""

    answered: dict[int, Any]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.answered = {}


class DeviceLost(RankFailedError):
    """The rank of one device died, hung or failed, so that device is lost to the run: ``rank``,
    ``stage`` and ``device`` name it (what the runtime adapter re-composes around). The message
    says the same, for a person."""

    def __init__(self, message: str, *, rank: int, stage: int, device: str) -> None:
        super().__init__(message)
        self.rank, self.stage, self.device = rank, stage, device

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its fields (threads, processes)
        return (_device_lost, (str(self), self.rank, self.stage, self.device, self.answered))


def _device_lost(
    message: str, rank: int, stage: int, device: str, answered: dict[int, Any]
) -> DeviceLost:
    error = DeviceLost(message, rank=rank, stage=stage, device=device)
    error.answered = answered
    return error
