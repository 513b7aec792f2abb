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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt

import process_support
from browser_support import require_program
from process_support import Process, SandboxServer, amobridge, clean_env, free_port, spawn

APP_SCHEME = "foryoure"
"""The mobile app's deep-link scheme, allow-listed for every service started here."""

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
"""Where the browser tests leave their screenshots, to be looked at (not committed)."""


def screenshot(page: Any, name: str) -> Path:
    """Save what ``page`` shows as ``artifacts/<name>.png``; its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- the sandbox process -------------------------------------------------------------------------


@contextlib.contextmanager
def run_sandbox(workdir: Path) -> Iterator[SandboxServer]:
    """``amobridge sandbox`` on a free port, with one account, ``acme.amocrm.ru``, and amoCRM's
    rate limit on (as a real account has it)."""
    with process_support.run_sandbox(workdir, rate_limit=True, accounts=["acme"]) as box:
        yield box


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
        """An end user's JWT, as the host app issues it: HS256, the owner in ``sub``."""
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
    box: SandboxServer,
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
        f"{public_url}/amocrm/callback",
        name="amobridge acceptance",
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
    require_program(NGINX, "nginx")


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
