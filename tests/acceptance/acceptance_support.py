"""Helpers of the acceptance tier: the real programs, as an operator runs them.

``amobridge sandbox`` (the fake amoCRM) and ``amobridge serve`` (the service) run as separate
processes (``python -m amobridge …``) on free loopback ports, each with its own environment and
working directory (so no developer ``.env`` or ``AMOBRIDGE_*`` variable leaks in), and are killed
afterwards. Debian's headless Chromium drives them through Playwright; ``test_nginx.py`` puts a
real nginx in front of the service.

The test modules start them in module-scoped fixtures, so a module pays for one sandbox, one
service and one browser (``conftest.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from _services import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 15_000
START_DEADLINE = 30.0
"""Seconds a process gets to answer its health URL (migrations included)."""
STOP_DEADLINE = 10.0
APP_SCHEME = "foryoure"
"""The mobile app's deep-link scheme (seed 003), allow-listed for every service started here."""


def require_chromium() -> None:
    """Skip locally without Debian's chromium; under CI a missing browser is a failure."""
    if os.access(CHROMIUM, os.X_OK):
        return
    message = f"Debian's chromium is needed at {CHROMIUM} (make system-deps)"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so a missing browser is a failure, not a skip")
    pytest.skip(message)


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


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process with its output in a log file; :meth:`stop` ends it (and only it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_DEADLINE)


def spawn(
    name: str, argv: list[str], *, env: Mapping[str, str], workdir: Path, ready_url: str
) -> Process:
    """Start ``argv`` and poll ``ready_url`` until it answers 200 (or fail with its log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
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
            time.sleep(0.05)  # polling interval while waiting for the port, under a deadline


def amobridge(*args: str) -> list[str]:
    return [sys.executable, "-m", "amobridge", *args]


# --- the sandbox process -------------------------------------------------------------------------


@dataclass
class SandboxProcess:
    url: str
    process: Process
    control: httpx.Client

    def create_account(self, subdomain: str) -> dict[str, Any]:
        reply = self.control.post("/_sandbox/accounts", json={"subdomain": subdomain})
        assert reply.status_code == 201, reply.text
        found: dict[str, Any] = reply.json()
        return found

    def create_integration(self, name: str, redirect_uri: str, **extra: Any) -> dict[str, Any]:
        reply = self.control.post(
            "/_sandbox/integrations", json={"name": name, "redirect_uri": redirect_uri, **extra}
        )
        assert reply.status_code == 201, reply.text
        found: dict[str, Any] = reply.json()
        return found

    def outbound(self, kind: str) -> list[dict[str, Any]]:
        reply = self.control.get("/_sandbox/outbound", params={"kind": kind})
        assert reply.status_code == 200, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found

    def token_exchanges(self) -> list[dict[str, Any]]:
        reply = self.control.get(
            "/_sandbox/requests", params={"path_prefix": "/oauth2/access_token"}
        )
        assert reply.status_code == 200, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found


@contextlib.contextmanager
def run_sandbox(workdir: Path) -> Iterator[SandboxProcess]:
    """``amobridge sandbox`` on a free port, with one account, ``acme.amocrm.ru``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = spawn(
        "sandbox",
        amobridge("sandbox", "--host", "127.0.0.1", "--port", str(port)),
        env=clean_env(AMOBRIDGE_ENVIRONMENT="test", AMOBRIDGE_LOG_LEVEL="WARNING"),
        workdir=workdir,
        ready_url=f"{url}/_sandbox/health",
    )
    try:
        with httpx.Client(base_url=url, timeout=10.0) as control:
            box = SandboxProcess(url, process, control)
            box.create_account("acme")
            yield box
    finally:
        process.stop()


# --- the service process -------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """``amobridge serve``: ``url`` is where it listens, ``public_url`` how browsers reach it."""

    url: str
    public_url: str
    database: Path
    process: Process
    jwt_secret: str
    integration: dict[str, Any]
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def user_token(self, owner: str) -> str:
        """An end user's JWT (seed 003): HS256, the owner in ``sub``."""
        payload = {"sub": owner, "exp": int(time.time()) + 3600}
        return jwt.encode(payload, self.jwt_secret, algorithm="HS256")

    def status(self, owner: str) -> dict[str, Any]:
        reply = self.http.get(
            "/amocrm/status", headers={"Authorization": f"Bearer {self.user_token(owner)}"}
        )
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()
        return found

    def expire_state(self, state: str) -> None:
        """Age the stored ``state`` past its expiry, in the service's own database file (the
        service runs on real time; its ``oauth_states`` row is what the callback checks)."""
        from sqlalchemy import create_engine, update

        from amobridge.storage.tables import OAuthState

        engine = create_engine(f"sqlite:///{self.database}")
        try:
            with engine.begin() as conn:
                changed = conn.execute(
                    update(OAuthState)
                    .where(OAuthState.id == hashlib.sha256(state.encode()).hexdigest())
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                ).rowcount
        finally:
            engine.dispose()
        assert changed == 1, "the state was not stored by the service"

    def close(self) -> None:
        self.http.close()
        self.process.stop()


@contextlib.contextmanager
def run_service(
    box: SandboxProcess,
    workdir: Path,
    *,
    public_url: str | None = None,
    port: int | None = None,
    root_path: str = "",
    **settings: str,
) -> Iterator[ServiceProcess]:
    """``amobridge serve`` wired to ``box``: a fresh SQLite database, its own encryption key and
    JWT secret, and an integration created in the sandbox whose redirect URI is the service's
    callback (``{public_url}/amocrm/callback``) and whose disconnect hook is its uninstall URL.
    ``settings`` are more ``AMOBRIDGE_*`` values, by their name without the prefix."""
    from amobridge.storage.crypto import generate_key

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    public_url = public_url or url
    integration = box.create_integration(
        "amobridge acceptance",
        f"{public_url}/amocrm/callback",
        disconnect_url=f"{public_url}/amocrm/uninstall",
    )
    database = workdir / "amobridge.db"
    jwt_secret = secrets.token_urlsafe(32)
    env = clean_env(
        AMOBRIDGE_ENVIRONMENT="test",
        AMOBRIDGE_LOG_LEVEL="INFO",
        AMOBRIDGE_DATABASE__URL=f"sqlite:///{database}",
        AMOBRIDGE_SECURITY__SECRET_KEYS=generate_key(),
        AMOBRIDGE_SECURITY__JWT_SECRET=jwt_secret,
        AMOBRIDGE_AMO__CLIENT_ID=integration["client_id"],
        AMOBRIDGE_AMO__CLIENT_SECRET=integration["client_secret"],
        AMOBRIDGE_AMO__AUTHORIZE_URL=f"{box.url}/oauth",
        AMOBRIDGE_AMO__BUTTON_SCRIPT_URL=f"{box.url}/auth/button.min.js",
        AMOBRIDGE_AMO__API_BASE_URL=box.url,
        AMOBRIDGE_SERVER__PUBLIC_URL=public_url,
        AMOBRIDGE_SERVER__ROOT_PATH=root_path,
        AMOBRIDGE_SERVER__RUN_WORKERS="false",
        AMOBRIDGE_MOBILE__ALLOWED_SCHEMES=APP_SCHEME,
        **{f"AMOBRIDGE_{name}": value for name, value in settings.items()},
    )
    process = spawn(
        "service",
        amobridge("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        workdir=workdir,
        ready_url=f"{url}/healthz",
    )
    service = ServiceProcess(url, public_url, database, process, jwt_secret, integration)
    try:
        yield service
    finally:
        service.close()


# --- nginx ---------------------------------------------------------------------------------------

NGINX = "/usr/sbin/nginx"

# Everything outside the `server` block: what a test needs to run nginx without root-owned
# paths (pid, logs and temp files under its own directory) and in the foreground.
NGINX_HARNESS = """\
{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

{server}
}}
"""


def require_nginx() -> None:
    """Skip locally without Debian's nginx; under CI a missing nginx is a failure."""
    if os.access(NGINX, os.X_OK):
        return
    message = f"Debian's nginx is needed at {NGINX} (make system-deps)"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so a missing nginx is a failure, not a skip")
    pytest.skip(message)


@dataclass
class Nginx:
    url: str
    root: Path
    process: Process

    def access_log(self) -> str:
        path = self.root / "access.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""


@contextlib.contextmanager
def run_nginx(server_block: str, root: Path, *, port: int, ready_path: str) -> Iterator[Nginx]:
    """A real nginx with ``server_block`` inside :data:`NGINX_HARNESS`, in the foreground, all
    its files under ``root``; ready once ``ready_path`` answers 200 through it."""
    import pwd

    root.mkdir(parents=True, exist_ok=True)
    # As root, workers would switch to "nobody", who cannot enter pytest's private temp dir.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    config = root / "nginx.conf"
    config.write_text(NGINX_HARNESS.format(user=user, root=root, server=server_block))
    url = f"http://127.0.0.1:{port}"
    process = spawn(
        "nginx",
        [NGINX, "-p", str(root), "-e", str(root / "error.log"), "-c", str(config)],
        env=clean_env(),
        workdir=root,
        ready_url=f"{url}{ready_path}",
    )
    try:
        yield Nginx(url, root, process)
    finally:
        process.stop()
