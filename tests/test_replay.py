"""`policy replay`: a day of recorded traffic, judged by a new configuration, against a real run.

The same day of traffic (24 transactions an hour apart, on a manual clock) goes through a relay
running configuration A and, separately, one running configuration B. Replaying A's journal
under B must report exactly the differences between the two real runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict

import aiosmtplib
import yaml
from clirun import run_cli
from conftest import PASSWORD, config_data, simple_message, smtp_client

from relay.clock import ManualClock
from relay.storage.records import Suppression

LOGIN = ("acme-crm", PASSWORD)
START = 1_800_000_000.0
HOUR = 3661.0  # an hour and a bucket: each transaction sees a fresh hourly window


def traffic() -> list[list[str]]:
    """24 transactions of 3 recipients; some role addresses, one suppressed address."""
    day = []
    for n in range(24):
        rcpts = [f"a{n}@example.org", f"b{n}@example.net"]
        rcpts.append("postmaster@example.com" if n % 4 == 0 else f"c{n}@example.com")
        if n == 5:
            rcpts[0] = "gone@example.org"
        day.append(rcpts)
    return day


async def run_day(start_relay, data, clock: ManualClock) -> None:
    """Send the day through a relay on `data`, the clock moving an hour between transactions."""
    relay = await start_relay(data, clock=clock)
    await relay.store.suppress(
        Suppression("gone@example.org", "acme", "unsubscribe", "test", START - 86400 * 7),
        actor="test",
    )
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    for rcpts in traffic():
        response = await client.execute_command(b"MAIL FROM:<news@acme.example>")
        if response.code == 250:
            accepted = 0
            for rcpt in rcpts:
                answer = await client.execute_command(f"RCPT TO:<{rcpt}>".encode())
                accepted += answer.code == 250
            if accepted:
                with contextlib.suppress(aiosmtplib.SMTPDataError):  # a halt refuses at DATA
                    await client.data(simple_message())
        await client.execute_command(b"RSET")
        clock.advance(HOUR)
    await client.quit()
    await relay.stop()


def outcomes(entries) -> dict[tuple[int, str | None], tuple[str, str | None]]:
    """Each recipient's final outcome in a journal, by (transaction number, recipient)."""
    grouped = defaultdict(list)
    for entry in entries:
        grouped[entry.message_id].append(entry)
    result = {}
    for n, (_, items) in enumerate(grouped.items()):
        mail = next(e for e in items if e.kind == "mail").detail
        data = next((e.detail for e in items if e.kind == "data"), None)
        rcpts = [e for e in items if e.kind == "rcpt"]
        if not rcpts:
            result[n, None] = (mail["verdict"], mail.get("rule"))
        for e in rcpts:
            decision = data if e.detail["verdict"] == "accept" and data else e.detail
            if decision is data and data["verdict"] == "accept":  # refused one by one at DATA
                decision = data.get("refused", {}).get(e.recipient, data)
            result[n, e.recipient] = (decision["verdict"], decision.get("rule"))
    return result


async def replay_with_terms(tmp_path, terms, window) -> None:
    """Terms introduced long ago and never accepted: every transaction refused at MAIL.

    As a policy decision, not a store method the replay lacks; and no reminder is sent.
    """
    terms["terms"] = {
        "version": "v1",
        "url": "https://x.example/t",
        "published": "2020-01-01T00:00:00Z",
    }
    with_terms = tmp_path / "A-with-terms.yaml"
    with_terms.write_text(yaml.safe_dump(terms))
    result = await asyncio.to_thread(
        run_cli, "policy", "replay", *window, "--config", str(with_terms), "--json"
    )
    report = json.loads(result.stdout)
    refused = {c["after"]["rule"] for c in report["changes"]}
    assert refused == {"terms.not_accepted"}
    assert "no change" not in result.stdout
    assert "policy_error" not in result.stderr


async def test_replay_reports_what_a_real_run_of_the_new_config_does(
    start_relay, tls_files, upstream, tmp_path
):
    """role_address monitor -> enforce, a recipients-per-hour limit, a lower broadcast threshold."""
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in "AB"}

    def config(name: str, store: str):
        data = config_data(store_url=urls[store], upstream_port=upstream.port, tls_files=tls_files)
        if name == "A":
            data["policies"] = {"role_address": {"mode": "monitor"}}
        else:
            data["policies"] = {"role_address": {"mode": "enforce"}}
            data["accounts"][0]["limits"] = {"recipients_per_hour": 2, "suspicious_broadcast": 30}
        return data

    await run_day(start_relay, config("A", "A"), ManualClock(START))
    await run_day(start_relay, config("B", "B"), ManualClock(START))

    from relay.storage import open_store

    journals = {}
    for name in "AB":
        store = open_store(urls[name])
        await store.open()
        journals[name] = await store.journal_window(since=0, until=START * 2)
        ids = list(dict.fromkeys(e.message_id for e in journals[name]))
        await store.close()
        if name == "A":
            ordinal = {message_id: n for n, message_id in enumerate(ids)}
    before, after = outcomes(journals["A"]), outcomes(journals["B"])
    assert len(ordinal) == 24
    # B's halt refuses whole transactions at MAIL: compare A's recipients with B's transaction
    for n, rcpt in list(before):
        if (n, rcpt) not in after:
            after[n, rcpt] = after[n, None]
    expected = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    rules = {change[1][1] for change in expected.values()}
    assert rules >= {
        "role_address.refused",
        "rate_limit.recipients_per_hour",
        "account_state.suspended",
    }

    path = tmp_path / "B-on-A.yaml"
    path.write_text(yaml.safe_dump(config("B", "A")))
    result = await asyncio.to_thread(
        run_cli,
        "policy",
        "replay",
        "--since",
        "2027-01-14T00:00:00Z",
        "--until",
        "2027-01-20T00:00:00Z",
        "--config",
        str(path),
        "--json",
    )
    report = json.loads(result.stdout)
    replayed = {
        (ordinal[c["message_id"]], c["recipient"]): (
            (c["before"]["verdict"], c["before"]["rule"]),
            (c["after"]["verdict"], c["after"]["rule"]),
        )
        for c in report["changes"]
    }
    assert replayed == expected
    assert report["transactions"] == 24
    assert [h["reason"].split(":")[0] for h in report["halts"]] == ["broadcast_halted"]
    assert {(s["change"], s["rule"]) for s in report["summary"]} >= {
        ("now_refused", "role_address.refused"),
        ("now_refused", "rate_limit.recipients_per_hour"),
    }

    window = ["--since", "2027-01-14T00:00:00Z", "--until", "2027-01-20T00:00:00Z"]
    text = await asyncio.to_thread(run_cli, "policy", "replay", *window, "--config", str(path))
    assert text.stdout.startswith("replayed 24 transactions, 72 recipients")
    assert "accepted, now refused" in text.stdout
    assert "halt (new)                 broadcast_halted" in text.stdout

    same = tmp_path / "A-on-A.yaml"
    same.write_text(yaml.safe_dump(config("A", "A")))
    unchanged = await asyncio.to_thread(run_cli, "policy", "replay", *window, "--config", str(same))
    assert "no change" in unchanged.stdout
    await replay_with_terms(tmp_path, config("A", "A"), window)
    backwards = await asyncio.to_thread(
        run_cli,
        "policy",
        "replay",
        "--since",
        "1h",
        "--until",
        "2h",
        "--config",
        str(same),
        check=False,
    )
    assert backwards.returncode == 2
    assert "--since is not before --until" in backwards.stderr


async def test_replay_starts_from_each_accounts_standing_and_reports_earlier_halts(
    store_url, tmp_path, tls_files
):
    """Each account's standing before the window, and the policy halts made inside it.

    An account suspended before the window is replayed suspended; a policy halt inside the
    window is reported as made by the old configuration; each account's changes stay its own.
    """
    from relay.config import parse_config
    from relay.replay import replay
    from relay.storage import open_store

    store, scratch = open_store(store_url), open_store(f"sqlite:///{tmp_path}/scratch.db")
    for s in (store, scratch):
        await s.open()
        await s.migrate()
    try:
        changes = [
            ("acme", "suspended", "complaints", "cli:ops", START - 100),
            ("globex", "suspended", "broadcast_halted: 12000 > 10000", "policy:broadcast", START),
            ("globex", "active", "proof shown", "cli:ops", START + 10),
            ("acme", "active", "after the window", "cli:ops", START + 7200),
        ]
        for account_id, state, reason, actor, at in changes:
            await store.set_account_state(account_id, state, reason=reason, actor=actor, now=at)
        data = config_data(store_url=store_url, upstream_port=25, tls_files=tls_files)
        config = parse_config(data)
        report = await replay(store, scratch, config, since=START - 1, until=START + 3600)
        assert report.halts_before == [
            {
                "account": "globex",
                "state": "suspended",
                "reason": "broadcast_halted: 12000 > 10000",
                "at": START,
            }
        ]
        standing = await scratch.account_state("acme")
        assert (standing.state, standing.reason) == ("suspended", "complaints")
        assert await scratch.account_state("globex") is None
    finally:
        for s in (store, scratch):
            await s.close()
