"""Testbed commands: running ``ip`` / ``tc`` / ``sysctl`` with a timeout, finding and removing a
prefix's namespaces, and the state file that lets ``status`` and ``down`` find a testbed that
another process brought up.

Everything here ends: every command has a timeout (``subprocess.run`` kills it when it passes),
and killing a namespace's processes retries until none is left or a deadline passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .layout import Layout, TestbedError, check_prefix

__all__ = [
    "run_command",
    "require_root_and_tools",
    "namespaces_of",
    "namespace_pids",
    "kill_namespace",
    "teardown",
    "write_state",
    "read_state",
    "STATE_DIR",
]

COMMAND_TIMEOUT_S = 15.0
KILL_TIMEOUT_S = 10.0
STATE_DIR = Path("/run/dora_fx_testbed")
_TOOLS = ("ip", "tc", "sysctl")


def run_command(argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``argv``; its stdout, or a ``TestbedError`` quoting the command and its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise TestbedError(
            f"{argv[0]!r} is not installed; the testbed needs iproute2 (ip, tc) and procps (sysctl)"
        ) from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(argv)}` did not finish within {timeout_s:g} s") from None
    if done.returncode != 0:
        raise TestbedError(
            f"`{' '.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def require_root_and_tools() -> None:
    """Raise ``TestbedError`` saying what to do unless this process is root and has the tools."""
    if os.geteuid() != 0:
        raise TestbedError(
            "the testbed makes network namespaces, veth pairs and tc qdiscs, which needs root: "
            "run it as root (e.g. `sudo -E python -m dora_fx.testbed ...`) or in a container "
            "with CAP_NET_ADMIN and CAP_SYS_ADMIN"
        )
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise TestbedError(
            f"the testbed needs {', '.join(_TOOLS)}; not found on PATH: {', '.join(missing)} "
            "(install iproute2 and procps)"
        )


def namespaces_of(prefix: str) -> list[str]:
    """The network namespaces named ``{prefix}-*`` (one testbed's: a prefix holds no ``-``)."""
    check_prefix(prefix)
    listing = run_command(("ip", "netns", "list"))
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(f"{prefix}-"))


def namespace_pids(namespace: str) -> list[int]:
    try:
        listing = run_command(("ip", "netns", "pids", namespace))
    except TestbedError:
        return []  # the namespace is gone: nothing runs in it
    return [int(pid) for pid in listing.split()]


def kill_namespace(namespace: str, timeout_s: float = KILL_TIMEOUT_S) -> None:
    """SIGKILL every process in ``namespace`` (again, while new ones appear) until none is left;
    a ``TestbedError`` if some survive ``timeout_s`` (a process stuck in the kernel)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = namespace_pids(namespace)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise TestbedError(
                f"processes {pids} in namespace {namespace} survived SIGKILL for {timeout_s:g} s"
            )
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def teardown(prefix: str) -> list[str]:
    """Kill every process in the prefix's namespaces and delete the namespaces (their veths,
    routes, qdiscs and ifbs go with them) and its state file; the namespaces removed. Safe to
    call when nothing, or only part of a testbed, exists."""
    names = namespaces_of(prefix)
    for name in names:
        kill_namespace(name)
    for name in names:
        with contextlib.suppress(TestbedError):  # gone meanwhile: what we wanted
            run_command(("ip", "netns", "delete", name))
    _state_path(prefix).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the last testbed gone: leave nothing under /run
        STATE_DIR.rmdir()
    left = namespaces_of(prefix)
    if left:
        raise TestbedError(f"could not delete namespaces {left}; try `ip netns delete NAME`")
    return names


def _state_path(prefix: str) -> Path:
    return STATE_DIR / f"{check_prefix(prefix)}.json"


def write_state(layout: Layout) -> Path:
    """Record a testbed's layout under /run (gone at reboot, as are the namespaces)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = _state_path(layout.prefix)
    path.write_text(json.dumps(layout.to_json(), indent=2) + "\n")
    return path


def read_state(prefix: str) -> Layout | None:
    path = _state_path(prefix)
    try:
        return Layout.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TestbedError(
            f"the testbed state file {path} is unreadable ({exc}); remove the testbed with "
            f"`python -m dora_fx.testbed down --prefix {prefix}`"
        ) from None
