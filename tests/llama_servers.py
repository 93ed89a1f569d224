"""Real llama.cpp servers (`python -m llama_cpp.server`) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from inferencekit.models.embedded import embedded_gguf_path

GGUF = str(embedded_gguf_path())
SERVER = str(Path(__file__).with_name("amx_safe.py"))  # `python -m llama_cpp.server`, safe where AMX is faulty


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process serving the embedded model with `threads` threads (under the name `alias`, else its
    path); `kill` sends SIGKILL."""

    def __init__(self, port: int | None = None, threads: int = 1, alias: str | None = None) -> None:
        self.port = port or free_port()
        self.threads = threads
        self.alias = alias
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--model", GGUF, "--host", "127.0.0.1", "--port",
             str(self.port), "--n_threads", str(self.threads), "--n_ctx", "2048",
             *(["--model_alias", self.alias] if self.alias else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("llama_cpp.server exited")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError("llama_cpp.server did not get ready")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
