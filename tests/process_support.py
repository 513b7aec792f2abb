"""Real processes for the tests that run amobridge as an operator does (acceptance tier, restart
and multi-process proofs): a free port, a clean environment, ``python -m amobridge …``, a child
process with its output in a log file, and the sandbox amoCRM as a real HTTP server.

Kept out of conftest.py so test modules and the tiers' helpers (``acceptance_support.py``,
``integration/_procs.py``) import them (``from process_support import …``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

START_DEADLINE = 30.0
"""Seconds a process gets to answer its health URL (migrations included)."""
STOP_DEADLINE = 10.0


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; the process binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any ``AMOBRIDGE_*`` name, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AMOBRIDGE_")}
    env.update(values)
    return env


def amobridge(*args: str) -> list[str]:
    """The command line of ``amobridge …`` run by this interpreter."""
    return [sys.executable, "-m", "amobridge", *args]


@dataclass
class Process:
    """A child process with its output in a log file. :meth:`stop` and :meth:`kill` end it (and
    only it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush, commit or clean up."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_DEADLINE)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it is not over within the deadline."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(
    name: str, argv: list[str], *, env: Mapping[str, str], workdir: Path, ready_url: str
) -> Process:
    """Start ``argv`` in ``workdir`` and poll ``ready_url`` until it answers 200 (or fail with
    its log). The output goes to ``{workdir}/{name}.log``, appended: a program started again
    under the same name (a restart) keeps the log of its earlier runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(  # noqa: S603 - our own program, argv built here
            argv, env=dict(env), cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )
    process = Process(name, popen, log_path)
    deadline = time.monotonic() + START_DEADLINE
    with httpx.Client(timeout=2.0) as http:
        while True:
            if popen.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {popen.returncode} before it was ready:\n{process.tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if http.get(ready_url).status_code == 200:
                    return process
            if time.monotonic() > deadline:
                process.stop()
                raise RuntimeError(f"{name} did not answer {ready_url} in time:\n{process.tail()}")
            time.sleep(0.05)  # polling interval while the port opens, under a deadline


# --- the sandbox as a real server ----------------------------------------------------------------


@dataclass
class SandboxServer:
    """``amobridge sandbox`` running at ``url``; ``control`` is an httpx client on its control
    API (``/_sandbox/…``)."""

    url: str
    process: Process
    control: httpx.Client

    def post(self, path: str, body: dict[str, Any], *, expect: tuple[int, ...] = (200, 201)) -> Any:
        reply = self.control.post(path, json=body)
        assert reply.status_code in expect, reply.text
        return reply.json()

    def create_account(self, subdomain: str) -> dict[str, Any]:
        found: dict[str, Any] = self.post(
            "/_sandbox/accounts", {"subdomain": subdomain}, expect=(201,)
        )
        return found

    def create_integration(
        self, redirect_uri: str, *, name: str = "amobridge tests", **extra: Any
    ) -> dict[str, Any]:
        body = {"name": name, "redirect_uri": redirect_uri, **extra}
        found: dict[str, Any] = self.post("/_sandbox/integrations", body, expect=(201,))
        return found

    def consent(self, client_id: str, account_id: int, state: str | None = None) -> dict[str, Any]:
        """The user's Allow, without a browser: ``{code, redirect_url, referer}``."""
        body: dict[str, Any] = {"client_id": client_id, "account_id": account_id}
        if state is not None:
            body["state"] = state
        found: dict[str, Any] = self.post("/_sandbox/authorize", body)
        return found

    def expire_tokens(self, account_id: int) -> int:
        expired: int = self.post("/_sandbox/tokens/expire", {"account_id": account_id})["expired"]
        return expired

    def requests(
        self, account_id: int | None = None, path_prefix: str | None = None
    ) -> list[dict[str, Any]]:
        """The requests the sandbox recorded, of one account and/or under a path prefix."""
        params: dict[str, Any] = {}
        if account_id is not None:
            params["account_id"] = account_id
        if path_prefix:
            params["path_prefix"] = path_prefix
        reply = self.control.get("/_sandbox/requests", params=params)
        assert reply.status_code == 200, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found

    def token_exchanges(self) -> list[dict[str, Any]]:
        """Every call of ``/oauth2/access_token`` (codes and refreshes), of any account."""
        return self.requests(path_prefix="/oauth2/access_token")

    def refreshes(self, account_id: int) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests(account_id, "/oauth2/access_token")
            if r["grant_type"] == "refresh_token"
        ]

    def outbound(self, kind: str) -> list[dict[str, Any]]:
        """The requests the sandbox sent out (webhooks, the button's secrets) of one ``kind``."""
        reply = self.control.get("/_sandbox/outbound", params={"kind": kind})
        assert reply.status_code == 200, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found


@contextlib.contextmanager
def run_sandbox(
    workdir: Path, *, rate_limit: bool = False, accounts: Iterable[str] = ()
) -> Iterator[SandboxServer]:
    """``amobridge sandbox`` on a free port, ready once ``/_sandbox/health`` answers, with an
    account per subdomain in ``accounts``. Its rate limiter is off unless ``rate_limit`` (the
    proofs count requests; the acceptance tier keeps amoCRM's limit on)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(AMOBRIDGE_ENVIRONMENT="test", AMOBRIDGE_LOG_LEVEL="WARNING")
    if not rate_limit:
        env["AMOBRIDGE_SANDBOX__RATE_LIMIT_ENABLED"] = "false"
    process = spawn(
        "sandbox",
        amobridge("sandbox", "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        workdir=workdir,
        ready_url=f"{url}/_sandbox/health",
    )
    try:
        with httpx.Client(base_url=url, timeout=30.0) as control:
            if not rate_limit:
                config = control.patch("/_sandbox/config", json={"rate_limit_enabled": False})
                assert config.status_code == 200, config.text
            server = SandboxServer(url, process, control)
            for subdomain in accounts:
                server.create_account(subdomain)
            yield server
    finally:
        process.stop()
