"""Testbed measurements: TCP throughput between two namespaces, with Python sockets only (no
iperf3 here). A server in the receiver's namespace times the bytes from the first to the end of
the stream; a client in the sender's namespace sends ``nbytes`` and closes. Both are killed in
``finally`` and every wait has a deadline.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .layout import TestbedError

__all__ = ["Namespaces", "measure_rate_bps", "MEASURE_PORT"]

MEASURE_PORT = 5201

_SERVER = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
received, first = 0, None
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    if first is None:
        first = time.monotonic()
    received += len(chunk)
print(received, time.monotonic() - (first or time.monotonic()), flush=True)
"""

_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
left, chunk = int(sys.argv[3]), b"x" * (1 << 16)
while left > 0:
    sock.sendall(chunk[: min(left, len(chunk))])
    left -= len(chunk)
sock.close()
"""


class Namespaces(Protocol):
    """What a measurement needs of a testbed (``NetnsCluster``)."""

    def address(self, device: str) -> str: ...

    def popen(
        self, device: str, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]: ...


def measure_rate_bps(
    testbed: Namespaces,
    src: str,
    dst: str,
    nbytes: int,
    *,
    port: int = MEASURE_PORT,
    timeout_s: float = 60.0,
) -> float:
    """Payload bits per second of one TCP stream of ``nbytes`` from ``src`` to ``dst``, timed
    by the receiver from its first byte to the end of the stream."""
    deadline = time.monotonic() + timeout_s
    address = testbed.address(dst)
    server = testbed.popen(
        dst, [sys.executable, "-c", _SERVER, address, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = None
    try:
        _wait_ready(server, deadline)
        client = testbed.popen(
            src, [sys.executable, "-c", _CLIENT, address, str(port), str(nbytes)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _, client_err = client.communicate(timeout=_left(deadline))
        if client.returncode:  # the server would wait for a connection until the deadline
            raise TestbedError(f"measuring {src} -> {dst}: the sender failed: {client_err}")
        out, err = server.communicate(timeout=_left(deadline))
    except subprocess.TimeoutExpired:
        raise TestbedError(
            f"measuring {src} -> {dst} ({nbytes} bytes) took over {timeout_s:g} s"
        ) from None
    finally:
        for proc in (server, client):
            if proc is not None:
                proc.kill()
                proc.wait()
    if server.returncode:
        raise TestbedError(f"measuring {src} -> {dst}: the receiver failed: {err.strip()}")
    received, seconds = out.split()[-2:]
    if int(received) != nbytes or float(seconds) <= 0:
        raise TestbedError(f"measuring {src} -> {dst}: got {received} of {nbytes} bytes")
    return 8 * nbytes / float(seconds)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _wait_ready(server: subprocess.Popen[str], deadline: float) -> None:
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], _left(deadline))
    line = server.stdout.readline() if ready else ""
    if line.strip() != "ready":
        why = line.strip() or "no answer"
        if not line and server.stderr is not None:  # its output closed: it ended, say why
            why = server.stderr.read().strip() or why
        raise TestbedError(f"the measuring server did not start: {why}")
