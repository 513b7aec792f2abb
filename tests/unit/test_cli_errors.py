"""Bad input to ``amobridge`` — a malformed or unreachable database URL, a bad service URL, an
unknown or blank owner, a blank name, a port out of range — ends with one clear ``error:`` line
and a non-zero exit, never a traceback, and never with a password or token in the output."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from amobridge.cli import app
from amobridge.storage.crypto import generate_key


def run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def assert_clean_failure(result: Result, code: int, *expected: str) -> None:
    assert result.exit_code == code, result.output
    # A clean exit is a SystemExit; any other exception would have been a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, result.output


@pytest.fixture(autouse=True)
def _in_a_folder_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMOBRIDGE_SECURITY__SECRET_KEYS", generate_key())


@pytest.mark.parametrize(
    "url", ["nonsense", "mysql://amobridge:s3cret-pw@db.example.com/amobridge", "sqlite:/x.db"]
)
def test_a_database_url_of_no_known_kind(url: str) -> None:
    for args in (["connections", "list"], ["migrate"], ["api-keys", "create", "--name", "ops"]):
        result = run(*args, AMOBRIDGE_DATABASE__URL=url)
        assert_clean_failure(result, 2, "AMOBRIDGE_DATABASE__URL", "sqlite:///", "postgresql://")
        assert "s3cret-pw" not in result.output


def test_an_unreachable_database_names_the_problem_not_the_password() -> None:
    url = "postgresql://amobridge:s3cret-pw@127.0.0.1:1/amobridge"
    result = run("connections", "list", AMOBRIDGE_DATABASE__URL=url)
    assert_clean_failure(result, 1, "database: postgresql", "the database failed")
    assert "127.0.0.1" in result.output
    assert "s3cret-pw" not in result.output


def test_a_database_file_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    url = f"sqlite:///{blocker}/amobridge.db"
    result = run("api-keys", "create", "--name", "ops", AMOBRIDGE_DATABASE__URL=url)
    assert_clean_failure(result, 1, "the database failed")


@pytest.mark.parametrize("name", ["AMOBRIDGE_SERVER__PUBLIC_URL", "AMOBRIDGE_AMO__REDIRECT_URI"])
def test_a_service_url_that_is_not_a_url(name: str) -> None:
    result = run("connections", "list", **{name: "app.example.com/amocrm"})
    assert_clean_failure(result, 2, name, "absolute http:// or https:// URL")


def test_an_unknown_owner() -> None:
    assert run("migrate").exit_code == 0
    result = run("connections", "list", "--owner", "nobody")
    assert_clean_failure(result, 1, "no connection for owner 'nobody'")


def test_a_blank_owner_or_name_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / "backend.env"
    env_file.write_text("AMOCRM_SUBDOMAIN=acme\nAMOCRM_ACCESS_TOKEN=a-long-lived-token\n")
    imported = run("connections", "import-env", str(env_file), "--owner", " ")
    assert_clean_failure(imported, 2, "owner must not be blank")
    assert "a-long-lived-token" not in imported.output
    listed = run("connections", "list", "--owner", "")
    assert_clean_failure(listed, 2, "owner must not be blank")
    created = run("api-keys", "create", "--name", "")
    assert_clean_failure(created, 2, "--name must not be blank")
    assert not (tmp_path / "data").exists()  # refused before any database was opened


def test_a_missing_env_file_and_a_port_out_of_range(tmp_path: Path) -> None:
    missing = run("connections", "import-env", str(tmp_path / "nope.env"))
    assert_clean_failure(missing, 2, "does not exist")
    for args in (["serve", "--port", "0"], ["sandbox", "--port", "70000"]):
        result = run(*args)
        assert_clean_failure(result, 2, "--port")
