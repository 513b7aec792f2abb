from __future__ import annotations

import pytest
from typer.testing import CliRunner

from amobridge import __version__
from amobridge.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "sandbox" in result.output
    assert "version" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_bad_settings_give_message_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOBRIDGE_SANDBOX__CONTROL_TOKEN", "changeme")
    result = runner.invoke(app, ["sandbox", "--port", "1"])
    assert result.exit_code == 2
    assert "AMOBRIDGE_SANDBOX__CONTROL_TOKEN" in result.output
