"""`ServerProcess`: `python -m serving.launch` (or another server module) in a child process,
for benchmarks and tests, and the completion requests they send it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from agents.paths import PROJECT_ROOT
from serving.launch import SERVED_NAME


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def completion_request(prompt, max_tokens: int, *, stream: bool = False) -> dict:
    """The body of a greedy completion of exactly `max_tokens` tokens (EOS ignored).

    `prompt` is text or token ids. A streamed one asks for a last chunk with the usage.
    """
    body = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def stream_chunk(line: str) -> dict | None:
    """The JSON chunk of one line of a streamed response, or None ("[DONE]", blank lines)."""
    return json.loads(line.removeprefix("data: ")) if line.startswith("data: {") else None


LAUNCHER = ("serving.launch",)
"""The command of the project's server: `python -m serving.launch`."""


class ServerProcess:
    """A launched server on 127.0.0.1; a context manager that stops it with SIGTERM."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        log_path: str | Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 240.0,
        command: Sequence[str] = LAUNCHER,
    ) -> None:
        """Start `python -m *command --port PORT *args`, logging to `log_path`; `command` is
        the launcher's by default (stock vLLM's server: `benchmarks.stock_server`)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(self.port), *args],
            cwd=PROJECT_ROOT,
            env=os.environ | (env or {}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        """Everything the server printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Block until /health answers 200; raise RuntimeError with the log tail if it dies."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode} during start-up:\n"
                    + self.log()[-4000:]
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready in {self.startup_timeout_s} s:\n{self.log()[-4000:]}")

    def metrics(self) -> str:
        """The text of /metrics."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for the exit (SIGKILL after `timeout_s`); return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
