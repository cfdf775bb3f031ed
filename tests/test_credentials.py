"""Credentials: a secret that verified is remembered per configured hashes; failures never are."""

from __future__ import annotations

from conftest import PASSWORD, PASSWORD_HASH, config_data, scrape, smtp_client

from relay.accounts.credentials import Credentials
from relay.metrics import CREDENTIAL_CHECKS
from relay.passwords import hash_password


def checks() -> dict[str, float]:
    return {
        result: CREDENTIAL_CHECKS.labels(result)._value.get()
        for result in ("remembered", "verified", "refused")
    }


def delta(before: dict[str, float]) -> dict[str, float]:
    return {result: value - before[result] for result, value in checks().items()}


async def test_verified_secret_is_remembered_until_its_hash_changes():
    """Verified once with Argon2, then remembered; a rotation that drops the hash forgets it."""
    credentials = Credentials()
    before = checks()
    assert await credentials.verify("smtp:acme", PASSWORD_HASH, PASSWORD)
    assert await credentials.verify("smtp:acme", [PASSWORD_HASH], PASSWORD)
    assert delta(before) == {"remembered": 1, "verified": 1, "refused": 0}
    other = hash_password("a new password")
    before = checks()
    assert await credentials.verify("smtp:acme", [other, PASSWORD_HASH], PASSWORD)
    assert not await credentials.verify("smtp:acme", other, PASSWORD)
    assert delta(before) == {"remembered": 0, "verified": 1, "refused": 1}


async def test_failures_and_strangers_always_cost_a_verification():
    """A wrong secret is checked in full every time; so is an unknown name (no hashes)."""
    credentials = Credentials()
    before = checks()
    for _ in range(2):
        assert not await credentials.verify("smtp:acme", PASSWORD_HASH, "wrong")
        assert not await credentials.verify("smtp:nobody", None, PASSWORD)
    assert delta(before) == {"remembered": 0, "verified": 0, "refused": 4}
    # What is remembered is who presented the secret: the same secret from another name is not.
    assert await credentials.verify("smtp:acme", PASSWORD_HASH, PASSWORD)
    before = checks()
    assert not await credentials.verify("smtp:globex", None, PASSWORD)
    assert delta(before) == {"remembered": 0, "verified": 0, "refused": 1}


async def test_a_crm_that_logs_in_every_session_pays_argon2_once(
    start_relay, sqlite_url, upstream, tls_files
):
    """Three SMTP sessions with AUTH: one verification, two remembered (seen on /metrics)."""
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    relay = await start_relay(data)
    before = await scrape(relay.web_port)
    for _ in range(3):
        client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
        await client.quit()
    after = await scrape(relay.web_port)

    def seen(result: str) -> float:
        key = ("optin_relay_credential_checks_total", (("result", result),))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (seen("verified"), seen("remembered"), seen("refused")) == (1, 2, 0)
