"""The crash proof of the lead push, shared by ``test_leads_crash.py`` and ``bench/crash.py``.

Everything runs as an operator runs it, each in a process of its own: the sandbox amoCRM
(``amobridge sandbox``, rate limit on), ``amobridge serve`` with its in-process workers off, and
``workers`` separate ``amobridge worker`` processes on the same database. Leads are POSTed to
``/leads`` while the workers push them; meanwhile, ``kills`` times (see :class:`Schedule`), the
worker holding running push jobs is killed with SIGKILL a random moment into its run (no shutdown
code runs: its leases run out, another worker takes its jobs over) and started again. Then
``crash_count.py`` reads the sandbox's account through API v4 (250 a page) and the service's
database with SQL, and :class:`~crash_count.CrashResult` says whether the invariant held: every
lead posted is in amoCRM exactly once, with its expected contact; the contacts shared by several
leads exist once; every local row is ``synced``; every kill was done.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from crash_count import (
    OWNER,
    CrashResult,
    Local,
    count_local,
    count_sandbox,
    count_worker_logs,
    expected_contacts,
    lead_body,
)

from process_support import (
    START_DEADLINE,
    Process,
    SandboxServer,
    amobridge,
    clean_env,
    free_port,
    run_sandbox,
    spawn,
)

HOLD_WAIT = 10.0
IN_RUN = 0.4
WORKER_READY = "running"  # `amobridge worker` says "worker … running N at a time" once started


@dataclass
class CrashConfig:
    leads: int = 300
    kills: int = 3
    workers: int = 2
    share_every: int = 10  # every n-th lead gives the previous lead's contact
    rate_limit_rps: int = 7  # the sandbox's limit (amoCRM's); 0 turns it off
    lease_seconds: float = 2.0  # how soon a killed worker's jobs are taken over
    # How long a taken-over create waits for a request its last worker may still be sending
    # (75 s by default): the sandbox answers within a second, so 10 s keeps the proof short and
    # still covers a worker that stalled past its 2 s lease.
    in_flight_seconds: float = 10.0
    posters: int = 2  # concurrent POST /leads clients
    deadline: float = 600.0  # seconds for the whole push, kills included


class Workers:
    """``amobridge worker`` processes, killed and started again by slot."""

    def __init__(self, env: dict[str, str], workdir: Path, count: int) -> None:
        self.env = env
        self.workdir = workdir
        self.slots: list[Process | None] = [None] * count
        self.started = 0

    def start(self, *slots: int) -> None:
        """Start a worker in each of ``slots`` at once; back once every one of them runs."""
        launched = [(slot, self._launch(slot)) for slot in slots]
        for slot, process in launched:
            self.slots[slot] = process  # stopped at the end even if it never gets ready
        for _, process in launched:
            until = time.monotonic() + START_DEADLINE
            while WORKER_READY not in process.log():
                if process.popen.poll() is not None:
                    raise RuntimeError(
                        f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                    )
                if time.monotonic() > until:
                    raise RuntimeError(f"{process.name} did not start in time:\n{process.tail()}")
                time.sleep(0.05)  # polling its log under a deadline: it has no health URL

    def _launch(self, slot: int) -> Process:
        self.started += 1
        name = f"worker-{slot}-{self.started}"
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(  # noqa: S603 - our own program
                amobridge("worker"), env=self.env, cwd=self.workdir, stdout=log, stderr=log
            )
        return Process(name, popen, log_path)

    def kill(self, slot: int) -> int:
        process = self.slots[slot]
        assert process is not None
        pid = process.popen.pid
        process.kill()
        assert process.popen.returncode == -9, process.popen.returncode
        self.slots[slot] = None
        return pid

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.workdir.glob("worker-*.log"))

    def stop(self) -> None:
        for process in self.slots:
            if process is not None:
                process.stop()


def service_env(database_url: str, sandbox_url: str, config: CrashConfig) -> dict[str, str]:
    from amobridge.auth.service import new_api_key
    from amobridge.storage.crypto import generate_key

    admin_key, _ = new_api_key()
    return clean_env(
        AMOBRIDGE_ENVIRONMENT="production",
        AMOBRIDGE_LOG_LEVEL="INFO",
        AMOBRIDGE_DATABASE__URL=database_url,
        AMOBRIDGE_SECURITY__SECRET_KEYS=generate_key(),
        AMOBRIDGE_SECURITY__ADMIN_API_KEY=admin_key,
        AMOBRIDGE_SERVER__RUN_WORKERS="false",
        AMOBRIDGE_AMO__API_BASE_URL=sandbox_url,
        AMOBRIDGE_AMO__RATE_LIMIT_RPS=str(config.rate_limit_rps or 7),
        AMOBRIDGE_WEBHOOKS__AUTO_SUBSCRIBE="false",
        # Every contact of this account comes through amobridge: deduplicated against the
        # mirror, no contact search in amoCRM (4 searches a contact would take 10,000 leads
        # past an hour at 7 requests/second).
        AMOBRIDGE_SYNC__MIRROR_AUTHORITATIVE="true",
        AMOBRIDGE_JOBS__LEASE_SECONDS=f"{config.lease_seconds:g}",
        AMOBRIDGE_SYNC__IN_FLIGHT_SECONDS=f"{config.in_flight_seconds:g}",
    )


def create_app_key(env: dict[str, str], workdir: Path) -> str:
    done = subprocess.run(  # noqa: S603 - our own program
        amobridge("api-keys", "create", "--name", "crash", "--role", "app"),
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"amobridge api-keys create failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Account:
    id: int
    host: str
    token: str  # the service's long-lived token
    auditor: str  # another integration's token: counting does not spend the service's pace


def make_account(sandbox: SandboxServer, run: str) -> Account:
    made = sandbox.create_account(f"crash{run}")
    tokens = []
    for name in ("amobridge crash", "crash auditor"):
        integration = sandbox.create_integration("https://crash.example/callback", name=name)
        body = {"client_id": integration["client_id"], "account_id": made["id"]}
        tokens.append(sandbox.post("/_sandbox/long-lived-tokens", body)["access_token"])
    return Account(made["id"], made["host"], tokens[0], tokens[1])


def connect(base: str, env: dict[str, str], account: Account) -> None:
    admin = env["AMOBRIDGE_SECURITY__ADMIN_API_KEY"]
    made = httpx.post(
        f"{base}/amocrm/tokens",
        headers={"Authorization": f"Bearer {admin}"},
        json={"owner": OWNER, "domain": account.host, "access_token": account.token},
        timeout=30,
    )
    if made.status_code != 201:
        raise RuntimeError(f"POST /amocrm/tokens answered {made.status_code}: {made.text[:300]}")


# --- the proof ---------------------------------------------------------------------------------


class Schedule:
    """When the kills come: kill ``k`` once ``at[k]`` POSTs have started (a random point of the
    ``k``-th of ``kills + 1`` equal parts of the posting), and no POST past ``gate[k]`` (the next
    kill's point) starts before kill ``k`` is done — so every kill comes while leads
    are still arriving and being pushed, however slowly this machine starts a worker."""

    def __init__(self, leads: int, kills: int, rng: random.Random) -> None:
        part = leads / (kills + 1)
        self.at = [int(part * (k + 1 + rng.uniform(-0.4, 0.4))) for k in range(kills)]
        # The last kill's gate keeps the last quarter of a part back: work to interrupt.
        self.gate = [*self.at[1:], leads - int(part / 4)]
        self.started = 0
        self.kills_done = 0
        self.changed = threading.Condition()

    def ticket(self) -> None:
        """Before a POST: wait while it would pass the gate of a kill not done yet."""
        with self.changed:
            while self.kills_done < len(self.gate) and self.started >= self.gate[self.kills_done]:
                self.changed.wait(1.0)
            self.started += 1
            self.changed.notify_all()

    def wait_for(self, kill: int, deadline: float) -> None:
        with self.changed:
            until = time.monotonic() + deadline
            while self.started < self.at[kill] and time.monotonic() < until:
                self.changed.wait(1.0)

    def killed(self) -> None:
        with self.changed:
            self.kills_done += 1
            self.changed.notify_all()


def post_all(
    base: str,
    app_key: str,
    run: str,
    config: CrashConfig,
    result: CrashResult,
    schedule: Schedule,
) -> None:
    """POST every lead, ``posters`` clients at once, each a contiguous block (a lead that shares
    a contact comes right after the one that gave it, from the same client)."""
    headers = {"Authorization": f"Bearer {app_key}"}
    lock = threading.Lock()

    def block(start: int, end: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for index in range(start, end):
                schedule.ticket()
                reply = client.post("/leads", json=lead_body(run, index, config.share_every))
                with lock:
                    if reply.status_code == 201:
                        result.leads_posted += 1
                    else:
                        result.post_errors += 1

    size = -(-config.leads // config.posters)
    with ThreadPoolExecutor(config.posters) as pool:
        futures = [
            pool.submit(block, start, min(config.leads, start + size))
            for start in range(0, config.leads, size)
        ]
        for future in futures:
            future.result()


def kill_loop(
    workers: Workers,
    local: Local,
    config: CrashConfig,
    result: CrashResult,
    schedule: Schedule,
    rng: random.Random,
) -> None:
    """Each kill of the schedule: the worker holding running push jobs (waited for up to
    ``HOLD_WAIT`` s, else a random one), killed a random moment (up to ``IN_RUN`` s) into its
    run, then started again."""
    for kill in range(config.kills):
        schedule.wait_for(kill, config.deadline)
        began = time.monotonic()
        slot, held = _holder_in_run(workers, local, rng)
        if slot is None:
            slot = rng.randrange(len(workers.slots))
        workers.kill(slot)
        result.kills_done += 1
        result.kills_holding_jobs += held > 0
        result.kill_log.append(
            {
                "posts_started": schedule.started,
                "jobs_held": held,
                "waited_s": round(time.monotonic() - began, 2),
            }
        )
        schedule.killed()
        workers.start(slot)


def _holder_in_run(workers: Workers, local: Local, rng: random.Random) -> tuple[int | None, int]:
    """A worker's slot a random moment into a run of push jobs, and how many it holds then."""
    until = time.monotonic() + HOLD_WAIT
    while time.monotonic() < until:
        holders = local.holders()
        for slot, process in enumerate(workers.slots):
            if process is not None and process.popen.pid in holders:
                time.sleep(rng.uniform(0.0, IN_RUN))
                held = local.held_by(process.popen.pid)
                if held:
                    return slot, held
        time.sleep(0.02)  # polling the queue for a claim, under a deadline
    return None, 0


@contextlib.contextmanager
def crash_stack(database_url: str, workdir: Path, config: CrashConfig) -> Iterator[dict[str, Any]]:
    """The sandbox, the service (connected owner, app key) and the workers, running."""
    with run_sandbox(workdir / "sandbox", rate_limit=config.rate_limit_rps > 0) as sandbox:
        if config.rate_limit_rps:
            limit = sandbox.control.patch(
                "/_sandbox/config", json={"rate_limit_rps": config.rate_limit_rps}
            )
            assert limit.status_code == 200, limit.text
        run = uuid.uuid4().hex[:8]
        account = make_account(sandbox, run)
        env = service_env(database_url, sandbox.url, config)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        service = spawn(
            "service",
            amobridge("serve", "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            workdir=workdir,
            ready_url=f"{base}/healthz",
        )
        workers = Workers(env, workdir, config.workers)
        try:
            connect(base, env, account)
            with ThreadPoolExecutor(1) as aside:  # a process of its own too: meanwhile
                key = aside.submit(create_app_key, env, workdir)
                workers.start(*range(config.workers))
                app_key = key.result()
            yield {
                "sandbox": sandbox,
                "account": account,
                "run": run,
                "base": base,
                "app_key": app_key,
                "workers": workers,
            }
        finally:
            workers.stop()
            service.stop()


def run_crash(
    database: str,
    database_url: str,
    workdir: Path,
    config: CrashConfig,
    *,
    seed: int | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> CrashResult:
    result = CrashResult(database, kills_requested=config.kills)
    result.contacts_expected = expected_contacts(config.leads, config.share_every)
    rng = random.Random(seed)
    local = Local(database_url)
    try:
        with crash_stack(database_url, workdir, config) as stack:
            workers: Workers = stack["workers"]
            started = time.monotonic()
            schedule = Schedule(config.leads, config.kills, rng)
            with ThreadPoolExecutor(1) as background:
                posting = background.submit(
                    post_all,
                    stack["base"],
                    stack["app_key"],
                    stack["run"],
                    config,
                    result,
                    schedule,
                )
                kill_loop(workers, local, config, result, schedule, rng)
                posting.result()
                result.post_seconds = time.monotonic() - started

            def finished() -> bool:
                states = local.lead_states()
                pushed = states.get("synced", 0) + states.get("failed", 0)
                return pushed >= result.leads_posted and local.open_jobs() == 0

            say(
                f"{database}: posted {result.leads_posted} in {result.post_seconds:.1f} s, "
                f"{result.kills_done} kills"
            )
            until = started + config.deadline
            while not finished():
                if time.monotonic() > until:
                    say(f"{database}: not finished within {config.deadline:g} s")
                    break
                time.sleep(0.5)  # the workers push; polling the database under a deadline
            result.seconds = time.monotonic() - started
            account: Account = stack["account"]
            sandbox_ids = count_sandbox(
                stack["sandbox"].url,
                account.host,
                account.auditor,
                stack["run"],
                result,
                config.share_every,
            )
            count_local(local, result, sandbox_ids)
            count_worker_logs(workers.logs(), result)
    finally:
        local.close()
    result.check(config.leads)
    return result
