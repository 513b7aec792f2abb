"""``amobridge import`` as an operator runs it: a real process against the sandbox as a real
server, with nothing else running — the command runs the import itself, shows its progress,
says what it read and exits 0; a missing connection is one error line and exit 1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from process_support import amobridge, clean_env, run_sandbox


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own program, argv built here
        amobridge(*args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow  # four amobridge processes and a sandbox server
def test_the_import_command_imports_and_reports(tmp_path: Path) -> None:
    with run_sandbox(tmp_path / "sandbox", accounts=["acme"]) as sandbox:
        account = sandbox.control.get("/_sandbox/accounts").json()[0]
        integration = sandbox.create_integration("https://app.example/callback")
        token = sandbox.post(
            "/_sandbox/long-lived-tokens",
            {"client_id": integration["client_id"], "account_id": account["id"]},
        )["access_token"]
        for start in (0, 250):
            made = sandbox.control.post(
                f"/_sandbox/accounts/{account['id']}/leads",
                json=[{"name": f"lead {i}"} for i in range(start, start + 250)],
            )
            assert made.status_code == 201, made.text
        legacy = tmp_path / "backend.env"
        legacy.write_text(f"AMOCRM_SUBDOMAIN=acme\nAMOCRM_ACCESS_TOKEN={token}\n")
        env = clean_env(
            AMOBRIDGE_DATABASE__URL=f"sqlite:///{tmp_path / 'amobridge.db'}",
            AMOBRIDGE_AMO__API_BASE_URL=sandbox.url,
            AMOBRIDGE_LOG_LEVEL="WARNING",
        )
        connected = _run(tmp_path, env, "connections", "import-env", str(legacy), "--owner", "shop")
        assert connected.returncode == 0, connected.stderr

        done = _run(tmp_path, env, "import", "--owner", "shop")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "succeeded" in done.stdout
        assert "500 leads, 0 contacts" in done.stdout
        assert "Traceback" not in done.stderr
        assert token not in done.stdout + done.stderr

        queued = _run(tmp_path, env, "import", "--owner", "shop", "--no-wait", "--json")
        assert queued.returncode == 0, queued.stderr
        shown = json.loads(queued.stdout)
        assert (shown["state"], shown["kind"], shown["owner"]) == ("queued", "import", "shop")

        missing = _run(tmp_path, env, "import", "--owner", "nobody")
        assert missing.returncode == 1
        assert (
            missing.stderr.strip()
            .splitlines()[-1]
            .startswith("error: no amoCRM connection for this owner")
        )
