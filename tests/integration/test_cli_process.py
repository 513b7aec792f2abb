"""``amobridge`` as a person runs it: a real process in a folder of its own, with no
``AMOBRIDGE_*`` variable set — the development key, the database it reads, what it prints.

Without AMOBRIDGE_SECURITY__SECRET_KEYS, development uses a key kept in the data directory and
says so: once per process, and only from a command that encrypts or decrypts something. A command
that never touches a secret (``version``, ``--help``, ``api-keys create``, ``connections list``)
neither prints the warning nor writes the key file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from process_support import clean_env

WARNING = "using the development key"


def amobridge(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own program, argv built here
        [sys.executable, "-m", "amobridge", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def legacy_env(folder: Path) -> Path:
    path = folder / "backend.env"
    path.write_text("AMOCRM_SUBDOMAIN=acme\nAMOCRM_ACCESS_TOKEN=a-long-lived-token\n")
    return path


def test_commands_that_use_no_key_print_no_warning(tmp_path: Path) -> None:
    for args in (["version"], ["--help"], ["connections", "--help"], ["keys", "generate"]):
        done = amobridge(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        assert WARNING not in done.stderr + done.stdout, args
    created = amobridge(tmp_path, "api-keys", "create", "--name", "ops")
    assert created.returncode == 0, created.stderr
    assert WARNING not in created.stderr
    listed = amobridge(tmp_path, "connections", "list")
    assert listed.returncode == 0, listed.stderr
    assert WARNING not in listed.stderr
    assert not (tmp_path / "data" / "dev-secret.key").exists()


def test_a_command_that_encrypts_warns_exactly_once(tmp_path: Path) -> None:
    done = amobridge(tmp_path, "connections", "import-env", str(legacy_env(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(WARNING) == 1, done.stderr
    key_file = tmp_path / "data" / "dev-secret.key"
    assert str(key_file) in done.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "a-long-lived-token" not in done.stdout + done.stderr
    # The next process reads the same key (and says so again, once).
    again = amobridge(tmp_path, "connections", "import-env", str(legacy_env(tmp_path)))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count(WARNING) == 1, again.stderr


def test_a_database_that_cannot_be_opened_is_one_error_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    for url in (
        f"sqlite:///{blocker}/amobridge.db",
        "postgresql://amobridge:s3cret-pw@127.0.0.1:1/amobridge",
    ):
        done = amobridge(tmp_path, "migrate", AMOBRIDGE_DATABASE__URL=url)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert "error: the database failed" in done.stderr
        assert "s3cret-pw" not in done.stderr
        assert done.stderr.startswith("database: ")


def test_a_read_only_command_in_another_folder_creates_no_database(tmp_path: Path) -> None:
    done = amobridge(tmp_path, "connections", "list")
    assert done.returncode == 1
    expected = tmp_path.resolve() / "data" / "amobridge.db"
    assert done.stderr.splitlines() == [
        f"database: sqlite:///{expected}",
        f"error: no database at {expected} — run from the folder where the service runs, or set "
        "AMOBRIDGE_DATABASE__URL to its absolute path (sqlite:////srv/amobridge/data/amobridge.db)",
    ]
    assert not (tmp_path / "data").exists()


HEAVY = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "httpx", "amobridge.services")
LIST_AND_REPORT_IMPORTS = """
import sys
sys.argv = ["amobridge", "connections", "list"]
from amobridge.cli import main
try:
    main()
except SystemExit:
    pass
print("heavy:", ",".join(m for m in %r if m in sys.modules), file=sys.stderr)
"""


def test_listing_a_sqlite_database_imports_nothing_heavy(tmp_path: Path) -> None:
    """What keeps `connections list` fast (a fraction of a second instead of seconds): it reads
    the SQLite file with sqlite3 and imports neither SQLAlchemy nor the service."""
    assert amobridge(tmp_path, "migrate").returncode == 0
    done = subprocess.run(  # noqa: S603 - our own program
        [sys.executable, "-c", LIST_AND_REPORT_IMPORTS % (HEAVY,)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "no connections" in done.stdout, done.stderr
    assert "heavy: \n" in done.stderr, done.stderr
