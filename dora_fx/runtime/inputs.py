"""Requests for a distributed run, checked before any rank starts: each flattens like the
captured call (``ir.call_spec.CallSpec``), its tensors have the compiled sizes, and it has at
least a row per microbatch of the schedule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import InputError
from ..ir.batch_split import batch_rows
from ..ir.call_spec import CallSpec

__all__ = ["check_requests", "args_kwargs", "flatten_requests"]


def args_kwargs(request: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A request as given (a tuple of positional inputs, an ``(args, kwargs)`` pair, or one
    input) as positional and keyword inputs."""
    if isinstance(request, tuple) and len(request) == 2 and isinstance(request[1], dict):
        return tuple(request[0]), request[1]
    if isinstance(request, (tuple, list)):
        return tuple(request), {}
    return (request,), {}


def flatten_requests(call: CallSpec, requests: Iterable[tuple[int, Any]]) -> list[tuple[int, list[Any]]]:
    """``(request id, request)`` pairs flattened like the captured call (not yet checked)."""
    return [(rid, call.flatten(*args_kwargs(r), check=False)) for rid, r in requests]


def check_requests(
    call: CallSpec,
    flat_requests: Iterable[tuple[int, list[Any]]],
    microbatches: int = 1,
    hint: str = "",
) -> None:
    """Refuse a request whose inputs are not what the plan was compiled for, or that has
    fewer rows than the schedule's ``microbatches``; ``hint`` ends the rows message."""
    for request_id, flat in flat_requests:
        try:
            call.check(flat)
        except InputError as exc:
            raise InputError(f"request {request_id}: {exc}") from None
        rows = batch_rows(flat)
        if microbatches > 1 and 0 < rows < microbatches:
            raise InputError(
                f"request {request_id} has {rows} rows, fewer than the schedule's "
                f"{microbatches} microbatches; send at least {microbatches} rows per request"
                f"{hint}"
            )
