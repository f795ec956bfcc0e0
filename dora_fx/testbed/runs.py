"""Runs on a testbed whose links the kernel shapes: Dora's runtime (``run_plan``) and the
torch.distributed.pipelining peer (``run_peer``), one torchrun node per rank in its device's
namespace, compute emulated, the network *not* paced by dora_fx's code.

Dilation. Emulated compute runs dilated: one emulated second lasts ``time_scale`` wall seconds
(``runtime.compute_emulation``). A kernel-shaped link cannot follow a dilation the ranks agree
on at run time, so it is fixed first: ``shaped_for(cluster, time_scale)`` brings the testbed
up with every link at its bandwidth / ``time_scale`` (``dilated``), and the run is told the
same ``time_scale`` (``RunConfig.network = "kernel"``); a transfer then lasts, in emulated
seconds, what it lasts on the cluster's links. One-way latency is not reproduced (no netem
here; ``shaping``): ``without_latency`` gives the cluster a plan and the simulator can share
with the testbed.

A run that loses a rank ends within its timeout: the survivors' reports
(``failure_RANK.json``) are followed to the rank that died, and ``DeviceLost`` names its rank,
stage, device and host address, carrying the answers given before (``answered``, by id).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..artifact.manifest import read_plan_folder
from ..cost_models.cluster import Cluster
from ..cost_models.device import Device
from ..errors import DeviceLost, RankFailedError
from ..runtime.distributed.answers import AnswerStream
from ..runtime.distributed.launch import DistributedResult, host_device, run_config
from ..runtime.distributed.wiring import rank_table
from ..runtime.inputs import check_requests, flatten_requests
from .layout import TestbedError
from .netns import NetnsCluster
from .ranks import MASTER_PORT, NodeCommand, start_nodes, stop_nodes, worker_commands

__all__ = ["dilated", "without_latency", "shaped_for", "run_plan", "run_peer", "unpaced"]

_GRACE_S = 2.0  # after a node fails, for the others to report (plus half the timeout)
_POLL_S = 0.1


def dilated(cluster: Cluster, time_scale: float) -> Cluster:
    """``cluster`` with every link's rates divided by ``time_scale`` (and its latency times
    it): its network as it must be in wall time for a run dilated ``time_scale`` times."""
    if not time_scale >= 1.0:
        raise TestbedError(
            f"time_scale must be at least 1 (wall over device seconds), got {time_scale!r}"
        )
    net = cluster.network
    links = tuple(
        replace(link, up_bps=link.up_bps / time_scale, down_bps=link.down / time_scale,
                latency_s=link.latency_s * time_scale)
        for link in (cluster.link(name) for name in cluster.device_names)
    )  # fmt: skip
    network = replace(
        net, bandwidth_bps=net.bandwidth_bps / time_scale, latency_s=net.latency_s * time_scale,
        links=links,
    )  # fmt: skip
    return cluster.with_network(network)


def without_latency(cluster: Cluster) -> Cluster:
    """``cluster`` with no one-way latency on any link: what a testbed reproduces here."""
    net = cluster.network
    links = tuple(replace(cluster.link(name), latency_s=0.0) for name in cluster.device_names)
    return cluster.with_network(replace(net, latency_s=0.0, links=links))


def unpaced(cluster: Cluster) -> Cluster:
    """``cluster`` with links so fast that pacing them costs nothing: what a peer run's own
    emulation is given on a testbed, whose real links the kernel shapes."""
    net = cluster.network
    links = tuple(
        replace(cluster.link(name), up_bps=1e15, down_bps=1e15, latency_s=0.0)
        for name in cluster.device_names
    )
    return cluster.with_network(replace(net, bandwidth_bps=1e15, latency_s=0.0, links=links))


def shaped_for(cluster: Cluster, time_scale: float, prefix: str = "dora") -> NetnsCluster:
    """A testbed (not up yet: use it as a context manager) of ``cluster`` whose links are
    shaped for runs dilated ``time_scale`` times (``dilated``)."""
    return NetnsCluster(dilated(cluster, time_scale), prefix)


def run_plan(
    testbed: NetnsCluster,
    plan_dir: str | Path,
    requests: Sequence[Any] | Mapping[int, Any],
    *,
    time_scale: float,
    host: Device | str | Path | None = None,
    emulate: bool = True,
    in_flight: int = 0,
    warmup: int = 3,
    timeout_s: float = 30.0,
    deadline_s: float = 300.0,
    keep_outputs: bool = True,
    port: int = MASTER_PORT,
    on_answer: Callable[[int, Any], None] | None = None,
) -> DistributedResult:
    """Run a saved plan over ``testbed`` (one torchrun node per rank, in its device's
    namespace), compute emulated at ``time_scale`` and the network the kernel's
    (``RunConfig.network = "kernel"``; ``testbed`` must be ``shaped_for`` that time scale).
    ``requests`` as ``run_local``'s; answers stream back by id (``on_answer``). A lost rank
    raises ``DeviceLost`` (see the module doc); ``deadline_s`` bounds the whole run."""
    folder = read_plan_folder(plan_dir)
    items = list(requests.items()) if isinstance(requests, Mapping) else list(enumerate(requests))
    flat = flatten_requests(folder.call, items)
    check_requests(folder.call, flat, folder.schedule.microbatches, "")
    table = rank_table(folder.plan)
    with tempfile.TemporaryDirectory(prefix="dora_testbed_run_") as run_dir:
        os.chmod(run_dir, 0o755)
        outbox = os.path.join(run_dir, "outbox")
        os.makedirs(outbox)
        config = run_config(
            folder.path, run_dir, emulate=emulate, host=host, in_flight=in_flight,
            warmup=warmup, timeout_s=timeout_s, time_scale=time_scale if emulate else None,
            keep_outputs=False, outbox_dir=outbox, network="kernel",
        )  # fmt: skip
        torch.save([f for _, f in flat], config.requests_path)
        config_path = Path(run_dir, "config.json")
        config_path.write_text(json.dumps(config.to_json()))
        answers = AnswerStream(folder.call, [rid for rid, _ in flat], outbox, on_answer)
        commands = worker_commands(
            testbed, [r.device for r in table], "dora_fx.runtime.distributed.launch",
            config_path, port=port, timeout_s=timeout_s,
        )  # fmt: skip
        started = time.monotonic()
        try:
            _run_nodes(testbed, commands, run_dir, timeout_s, deadline_s, answers.poll)
        except RankFailedError as exc:
            answers.poll()
            exc.answered = dict(answers.answered)
            raise
        answers.poll()
        wall_s = time.monotonic() - started
        raw = torch.load(Path(run_dir, "result.pt"), weights_only=True)
    kept = [rid for rid, _ in flat] if keep_outputs else []
    result = DistributedResult.from_raw(
        raw, [answers.answered[rid] for rid in kept], wall_s, emulate,
        [f"over testbed {testbed.prefix!r}: links shaped by the kernel for time scale "
         f"{time_scale:g}; one-way latency left out"],
    )  # fmt: skip
    result.request_ids = kept
    return result


def run_peer(
    testbed: NetnsCluster,
    model: torch.nn.Module,
    requests: Sequence[tuple[Any, ...]],
    devices: Sequence[str],
    cluster: Cluster,
    *,
    time_scale: float,
    host: Device | str | Path | None = None,
    split_points: Sequence[str] | None = None,
    in_flight: int = 0,
    warmup: int = 3,
    timeout_s: float = 30.0,
    deadline_s: float = 300.0,
    port: int = MASTER_PORT,
) -> DistributedResult:
    """The torch.distributed.pipelining peer (``peers.pipelining``: even split, ScheduleGPipe)
    over ``testbed``, stage ``k`` on ``devices[k]``: compute emulated as ``cluster``'s devices
    at ``time_scale``, transfers over the kernel's links. The peer's own pacing is given
    ``unpaced(cluster)``, so it costs nothing; the last stage sends its outputs' bytes to the
    sink (the cluster's source) over the kernel's links when the first stage runs there, as
    Dora's results return (``peers.pipelining_sink``), else a token tells rank 0."""
    from ..peers.pipelining import PeerConfig, even_split_points

    points = list(split_points or even_split_points(model, len(devices)))
    first = tuple(requests[0])
    with tempfile.TemporaryDirectory(prefix="dora_testbed_peer_") as run_dir:
        os.chmod(run_dir, 0o755)
        config = PeerConfig(
            inputs_path=os.path.join(run_dir, "inputs.pt"), split_points=points,
            devices=list(devices), result_path=os.path.join(run_dir, "result.pt"),
            outputs_path=os.path.join(run_dir, "outputs.pt"), in_flight=in_flight,
            warmup=warmup, timeout_s=timeout_s, emulate=True,
            cluster=unpaced(cluster).to_json(), host=host_device(host).to_json(),
            time_scale=time_scale, ledger_path=os.path.join(run_dir, "ledger"),
            keep_outputs=False, return_outputs=True,
        )  # fmt: skip
        payload = {"model": model, "mb_args": first, "requests": [tuple(r) for r in requests]}
        torch.save(payload, config.inputs_path)
        config_path = Path(run_dir, "config.json")
        config_path.write_text(json.dumps(config.to_json()))
        commands = worker_commands(
            testbed, list(devices), "dora_fx.peers.pipelining_rank", config_path, port=port,
            timeout_s=timeout_s,
        )  # fmt: skip
        started = time.monotonic()
        _run_nodes(testbed, commands, run_dir, timeout_s, deadline_s, None)
        wall_s = time.monotonic() - started
        raw = torch.load(config.result_path, weights_only=True)
    notes = [f"torch.distributed.pipelining, ScheduleGPipe, split at {points}, over testbed "
             f"{testbed.prefix!r} (kernel-shaped links, time scale {time_scale:g})"]  # fmt: skip
    return DistributedResult.from_raw(raw, [], wall_s, True, notes)


def _run_nodes(
    testbed: NetnsCluster,
    commands: list[NodeCommand],
    run_dir: str,
    timeout_s: float,
    deadline_s: float,
    poll: Callable[[], None] | None,
) -> None:
    """Start the nodes, wait for all (calling ``poll`` meanwhile), always stop them; a failed
    or late node raises (``DeviceLost`` when a rank is to blame)."""
    procs = start_nodes(testbed, commands, run_dir)
    try:
        codes = _wait(procs, timeout_s, deadline_s, poll)
    finally:
        stop_nodes(testbed, commands, procs)
    if any(code != 0 for code in codes):
        raise _failure(testbed, commands, codes, run_dir)


def _wait(
    procs: list[Any], timeout_s: float, deadline_s: float, poll: Callable[[], None] | None
) -> list[int | None]:
    deadline = time.monotonic() + deadline_s
    failed_at: float | None = None
    while True:
        if poll is not None:
            poll()
        codes = [p.poll() for p in procs]
        if all(code is not None for code in codes):
            return codes
        now = time.monotonic()
        if failed_at is None and any(code not in (None, 0) for code in codes):
            failed_at = now
        if now > deadline or (
            failed_at is not None and now - failed_at > 0.5 * timeout_s + _GRACE_S
        ):
            return codes
        time.sleep(_POLL_S)


def _failure(
    testbed: NetnsCluster, commands: list[NodeCommand], codes: list[int | None], run_dir: str
) -> RankFailedError:
    """The rank to blame, found by following the survivors' reports to a rank that died (or
    failed on its own), as an error naming its rank, stage, device and host address."""
    reports = {}
    for command in commands:
        path = Path(run_dir, f"failure_{command.rank}.json")
        if path.exists():
            with contextlib.suppress(ValueError):  # a report cut short counts as none
                reports[command.rank] = json.loads(path.read_text())
    for rank, report in reports.items():  # gloo names the peer by address only
        if report.get("suspect_rank") is None:
            report["suspect_rank"] = _rank_at(testbed, commands, report.get("message", ""), rank)
    culprit = _culprit(reports, codes)
    command = commands[culprit]
    stage = _stage_of(run_dir, culprit)
    why = reports.get(culprit, {}).get("message") or _how_it_ended(codes[culprit])
    witness = next((r["message"] for k, r in reports.items() if k != culprit), "")
    if culprit not in reports:  # it died without a word: what it printed last
        witness = f"its log ends: {_log_tail(run_dir, culprit)}" + (
            f"; {witness}" if witness else ""
        )
    message = (
        f"run over testbed {testbed.prefix!r} stopped: rank {culprit} (stage {stage}, device "
        f"{command.device!r}, host {testbed.address(command.device)}) {why}"
        + (f"; {witness}" if witness else "")
        + f". Every node was stopped; logs in {run_dir}/rank*.log while it exists"
    )
    return DeviceLost(message, rank=culprit, stage=stage, device=command.device)


def _culprit(reports: dict[int, dict[str, Any]], codes: list[int | None]) -> int:
    """Follow each report's suspect to a rank that does not point further; prefer one that
    died without a report (the rank that noticed first need not be the one that died)."""
    ends = []
    for start in reports:
        culprit, seen = start, {start}
        while culprit in reports and reports[culprit].get("suspect_rank") not in (None, *seen):
            culprit = int(reports[culprit]["suspect_rank"])
            seen.add(culprit)
        ends.append(culprit)
    silent = [k for k in ends if k not in reports]
    if silent or ends:
        return (silent or ends)[0]
    # nobody reported: the first node that ended badly, or one still running
    bad = next((k for k, c in enumerate(codes) if c not in (0, None)), None)
    return next((k for k, c in enumerate(codes) if c is None), 0) if bad is None else bad


def _rank_at(testbed: NetnsCluster, commands: list[NodeCommand], message: str, me: int) -> int | None:
    """The rank whose host address a gloo error names ("closed by peer [10.77.0.2]:5820")."""
    for command in commands:
        if command.rank != me and f"[{testbed.address(command.device)}]" in message:
            return command.rank
    return None


def _log_tail(run_dir: str, rank: int, lines: int = 3) -> str:
    path = Path(run_dir, f"rank{rank}.log")
    if not path.exists():
        return "(no log)"
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])[-600:]


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "hung (still running at the deadline)"
    if code < 0:
        return f"died (killed by signal {-code})"
    return f"failed (exit code {code}) without a report"


def _stage_of(run_dir: str, rank: int) -> int:
    config = json.loads(Path(run_dir, "config.json").read_text())
    if "plan_dir" not in config:  # a peer run: stage k is rank k
        return rank
    return rank_table(read_plan_folder(config["plan_dir"]).plan)[rank].stage
