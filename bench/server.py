"""A server as a subprocess on a free loopback port: started, waited for until /health answers,
stopped. The one helper the benchmarks and the tests start `python -m app` (or gunicorn) with."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import requests

APP_COMMAND = (sys.executable, "-m", "app", "--host", "127.0.0.1")


@dataclasses.dataclass(frozen=True)
class Server:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(
    args: Sequence[str] = (),
    command: Sequence[str] = APP_COMMAND,
    log_path: Path | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> Iterator[Server]:
    """Yield the Server running `command + args` once /health answers, then stop it.

    A "{port}" in the command becomes a free port; without one, `--port PORT` is appended.
    Output goes to `log_path` (quoted when the server fails to start), else nowhere: a pipe
    nobody reads would block a chatty server."""
    port = free_port()
    command = [*command, *args]
    if not any("{port}" in part for part in command):
        command += ["--port", "{port}"]
    command = [part.replace("{port}", str(port)) for part in command]
    with open(log_path or "/dev/null", "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            server = Server(f"http://127.0.0.1:{port}", process)
            wait_until_healthy(server, timeout, log_path)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_healthy(server: Server, timeout: float = 120, log_path: Path | None = None) -> None:
    def log() -> str:
        return f":\n{log_path.read_text(errors='replace')}" if log_path else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}{log()}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).ok:
                return
        except requests.RequestException:  # not listening yet, or too busy loading to answer
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not healthy after {timeout} s{log()}")
