"""`make serve` starts a real server that answers /health (the foundation's 'done when')."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_make_serve_answers_health(isolated_settings: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"ARGS=--port {port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        response = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response is not None, (
            f"server exited or never answered:\n{server.stdout.read() if server.stdout else ''}"
        )
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert (isolated_settings / "secret_key").is_file()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)  # reaps the process and closes its pipe
