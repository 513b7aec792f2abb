"""``/docs`` renders the API reference in a real Chromium with every request outside the service
refused — no CDN is needed (FastAPI's default page was blank offline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acceptance_support import ServiceProcess, run_sandbox, run_service

from browser_support import require_chromium

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    require_chromium()
    root = tmp_path_factory.mktemp("browser-docs")
    with run_sandbox(root / "sandbox") as box, run_service(box, root / "service") as served:
        yield served


def test_the_api_reference_renders_offline(
    page: Any, service: ServiceProcess, tmp_path: Path
) -> None:
    outside: list[str] = []

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(service.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.goto(f"{service.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "amobridge" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector('[data-path="/amocrm/status"]', timeout=15_000)
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
    assert outside == []
