"""The policy pipeline: order, first refusal wins, failures and timeouts defer (fail closed)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import config_data

from relay.clock import ManualClock
from relay.config import parse_config
from relay.policy import (
    CONTINUE,
    BasePolicy,
    Continue,
    Defer,
    Pipeline,
    PolicyServices,
    Reject,
    Transaction,
    Verdict,
    build_pipeline,
)
from relay.testing import PolicyHarness


class Probe(BasePolicy):
    """A policy that answers what it is told, slowly or by crashing if asked."""

    def __init__(self, name: str, verdict: Verdict = CONTINUE, *, delay: float = 0, crash=False):
        self.name = name
        self.verdict = verdict
        self.delay = delay
        self.crash = crash
        self.calls = 0

    async def on_rcpt(self, tx: Transaction, recipient: str) -> Verdict:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.crash:
            msg = "boom"
            raise ValueError(msg)
        return self.verdict


@pytest.fixture
def tx(sqlite_url, tls_files):
    config = parse_config(config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files))
    return Transaction("M1", config.accounts[0], "news@acme.example", "127.0.0.1")


async def test_first_refusal_stops_the_stage(tx):
    """Policies run in order; the first answer that is not Continue ends the stage."""
    first, second, third = Probe("a"), Probe("b", Reject("no", "b.rule")), Probe("c")
    decision = await Pipeline([first, second, third]).rcpt(tx, "x@example.net")
    assert decision.policy == "b"
    assert decision.verdict == Reject("no", "b.rule")
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


async def test_all_continue(tx):
    """With no objection the decision is Continue and names no policy."""
    decision = await Pipeline([Probe("a"), Probe("b")]).rcpt(tx, "x@example.net")
    assert isinstance(decision.verdict, Continue)
    assert decision.policy is None


async def test_crash_defers(tx, log_lines):
    """A policy that raises defers with 451 4.3.0 and the later policies do not run."""
    later = Probe("later")
    decision = await Pipeline([Probe("bad", crash=True), later]).rcpt(tx, "x@example.net")
    assert isinstance(decision.verdict, Defer)
    assert decision.verdict.reply() == "451 4.3.0 Temporary policy failure, try again later"
    assert later.calls == 0
    event = next(e for e in log_lines() if e["event"] == "policy_error")
    assert (event["policy"], event["stage"], event["error"]) == ("bad", "rcpt", "ValueError")


async def test_timeout_defers(tx):
    """A policy slower than the timeout defers rather than letting mail through."""
    decision = await Pipeline([Probe("slow", delay=5)], timeout=0.05).rcpt(tx, "x@example.net")
    assert isinstance(decision.verdict, Defer)
    assert decision.policy == "slow"
    # A call is bounded by 1.25 timeouts at most (the deadline moves in steps, not every call).
    slow = [Probe("quick"), Probe("a bit slow", delay=0.4)]
    decision = await Pipeline(slow, timeout=0.3).rcpt(tx, "x@example.net")
    assert (type(decision.verdict), decision.policy) == (Defer, "a bit slow")


async def test_timeout_is_per_policy_not_per_stage(tx):
    """Each policy gets the whole timeout, and the one that overruns is named.

    Three calls of 0.6 timeouts each all run to the end.
    """
    fine = [Probe(name, delay=0.3) for name in ("a", "b", "c")]
    decision = await Pipeline(fine, timeout=0.5).rcpt(tx, "x@example.net")
    assert isinstance(decision.verdict, Continue)
    assert [probe.calls for probe in fine] == [1, 1, 1]
    decision = await Pipeline([Probe("quick"), Probe("slow", delay=5)], timeout=0.3).rcpt(
        tx, "x@example.net"
    )
    assert (type(decision.verdict), decision.policy) == (Defer, "slow")


async def test_stage_skips_policies_without_it(tx):
    """A policy that does not implement a stage is not called for it (nor can it refuse)."""
    only_rcpt = Probe("only_rcpt", Reject("no", "r"))
    decision = await Pipeline([only_rcpt]).mail(tx)
    assert isinstance(decision.verdict, Continue)
    assert only_rcpt.calls == 0


def test_mandatory_policies_always_run(sqlite_url, tls_files):
    """The mandatory policies run, in this order, even when the config names none; dkim last."""
    data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
    config = parse_config(data)
    pipeline = build_pipeline(PolicyServices(config, None, ManualClock(), None))  # type: ignore[arg-type]
    assert pipeline.names == [
        "account_state",
        "terms",
        "from_domain",
        "suppression",
        "consent",
        "rate_limit",
        "repeat",
        "broadcast",
        "unsubscribe",
        "trace",
        "dkim",
    ]


async def test_from_domain_subdomains_setting():
    """allow_subdomains lets news.acme.example count as acme.example; off by default."""
    for allow, expected in ((False, Reject), (True, Continue)):
        async with PolicyHarness.open("from_domain", {"allow_subdomains": allow}) as harness:
            pipeline = Pipeline([harness.policy])
            tx = harness.transaction("news@mail.acme.example")
            assert isinstance((await pipeline.mail(tx)).verdict, expected)
            # A look-alike domain never passes.
            tx = harness.transaction("news@evilacme.example")
            assert isinstance((await pipeline.mail(tx)).verdict, Reject)
