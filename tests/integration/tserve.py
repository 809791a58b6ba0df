"""Hugging Face's ``transformers serve`` as a test upstream: a real third-party OpenAI-compatible
server that runs on CPU (docs/upstreams.md says how it differs from vLLM).

``TransformersServe(model_dir)`` starts ``transformers serve <model_dir> --host 127.0.0.1 --port N
--device cpu`` in its own process group (``python -m transformers.cli.transformers`` of this
interpreter, so it is the installed package's server), offline (no hub), logging to a file.
``start()`` returns at once; ``wait_ready()`` polls ``/health`` until it answers 200 (the model is
loaded before the server listens) and fails with the log's tail if the process exits or the
timeout passes. ``stop()`` ends the whole process group (SIGTERM, then SIGKILL).

It serves exactly one model: a request's ``model`` must equal the folder path as given
(``server.model``), or it answers 400.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx

#: seconds a server may take to load its model and listen (tiny models: ~3-6 s on 2 cores)
READY_TIMEOUT_S = 90.0


def serving_available() -> str | None:
    """None when ``transformers serve`` can run here; else why not (for a skip reason).

    Every requirement of the installed transformers' ``serving`` extra must be installed (its own
    ``is_serve_available`` checks only some of them; without ``accelerate`` the server starts and
    then fails to load the model)."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "transformers is not installed"
    missing = []
    for requirement in metadata.requires("transformers") or []:
        if "extra ==" not in requirement or not re.search(r"extra == .serving.", requirement):
            continue
        name = re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return (
            f"the transformers serving extra is not installed (missing {', '.join(missing)}): "
            f"pip install 'transformers[serving]=={version}'"
        )
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TransformersServe:
    def __init__(self, model_dir: str | Path, log_dir: Path, *, threads: int = 1) -> None:
        self.model = str(model_dir)
        self.port = _free_port()
        self.log_path = log_dir / f"tserve-{Path(self.model).name}-{self.port}.log"
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def start(self) -> TransformersServe:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",  # the model is a local folder; never reach for a hub
            "TRANSFORMERS_OFFLINE": "1",
            # one inference thread per server: two servers and the tests share 2 cores, and
            # oversubscribed torch threads stall for seconds
            "OMP_NUM_THREADS": str(self.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        command = [
            sys.executable, "-m", "transformers.cli.transformers", "serve", self.model,
            "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
            "--log-level", "warning",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() ends all of it
            )
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> TransformersServe:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve {self.model} exited with {self.process.returncode}:\n"
                    + self.log_tail()
                )
            try:
                if httpx.get(self.root_url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"transformers serve {self.model} not ready within {timeout_s:g}s:\n"
                    + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> TransformersServe:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TransformersServe({self.model!r}, port={self.port})"
