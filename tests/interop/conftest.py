"""Fixtures for the interop suite: start the real `portcullis` binary and talk to it.

The binary is `$PORTCULLIS_BIN` (scripts/test.sh sets it to target/ci/portcullis).
Every test gets its own server on an ephemeral loopback port with a fresh data directory;
all of the server's stdout/stderr is kept so tests can search it afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"portcullis listening on http://(\S+)")
START_TIMEOUT = 30.0  # seconds to wait for the "listening" line
CLI_TIMEOUT = 30.0  # seconds for one admin CLI command
HTTP_TIMEOUT = 10.0  # seconds for one HTTP request


def portcullis_bin() -> str:
    path = os.environ.get("PORTCULLIS_BIN") or str(REPO / "target/release/portcullis")
    if not os.access(path, os.X_OK):
        pytest.fail(f"portcullis binary not found at {path}: build it (cargo build --release) "
                    "or set PORTCULLIS_BIN")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any PORTCULLIS_* setting (so a developer's
    PORTCULLIS_ADMIN_TOKEN or PORTCULLIS_CONFIG cannot change what is tested), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(extra)
    return env


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Calls `probe` until it returns something truthy (which is returned); fails the test
    after `timeout` seconds, showing the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


class Server:
    """One running `portcullis serve` and helpers to use it."""

    def __init__(self, data_dir: Path, config: str | None = None) -> None:
        self.data_dir = data_dir
        self.bin = portcullis_bin()
        args = [self.bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        if config is not None:
            path = data_dir / "portcullis.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        self._lines: list[tuple[str, str]] = []  # (stream, line) in arrival order
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            args,
            cwd=data_dir,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for t in self._readers:
            t.start()
        self.addr = self._await_listening()
        self.base = f"http://{self.addr}"

    # -- process and output -------------------------------------------------------------------

    def _drain(self, name: str, stream) -> None:
        for line in stream:
            with self._cond:
                self._lines.append((name, line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _await_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        with self._cond:
            while True:
                for stream, line in self._lines:
                    m = LISTENING.search(line)
                    if stream == "stdout" and m:
                        return m.group(1)
                exited = self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)
                left = deadline - time.monotonic()
                if exited or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        self.stop()
        why = f"exited with status {self.proc.returncode}" if exited else f"did not print it within {START_TIMEOUT}s"
        pytest.fail(f"portcullis serve {why}; output so far:\n{self.output()}")

    def lines(self, stream: str | None = None) -> list[str]:
        with self._cond:
            return [line for s, line in self._lines if stream is None or s == stream]

    def output(self) -> str:
        """Everything the server printed so far, stdout and stderr interleaved."""
        return "\n".join(self.lines())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; waits for the output to drain."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for t in self._readers:
            t.join(timeout=5)

    # -- admin ----------------------------------------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def admin_token(self) -> str:
        return self.token_path.read_text().strip()

    def cli(self, *args: str, env: dict[str, str] | None = None, data_dir: Path | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Runs `portcullis ARGS --server … --data-dir … --json` and returns the result
        (not checked)."""
        cmd = [self.bin, *args, "--server", self.base, "--data-dir", str(data_dir or self.data_dir), "--json"]
        return subprocess.run(cmd, cwd=cwd or self.data_dir, env=env or clean_env(), capture_output=True,
                              text=True, timeout=CLI_TIMEOUT)

    def cli_json(self, *args: str, **kw) -> dict:
        """Runs an admin command that must succeed and print one JSON object."""
        r = self.cli(*args, **kw)
        assert r.returncode == 0, f"portcullis {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        try:
            return json.loads(r.stdout)
        except ValueError:
            pytest.fail(f"portcullis {' '.join(args)} did not print JSON:\n{r.stdout}")

    def create_key(self, name: str = "demo", scopes: str = "read:echo") -> dict:
        return self.cli_json("keys", "create", "--name", name, "--scopes", scopes)

    # -- HTTP -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kw) -> requests.Response:
        """One request with python-requests (proxy settings from the environment ignored)."""
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, self.base + path, timeout=HTTP_TIMEOUT, allow_redirects=False, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def admin_get(self, path: str) -> requests.Response:
        return self.get(path, headers={"Authorization": f"Bearer {self.admin_token}"})


@pytest.fixture
def start_server(tmp_path: Path):
    """Factory: `start_server(data_dir=None, config=None)` starts a server (default data dir:
    a fresh temporary directory; `config`: the text of a configuration file). Every server
    started is stopped at teardown."""
    started: list[Server] = []

    def start(data_dir: Path | None = None, config: str | None = None) -> Server:
        d = data_dir or tmp_path / f"data{len(started)}"
        d.mkdir(parents=True, exist_ok=True)
        srv = Server(d, config)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(start_server) -> Server:
    """A running server with a fresh data directory."""
    return start_server()


@pytest.fixture
def key(server: Server) -> dict:
    """A key created with the CLI: name demo, scope read:echo."""
    return server.create_key()
