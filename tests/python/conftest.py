"""Fixtures that run a real hubbub process for the Python end-to-end tests.

Each test gets its own server on a fresh port with a fresh data directory.
The binary comes from `HUBBUB_BIN`, or `target/debug/hubbub` in this repo.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "hubbub"

# Seconds allowed for the server to answer /health, and to exit on SIGTERM.
START_DEADLINE = 10.0
STOP_DEADLINE = 15.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubbubServer:
    """One hubbub process, which can be stopped and started again on the
    same port and data directory."""

    def __init__(self, binary: Path, data_dir: Path, log_dir: Path, secret: str):
        self.binary = binary
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.secret = secret
        self.port = free_port()
        self.proc = None
        self.starts = 0

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    def start(self) -> None:
        assert self.proc is None, "server already running"
        self.starts += 1
        log_path = self.log_dir / f"hubbub-{self.starts}.log"
        self.log_file = open(log_path, "wb")
        cmd = [
            str(self.binary),
            "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(self.data_dir),
            "--jwt-secret", self.secret,
            "--workers", "2",
            "--log", "warn",
            "--messages-per-sec", "1000",
            "--message-burst", "1000",
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        last_error = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"hubbub exited with {code} during start-up:\n{self.log_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.http_base}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"status {resp.status}"
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                last_error = repr(e)
            # Short back-off between polls; readiness itself is decided by /health.
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError(
            f"hubbub did not answer /health within {START_DEADLINE}s "
            f"(last: {last_error}):\n{self.log_text()}"
        )

    def stop(self) -> int:
        """SIGTERM the process and return its exit code."""
        assert self.proc is not None, "server not running"
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"hubbub ignored SIGTERM for {STOP_DEADLINE}s")
        finally:
            self.log_file.close()
        return code

    def restart(self) -> None:
        code = self.stop()
        assert code == 0, f"hubbub exited with {code} on SIGTERM:\n{self.log_text()}"
        self.start()

    def log_text(self) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("hubbub-*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)


@pytest.fixture
def server(tmp_path):
    binary = Path(os.environ.get("HUBBUB_BIN", DEFAULT_BIN))
    assert binary.is_file(), f"no hubbub binary at {binary} (set HUBBUB_BIN or build it)"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = HubbubServer(binary, data_dir, tmp_path, secret="py-e2e-secret-" + os.urandom(6).hex())
    srv.start()
    yield srv
    if srv.proc is not None:
        code = srv.stop()
        assert code == 0, f"hubbub exited with {code} on SIGTERM:\n{srv.log_text()}"
