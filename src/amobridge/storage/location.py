"""Where a database URL points, read without SQLAlchemy: the CLI names its database on every
command, and a command as light as ``amobridge connections list`` should not pay for importing
SQLAlchemy just to say where it reads.

The default URL, ``sqlite:///./data/amobridge.db``, is relative to the working folder: a command
run from another folder reads (or creates) another database, so the CLI always shows the file
made absolute.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

# SQLAlchemy's URL form: name[+driver]://[user[:password]@][host[:port]][/database][?query].
_SQLITE = re.compile(r"^sqlite(?:\+\w+)?://(?P<rest>.*)$", re.DOTALL)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL as written (relative to the working folder when relative), or
    None for another database and for an in-memory one. Reads the path as SQLAlchemy's
    ``make_url(url).database`` does (percent-decoded, the query left out)."""
    match = _SQLITE.match(url.strip())
    if match is None:
        return None
    rest = match["rest"]
    slash = rest.find("/")
    if slash < 0:
        return None  # sqlite:// — in memory
    database = unquote(rest[slash + 1 :].split("?", 1)[0])
    if database in ("", ":memory:"):
        return None
    return Path(database)


def is_sqlite(url: str) -> bool:
    return _SQLITE.match(url.strip()) is not None


def shown_database(url: str) -> str:
    """The URL as the CLI prints it: a SQLite file as an absolute path, any password masked."""
    path = sqlite_file(url)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    if is_sqlite(url):
        return "sqlite:// (in memory)"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"
