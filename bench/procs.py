"""Real processes for the benchmarks: the simulated engine and the service, on loopback ports.

Each runs as its own OS process (its own interpreter and event loop), started with the same
Python as the bench, and is stopped by its pid (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


class ProcessError(RuntimeError):
    """A benchmark process did not start (its log tail is in the message)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """One child process with a log file and a health URL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        health_path: str = "/health",
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health_path = health_path
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.popen: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ProcessError(f"{self.name} is not running")
        return self.popen.pid

    def start(self) -> Proc:
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.popen = subprocess.Popen(
            self.argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + self.health_path, timeout=1.0).status_code == 200:
                    log.info("%s ready on %s (pid %d)", self.name, self.url, self.popen.pid)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ProcessError(
            f"{self.name} not healthy after {self.start_timeout_s:.0f}s:\n{self.tail()}"
        )

    def tail(self, lines: int = 30) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.popen = None
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process from /proc/<pid>/status, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def sim_proc(scenario: str, cost: Mapping[str, object] | None = None) -> Proc:
    """``python -m bench.sim_engine`` on a free port (not started)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.sim_engine", "--port", str(port), "--scenario", scenario]
    for key, value in (cost or {}).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return Proc("sim", argv, port=port)


def service_proc(
    sim_url: str,
    *,
    profile: str = "vllm",
    env: Mapping[str, str] | None = None,
) -> Proc:
    """The real service (``proreason serve --profile <profile>``) with both upstreams on the sim."""
    port = free_port()
    upstream = sim_url + "/v1"
    full_env = {
        "PROREASON_MODELS__VISION__BASE_URL": upstream,
        "PROREASON_MODELS__TEXT__BASE_URL": upstream,
        "PROREASON_SERVER__LOG_LEVEL": "warning",
        **(env or {}),
    }
    argv = [
        sys.executable,
        "-c",
        "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))",
        "serve",
        "--profile",
        profile,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Proc("service", argv, port=port, env=full_env, start_timeout_s=90.0)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    """Start the processes in order; stop them all (reverse order) on exit."""
    started: list[Proc] = []
    try:
        for proc in procs:
            started.append(proc.start())
        yield procs
    finally:
        for proc in reversed(started):
            proc.stop()
