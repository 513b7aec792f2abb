"""``POST /webhooks/amocrm/{secret}``: stored before it is answered, authenticated by the URL
secret and the body's account id (nothing stored otherwise), redeliveries stored once and applied
once, unreadable bodies kept as failed, hostile bodies refused or kept without a 5xx, 503 while
the database cannot be used; the deliveries listed and replayed — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from leads_support import OWNER, connected, drain
from test_failing_storage import write_protected
from webhooks_support import (
    connection_of,
    deliveries,
    delivery_count,
    form,
    mirror_lead,
    post_hook,
    secret_of,
)

from amobridge.storage.tables import Connection


def _lead(amo_id: int, updated_at: int, **fields: Any) -> dict[str, Any]:
    return {"id": amo_id, "name": "Сделка", "updated_at": updated_at, **fields}


async def test_a_delivery_is_stored_answered_and_applied_once(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    body = form(stack, ("leads[add]", _lead(7001, 1_700_000_000, price=500)))
    answer = await post_hook(stack, secret, body)
    assert answer.status_code == 200, answer.text
    first = answer.json()
    assert first["accepted"] is True
    assert first["duplicate_of"] is None
    assert await mirror_lead(stack, 7001) is None  # applied by a job, not on the request's path

    again = await post_hook(stack, secret, body)  # amoCRM resends what it thought failed
    assert again.status_code == 200
    assert again.json()["duplicate_of"] == first["delivery_id"]

    assert await drain(stack) == 1  # one processing job: the duplicate has none
    lead = await mirror_lead(stack, 7001)
    assert lead is not None
    assert (lead.name, lead.price, lead.owner) == ("Сделка", 500, OWNER)
    assert lead.sync_state == "synced"
    shown = {d["id"]: d for d in await deliveries(stack, owner=OWNER)}
    original, copy = shown[first["delivery_id"]], shown[again.json()["delivery_id"]]
    assert original["state"] == "processed"
    assert original["result"]["applied"] == 1
    assert original["result"]["created"] == 1
    assert original["body"] == body.decode()
    assert original["body_hash"] == hashlib.sha256(body).hexdigest()
    assert original["content_type"] == "application/x-www-form-urlencoded"
    assert copy["state"] == "duplicate"
    assert copy["body"] is None
    assert copy["duplicate_of"] == original["id"]


async def test_redeliveries_arriving_together_are_stored_once(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    body = form(stack, ("leads[update]", _lead(7002, 1_700_000_100)))
    answers = await asyncio.gather(*(post_hook(stack, secret, body) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    originals = [a.json() for a in answers if a.json()["duplicate_of"] is None]
    assert len(originals) == 1
    assert {a.json()["duplicate_of"] for a in answers} == {None, originals[0]["delivery_id"]}
    await drain(stack)
    states = sorted(d["state"] for d in await deliveries(stack, owner=OWNER))
    assert states == ["duplicate"] * 4 + ["processed"]


async def test_an_older_update_after_a_newer_one_changes_nothing(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    newer = form(stack, ("leads[update]", _lead(7003, 1_700_000_200, name="Новое", price=20)))
    older = form(stack, ("leads[update]", _lead(7003, 1_700_000_100, name="Старое", price=10)))
    assert (await post_hook(stack, secret, newer)).status_code == 200
    assert (await post_hook(stack, secret, older)).status_code == 200
    await drain(stack)
    lead = await mirror_lead(stack, 7003)
    assert lead is not None
    assert (lead.name, lead.price) == ("Новое", 20)
    results = [d["result"] for d in await deliveries(stack, owner=OWNER)]
    assert [r["stale"] for r in results] == [1, 0]  # newest first: the older one was stale

    # A delete carries only the id; a restore newer than the row brings the lead back.
    gone = form(stack, ("leads[delete]", {"id": 7003}))
    assert (await post_hook(stack, secret, gone)).status_code == 200
    await drain(stack)
    lead = await mirror_lead(stack, 7003)
    assert lead is not None
    assert lead.deleted
    back = form(stack, ("leads[restore]", _lead(7003, 1_700_000_300, name="Вернули")))
    assert (await post_hook(stack, secret, back)).status_code == 200
    await drain(stack)
    lead = await mirror_lead(stack, 7003)
    assert lead is not None
    assert not lead.deleted
    assert lead.name == "Вернули"


async def test_an_unreadable_body_is_kept_as_failed_and_can_be_replayed(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    # Authenticated (its account block is right), but over the parser's 20,000 fields.
    body = form(stack) + b"&" + b"&".join(b"x[%d]=1" % i for i in range(20_001))
    assert len(body) < 1024 * 1024
    answer = await post_hook(stack, secret, body)
    assert answer.status_code == 200, answer.text
    await drain(stack)
    (failed,) = await deliveries(stack, owner=OWNER, state="failed")
    assert failed["id"] == answer.json()["delivery_id"]
    assert "WebhookParseError" in failed["error"]
    assert "20000" in failed["error"]
    assert failed["size"] == len(body)

    replayed = await stack.http.post(
        f"/webhooks/deliveries/{failed['id']}/replay",
        params={"owner": OWNER},
        headers=stack.app_headers(),
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["state"] == "received"
    await drain(stack)
    again = await stack.http.get(
        f"/webhooks/deliveries/{failed['id']}", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert again.json()["state"] == "failed"
    assert again.json()["attempts"] == 2


async def test_unknown_secret_wrong_account_and_oversize_store_nothing(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    body = form(stack, ("leads[add]", _lead(7004, 1_700_000_000)))
    unknown = await post_hook(stack, "A" * 43, body)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "webhook_not_found"
    assert (await post_hook(stack, "short", body)).status_code == 404
    assert (
        await post_hook(stack, secret[:-1] + ("A" if secret[-1] != "A" else "B"), body)
    ).status_code == 404

    wrong = await post_hook(
        stack, secret, form(stack, ("leads[add]", _lead(7004, 1)), account_id=1)
    )
    assert wrong.status_code == 403
    assert wrong.json()["error"] == "account_mismatch"
    missing = await post_hook(stack, secret, b"leads[add][0][id]=7004")
    assert missing.status_code == 403

    huge = form(stack) + b"&pad=" + b"x" * (1024 * 1024)
    too_big = await post_hook(stack, secret, huge)
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "body_too_large"
    assert await delivery_count(stack) == 0
    assert await drain(stack) == 0


async def test_a_disconnected_connection_takes_no_more_deliveries(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert gone.status_code == 200, gone.text
    answer = await post_hook(stack, secret, form(stack, ("leads[add]", _lead(7005, 1))))
    assert answer.status_code == 404
    assert await delivery_count(stack) == 0


HOSTILE: dict[str, bytes] = {
    "not utf-8": b"account%5Bid%5D={account}&account%5Bsubdomain%5D=acme&leads%5Bupdate%5D%5B0%5D"
    b"%5Bid%5D=7006&leads%5Bupdate%5D%5B0%5D%5Bname%5D=\xff\xfe%FF%00&leads%5Bupdate%5D%5B0%5D"
    b"%5Bupdated_at%5D=1700000000",
    "deep nesting": b"account[id]={account}&account[subdomain]=acme&leads[update][0][id]=7007&"
    + b"leads[update][0][x]"
    + b"[a]" * 4000
    + b"=1",
    "huge array": b"account[id]={account}&account[subdomain]=acme&"
    + b"&".join(b"leads[update][%d][id]=%d" % (i, 8000 + i) for i in range(3000)),
    "huge numbers": b"account[id]={account}&account[subdomain]=acme&leads[update][0][id]="
    + b"9" * 30
    + b"&leads[update][1][id]=7008&leads[update][1][price]="
    + b"9" * 30
    + b"&leads[update][1][updated_at]="
    + b"9" * 25,
    "missing fields": b"account[id]={account}&account[subdomain]=acme&leads[update][0][name]=x"
    b"&contacts[add][0][name]=y&leads[status][0]=flat&leads=flat",
    "json": b'{"account": {"id": {account}}, "leads": {"add": [{"id": 1}]}}',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_bodies_are_stored_or_refused_never_a_5xx(stack: Any, kind: str) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    body = HOSTILE[kind].replace(b"{account}", str(stack.account["id"]).encode())
    answer = await post_hook(stack, secret, body)
    if kind == "json":  # no account[id] field: refused, nothing stored
        assert answer.status_code == 403
        assert await delivery_count(stack) == 0
        return
    assert answer.status_code == 200, answer.text
    await drain(stack)
    (shown,) = await deliveries(stack, owner=OWNER)
    assert shown["state"] in ("processed", "failed"), shown
    if kind == "not utf-8":
        assert shown["body_base64"] is not None
        assert shown["state"] == "processed"
        lead = await mirror_lead(stack, 7006)
        assert lead is not None
        assert "\x00" not in (lead.name or "")
    if kind == "huge array":
        assert shown["result"]["created"] == 3000
    if kind == "missing fields":
        assert shown["result"]["skipped"] == ["leads[update]: no id", "contacts[add]: no id"]
    if kind == "huge numbers":
        lead = await mirror_lead(stack, 7008)
        assert lead is not None
        assert lead.price is None
        assert lead.amo_updated_at is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_unusable_database_answers_503_so_amocrm_sends_again(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    body = form(stack, ("leads[add]", _lead(7009, 1_700_000_000)))
    path = stack.services.db.path
    assert path is not None
    with write_protected(path):
        answer = await post_hook(stack, secret, body)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "storage_unavailable"
    for _ in range(50):  # the storage recovers: the resend is stored
        answer = await post_hook(stack, secret, body)
        if answer.status_code == 200:
            break
        await asyncio.sleep(0.05)  # the guard re-checks the files; nothing to wait on
    assert answer.status_code == 200, answer.text
    assert await delivery_count(stack) == 1


async def test_deliveries_are_owner_scoped(stack: Any) -> None:
    await connected(stack)
    await connected(stack, "user-7")
    await post_hook(stack, await secret_of(stack), form(stack, ("leads[add]", _lead(1, 1))))
    mine = await stack.http.get(
        "/webhooks/deliveries", params={"owner": "user-7"}, headers=stack.app_headers()
    )
    assert mine.status_code == 200
    assert mine.json()["items"] == []
    (theirs,) = (
        await stack.http.get(
            "/webhooks/deliveries", params={"owner": OWNER}, headers=stack.app_headers()
        )
    ).json()["items"]
    other = await stack.http.get(
        f"/webhooks/deliveries/{theirs['id']}",
        params={"owner": "user-7"},
        headers=stack.app_headers(),
    )
    assert other.status_code == 404
    assert other.json()["error"] == "delivery_not_found"
    token = stack.user_token("user-7")
    as_user = await stack.http.get(
        "/webhooks/deliveries", headers={"Authorization": f"Bearer {token}"}
    )
    assert as_user.status_code == 200
    assert as_user.json()["items"] == []
    assert (await stack.http.get("/webhooks/deliveries")).status_code == 401


async def test_the_secret_is_stored_only_as_a_hash_and_ciphertext(stack: Any) -> None:
    await connected(stack)
    secret = await secret_of(stack)
    row: Connection = await connection_of(stack)
    assert row.webhook_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.webhook_secret_enc is not None
    assert secret not in row.webhook_secret_enc
    status = await stack.http.get(
        "/webhooks/subscription", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert status.status_code == 200, status.text
    assert secret not in status.text
    assert status.json()["state"] == "none"  # auto-subscription is off in this stack
