"""The nginx proof: nginx serves the real service under an ``/api`` prefix.

A real nginx (Debian's) runs each ``server`` block of ``docs/deploy-nginx.md`` — read from the doc,
only its two ports changed — in front of ``amobridge serve`` with ``ROOT_PATH=/api`` and
``PUBLIC_URL=http://127.0.0.1:<nginx>/api``. Through it, headless Chromium connects an account
(``/api/amocrm/auth`` → amoCRM's consent → ``/api/amocrm/callback`` → "amoCRM is connected!") and
installs the website button (amoCRM POSTs the keys to ``/api/amocrm/secrets``); ``/api/docs``
works; amoCRM's uninstall hook arrives through the prefix. (A service whose own routes
repeat the prefix behind a proxy that strips it gets a 404 at the first step.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from acceptance_support import (
    Nginx,
    ServiceProcess,
    query_of,
    require_nginx,
    run_nginx,
    run_sandbox,
    run_service,
)

from process_support import SandboxServer as SandboxProcess
from process_support import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy-nginx.md"
STYLES = ("proxy_pass", "rewrite")
DOC_LISTEN = "listen 80;"
DOC_UPSTREAM = "http://127.0.0.1:8000"
PREFIX = "/api"


def doc_block(style: str) -> str:
    """The ```nginx block that follows ``<!-- tested-config: {style} -->`` in the doc."""
    found = re.search(
        rf"<!-- tested-config: {re.escape(style)} -->\n```nginx\n(.*?)\n```",
        DOC.read_text(),
        re.DOTALL,
    )
    assert found is not None, f"docs/deploy-nginx.md has no tested-config block {style!r}"
    return found.group(1)


def local_config(block: str, *, listen_port: int, service_port: int) -> str:
    """The doc's block with its two ports made local; nothing else may differ."""
    assert block.count(DOC_LISTEN) == 1, f"the doc's block must contain {DOC_LISTEN!r} once"
    assert block.count(DOC_UPSTREAM) == 1, f"the doc's block must proxy to {DOC_UPSTREAM} once"
    return block.replace(DOC_LISTEN, f"listen 127.0.0.1:{listen_port};").replace(
        DOC_UPSTREAM, f"http://127.0.0.1:{service_port}"
    )


@dataclass
class Backend:
    box: SandboxProcess
    service: ServiceProcess
    nginx_port: int
    root: Path


@dataclass
class Edge:
    """nginx (one of the doc's configs) in front of the service."""

    style: str
    nginx: Nginx
    backend: Backend

    @property
    def api(self) -> str:
        return f"{self.nginx.url}{PREFIX}"

    @property
    def box(self) -> SandboxProcess:
        return self.backend.box

    @property
    def service(self) -> ServiceProcess:
        return self.backend.service

    def owner(self, name: str) -> str:
        return f"nginx-{self.style}-{name}"

    def bearer(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service.user_token(owner)}"}

    def status(self, owner: str) -> dict[str, Any]:
        """``/api/amocrm/status`` through nginx."""
        reply = httpx.get(f"{self.api}/amocrm/status", headers=self.bearer(owner))
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()
        return found


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    require_nginx()
    root = tmp_path_factory.mktemp("nginx")
    nginx_port, service_port = free_port(), free_port()
    with (
        run_sandbox(root / "sandbox") as box,
        run_service(
            box,
            root / "service",
            port=service_port,
            public_url=f"http://127.0.0.1:{nginx_port}{PREFIX}",
            root_path=PREFIX,
        ) as service,
    ):
        yield Backend(box, service, nginx_port, root)


@pytest.fixture(scope="module", params=STYLES)
def edge(request: pytest.FixtureRequest, backend: Backend) -> Iterator[Edge]:
    style: str = request.param
    service_port = int(backend.service.url.rsplit(":", 1)[1])
    block = local_config(
        doc_block(style), listen_port=backend.nginx_port, service_port=service_port
    )
    with run_nginx(
        block, backend.root / f"nginx-{style}", port=backend.nginx_port, ready_path="/api/healthz"
    ) as nginx:
        yield Edge(style, nginx, backend)


@pytest.mark.browser
def test_redirect_flow_through_the_prefix(page: Any, edge: Edge) -> None:
    owner = edge.owner("redirect")
    token = edge.service.user_token(owner)
    page.goto(f"{edge.api}/amocrm/auth?" + urlencode({"token": token}))
    page.wait_for_url(f"{edge.box.url}/oauth?**")
    page.click("#allow")
    page.wait_for_url(f"{edge.api}/amocrm/callback?**")
    assert page.inner_text("#result") == "amoCRM is connected!"
    assert "acme.amocrm.ru" in page.inner_text("main")

    status = edge.status(owner)
    assert status["connected"] is True
    assert status["domain"] == "acme.amocrm.ru"
    # Both legs really went through nginx, under the prefix.
    log = edge.nginx.access_log()
    assert '"GET /api/amocrm/auth?token=' in log
    assert '"GET /api/amocrm/callback?code=' in log


@pytest.mark.browser
def test_website_button_through_the_prefix(page: Any, edge: Edge) -> None:
    owner = edge.owner("button")
    page.goto(f"{edge.api}/amocrm/connect?" + urlencode({"token": edge.service.user_token(owner)}))
    tag = page.locator("script.amocrm_oauth")
    assert tag.get_attribute("data-redirect_uri") == f"{edge.api}/amocrm/callback"
    assert tag.get_attribute("data-secrets_uri") == f"{edge.api}/amocrm/secrets"
    state = tag.get_attribute("data-state")
    with page.expect_popup() as opened:
        page.click("button.amocrm_oauth_button")
    popup = opened.value
    popup.wait_for_load_state()
    popup.click("#allow")
    page.wait_for_url(f"{edge.api}/amocrm/callback?**")
    assert page.inner_text("#result") == "amoCRM is connected!"

    posted = [e for e in edge.box.outbound("secrets") if e["state"] == state]
    assert [(e["url"], e["status"]) for e in posted] == [(f"{edge.api}/amocrm/secrets", 200)]
    assert '"POST /api/amocrm/secrets ' in edge.nginx.access_log()
    assert edge.status(owner)["connected"] is True


def test_docs_and_redirects_keep_the_prefix(edge: Edge) -> None:
    with httpx.Client(base_url=edge.api) as http:
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "'/api/openapi.json'" in docs.text or '"/api/openapi.json"' in docs.text
        schema = http.get("/openapi.json")
        assert schema.status_code == 200
        assert schema.json()["servers"] == [{"url": PREFIX}]
        assert {"/amocrm/auth", "/amocrm/callback", "/amocrm/secrets"} <= set(
            schema.json()["paths"]
        )

        # The service's own redirects keep the prefix (a 307 to /amocrm/status would be
        # nginx's 404: the doubled-prefix bug from the other side).
        slash = http.get("/amocrm/status/", headers=edge.bearer(edge.owner("docs")))
        assert slash.status_code == 307
        assert slash.headers["location"] == f"{edge.api}/amocrm/status"

        # The doc's deployment check: the secrets webhook answers with amobridge's JSON.
        probe = http.post("/amocrm/secrets", content=b"{}")
        assert probe.status_code == 400
        assert "client_id" in probe.json()["detail"]

    # A proxy that forwards the prefix instead of stripping it reaches the same routes.
    assert edge.service.http.get(f"{PREFIX}/healthz").status_code == 200
    assert edge.service.http.get("/healthz").status_code == 200


def test_uninstall_hook_through_the_prefix(edge: Edge) -> None:
    """amoCRM's disconnect hook, a signed GET, reaches ``/api/amocrm/uninstall`` through nginx and
    disconnects the account's connections of that integration."""
    owner = edge.owner("uninstall")
    with httpx.Client(base_url=edge.api) as http:
        start = http.get("/amocrm/auth", params={"format": "json"}, headers=edge.bearer(owner))
        assert start.status_code == 200, start.text
        # Opened as a browser would: the flow is bound to this client, which calls back.
        hop = http.get(start.json()["url"])
        assert hop.status_code == 302, hop.text
        client_id = edge.service.integration["client_id"]
        account_id = edge.box.control.get("/_sandbox/accounts").json()[0]["id"]
        consent = edge.box.control.post(
            "/_sandbox/authorize",
            json={
                "client_id": client_id,
                "account_id": account_id,
                "state": query_of(hop.headers["location"])["state"],
            },
        )
        landing = consent.json()["redirect_url"]
        assert landing.startswith(f"{edge.api}/amocrm/callback?")
        assert http.get(landing).status_code == 200
    assert edge.status(owner)["connected"] is True

    hook = edge.box.control.post(
        f"/_sandbox/integrations/{client_id}/uninstall", json={"account_id": account_id}
    )
    assert hook.status_code == 200, hook.text
    assert hook.json()["disconnect"] == {"status": 200}
    assert '"GET /api/amocrm/uninstall?account_id=' in edge.nginx.access_log()
    status = edge.status(owner)
    assert status["connected"] is False
    assert status["status"] == "disconnected"
