"""How long the ``amobridge`` command takes, as a person runs it: a fresh process each time.

Target: ``amobridge connections list`` on a small SQLite database (``--connections`` rows, 20 by
default) answers in **< 1.5 s** (median wall time of ``--runs`` runs). ``version``, ``--help`` and
``connections list --json`` are timed alongside, for comparison.

How: a temp folder with a migrated SQLite database and a key from the environment (no development
key), the connections imported in-process; then each command runs ``--runs`` times as
``python -m amobridge …`` in that folder with a clean environment, after one unmeasured run
(so the timings include imports but not a cold disk cache). Prints a table, writes
``bench/results/cli.json`` and returns 0 when the target is met.

    python bench/cli.py [--runs 7] [--connections 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import write_result
from amobridge.services import Services
from amobridge.settings import Settings
from amobridge.storage.crypto import generate_key

TARGET_SECONDS = 1.5
RESULTS = Path(__file__).resolve().parent / "results" / "cli.json"
COMMANDS = {
    "version": ["version"],
    "--help": ["--help"],
    "connections list": ["connections", "list"],
    "connections list --json": ["connections", "list", "--json"],
}


async def seed(url: str, key: str, count: int) -> None:
    settings = Settings(database={"url": url}, security={"secret_keys": [key]})
    services = Services.build(settings)
    await services.start(workers=False)
    try:
        async with services.db.transaction() as session:
            for index in range(count):
                await services.connect.import_tokens(
                    session,
                    f"owner-{index}",
                    domain=f"school{index}.amocrm.ru",
                    access_token=f"a-long-lived-token-{index}",
                    refresh_token=None,
                    expires_in=86400,
                    client_id=None,
                    client_secret=None,
                    redirect_uri=None,
                )
    finally:
        await services.stop()


def timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(  # noqa: S603 - our own program
        [sys.executable, "-m", "amobridge", *args],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args(argv)
    key = generate_key()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        url = f"sqlite:///{workdir}/data/amobridge.db"
        asyncio.run(seed(url, key, args.connections))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMOBRIDGE_")}
        env |= {"AMOBRIDGE_DATABASE__URL": url, "AMOBRIDGE_SECURITY__SECRET_KEYS": key}
        times: dict[str, list[float]] = {}
        for name, command in COMMANDS.items():
            timed(command, env, workdir)  # unmeasured: the disk cache, not the code
            times[name] = [timed(command, env, workdir) for _ in range(args.runs)]
    medians = {name: statistics.median(runs) for name, runs in times.items()}
    passed = medians["connections list"] < TARGET_SECONDS
    rows = [f"{'command':<26}{'median':>9}{'min':>8}{'max':>8}"]
    for name, runs in times.items():
        rows.append(f"{name:<26}{medians[name]:>8.2f}s{min(runs):>7.2f}s{max(runs):>7.2f}s")
    rows.append(
        f"target: connections list < {TARGET_SECONDS} s "
        f"({args.connections} connections) {'✔' if passed else '✘'}"
    )
    result: dict[str, Any] = {
        "target_seconds": TARGET_SECONDS,
        "connections": args.connections,
        "runs": times,
        "medians": medians,
        "load_average_1m": os.getloadavg()[0],
        "python_dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "passed": passed,
    }
    return write_result(RESULTS, result, "\n".join(rows))


if __name__ == "__main__":
    raise SystemExit(main())
