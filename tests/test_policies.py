"""Each policy on its own, through `relay.testing`: no server, a real store in memory.

End-to-end behaviour (replies over SMTP, what reaches the upstream) is tested in
test_enforcement, test_unsubscribe, test_dkim and test_ingress; these tests pin each
policy's own decisions and take milliseconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from messages import newsletter

from relay.accounts.standing import change_state
from relay.errors import ConfigError
from relay.policy import Continue, Defer, Reject, build_pipeline
from relay.policyfiles import order_names, policy_module
from relay.storage.records import Consent, Suppression
from relay.testing import PolicyHarness, account_data, make_config, submission


async def test_role_address_refuses_role_recipients_of_marketing_mail():
    """A role local part (any case, any +tag) gets 550 5.7.1 naming the rule; people pass."""
    async with PolicyHarness.open("role_address") as harness:
        tx = harness.transaction()
        for address in ("abuse@example.net", "NoReply+list@Example.net", "postmaster@x.example"):
            verdict = await harness.policy.on_rcpt(tx, address)
            assert isinstance(verdict, Reject), address
            assert verdict.rule == "role_address.refused"
            assert verdict.reply().startswith("550 5.7.1 <")
            assert "role address" in verdict.reply()
        assert await harness.policy.on_rcpt(tx, "ann@example.net") == Continue()
        assert await harness.policy.on_rcpt(tx, "abuse.team@example.net") == Continue()


async def test_role_address_settings_choose_parts_and_streams():
    """`local_parts` replaces the list; transactional accounts pass unless `streams` names them."""
    config = make_config(
        policies={"role_address": {"local_parts": ["Info"]}},
        accounts=[account_data(), account_data("shop", stream="transactional")],
    )
    async with PolicyHarness.open("role_address", config=config) as harness:
        marketing, transactional = harness.transaction(), harness.transaction(account="shop")
        assert isinstance(await harness.policy.on_rcpt(marketing, "info@example.net"), Reject)
        assert await harness.policy.on_rcpt(marketing, "abuse@example.net") == Continue()
        assert await harness.policy.on_rcpt(transactional, "info@example.net") == Continue()
    config = make_config(
        policies={"role_address": {"streams": ["marketing", "transactional"]}},
        accounts=[account_data("shop", stream="transactional")],
    )
    async with PolicyHarness.open("role_address", config=config) as harness:
        verdict = await harness.policy.on_rcpt(harness.transaction(), "abuse@example.net")
        assert isinstance(verdict, Reject)


async def test_role_address_runs_between_suppression_and_consent():
    """Its declared place: after suppression, before consent, whatever the config order."""
    config = make_config(policies={"role_address": {}, "consent": {}, "suppression": {}})
    async with PolicyHarness.open("role_address", config=config) as harness:
        names = build_pipeline(harness.services).names
    assert names.index("suppression") < names.index("role_address") < names.index("consent")
    assert names[0] == "account_state"
    assert names[-2:] == ["trace", "dkim"]


async def test_account_state_refuses_suspended_accounts():
    """Active passes; suspended gets 550 5.7.1 naming the state and the abuse contact."""
    async with PolicyHarness.open("account_state") as harness:
        tx = harness.transaction()
        assert await harness.policy.on_mail(tx) == Continue()
        await change_state(
            harness.store, "acme", "suspended", reason="test", actor="test", now=harness.clock.now()
        )
        verdict = await harness.policy.on_mail(tx)
        assert isinstance(verdict, Reject)
        assert verdict.rule == "account_state.suspended"
        assert "abuse@relay.test.example" in verdict.text


async def test_from_domain_checks_envelope_and_header():
    """A sender outside from_domains is refused at MAIL; a foreign From header at DATA."""
    async with PolicyHarness.open("from_domain") as harness:
        assert await harness.policy.on_mail(harness.transaction()) == Continue()
        outside = harness.transaction("news@evilacme.example")
        assert isinstance(await harness.policy.on_mail(outside), Reject)
        forged = newsletter(1).replace(b"news@acme.example", b"news@globex.example")
        verdict = await harness.policy.on_data(harness.transaction(), submission(forged))
        assert isinstance(verdict, Reject)


async def test_suppression_refuses_and_counts_violations():
    """A suppressed address is refused with its reason; past the limit the account halts."""
    config = make_config(accounts=[account_data(limits={"suppression_violations": 2})])
    async with PolicyHarness.open("suppression", config=config) as harness:
        now = harness.clock.now() - 4 * 86400  # older than the 72 h grace
        for n in range(3):
            entry = Suppression(f"gone{n}@example.net", "acme", "unsubscribe", "one_click", now)
            await harness.store.suppress(entry, actor="test")
        tx = harness.transaction()
        assert await harness.policy.on_rcpt(tx, "here@example.net") == Continue()
        for n in range(3):
            verdict = await harness.policy.on_rcpt(tx, f"Gone{n}@Example.net")
            assert isinstance(verdict, Reject)
            assert verdict.rule == "suppression.unsubscribe"
        state = await harness.store.account_state("acme")
        assert state is not None
        assert state.state == "suspended"


async def test_suppressions_within_the_grace_are_refused_but_not_counted():
    """A suppression younger than `suppression_grace` refuses, names what to do, halts nobody."""
    config = make_config(accounts=[account_data(limits={"suppression_violations": 2})])
    async with PolicyHarness.open("suppression", config=config) as harness:
        now = harness.clock.now()
        for n in range(5):
            entry = Suppression(f"new{n}@example.net", "acme", "unsubscribe", "one_click", now)
            await harness.store.suppress(entry, actor="test")
        harness.clock.advance(71 * 3600)
        tx = harness.transaction()
        for n in range(5):
            verdict = await harness.policy.on_rcpt(tx, f"new{n}@example.net")
            assert isinstance(verdict, Reject)
            assert "has unsubscribed from this sender; remove it from your list" in verdict.text
        assert await harness.store.account_state("acme") is None
        harness.clock.advance(2 * 3600)  # now past the grace: counted
        for n in range(3):
            await harness.policy.on_rcpt(tx, f"new{n}@example.net")
        state = await harness.store.account_state("acme")
        assert state is not None
        assert state.state == "suspended"


@pytest.mark.parametrize(
    ("suppressed", "recipient"),
    [
        ("foo.bar@example.org", "Foo.Bar+x@Example.ORG"),
        ("foo.bar+news@example.org", "foo.bar@example.org"),
        ("foo.bar@gmail.com", "FooBar+y@googlemail.com"),
        ("f.o.o@googlemail.com", "foo@gmail.com"),
    ],
)
async def test_suppression_cannot_be_evaded_by_re_spelling(suppressed, recipient):
    """Case, `+tag` sub-addressing, Gmail's dots and googlemail.com match the suppressed address."""
    async with PolicyHarness.open("suppression", config=make_config()) as harness:
        entry = Suppression(suppressed, "acme", "unsubscribe", "one_click", harness.clock.now())
        await harness.store.suppress(entry, actor="test")
        verdict = await harness.policy.on_rcpt(harness.transaction(), recipient)
        assert isinstance(verdict, Reject)
        assert verdict.rule == "suppression.unsubscribe"
        other = await harness.policy.on_rcpt(harness.transaction(), "foo.bar@example.net")
        assert other == Continue()


async def test_consent_enforce_and_unsolicited_bulk():
    """Enforce refuses a recipient without a record; the 11th such recipient halts the account."""
    config = make_config(accounts=[account_data(consent="enforce")])
    async with PolicyHarness.open("consent", config=config) as harness:
        now = harness.clock.now()
        record = Consent("acme", "fan@example.net", "news", "confirmed", now, now, "form")
        await harness.store.record_consents([record])
        tx = harness.transaction()
        assert await harness.policy.on_rcpt(tx, "fan@example.net") == Continue()
        rules = [
            (await harness.policy.on_rcpt(tx, f"stranger{n}@example.net")).rule  # type: ignore[union-attr]
            for n in range(11)
        ]
        assert rules == ["consent.missing"] * 10 + ["consent.unsolicited_bulk"]


async def test_rate_limit_defers_past_the_hourly_budget():
    """451 4.7.0 once the messages-per-hour budget is spent; back once the hour has passed.

    Counters keep one-minute buckets: a bucket leaves the window once wholly outside it.
    """
    config = make_config(accounts=[account_data(limits={"messages_per_hour": 2})])
    async with PolicyHarness.open("rate_limit", config=config) as harness:
        verdicts = [
            await harness.policy.on_mail(harness.transaction(message_id=f"M{n}")) for n in range(3)
        ]
        assert verdicts[:2] == [Continue(), Continue()]
        assert isinstance(verdicts[2], Defer)
        assert verdicts[2].reply().startswith("451 4.7.0")
        harness.clock.advance(3600 + 60)
        assert await harness.policy.on_mail(harness.transaction(message_id="M9")) == Continue()


async def test_broadcast_counts_the_campaign_and_halts_past_the_threshold():
    """Personalised copies count as one campaign; the count is left for the unsubscribe policy."""
    config = make_config(accounts=[account_data(limits={"suspicious_broadcast": 5})])
    async with PolicyHarness.open("broadcast", config=config) as harness:
        first = harness.transaction(recipients=["a@example.net", "b@example.net"])
        assert await harness.policy.on_data(first, submission(newsletter(1))) == Continue()
        assert first.campaign_recipients == 2
        second = harness.transaction(recipients=[f"r{n}@example.net" for n in range(4)])
        verdict = await harness.policy.on_data(second, submission(newsletter(2)))
        assert isinstance(verdict, Reject)
        assert verdict.rule == "broadcast.halted"
        assert second.campaign_recipients == 6


@pytest.mark.parametrize("stream", ["marketing", "transactional"])
async def test_unsubscribe_renders_headers_for_marketing_only(stream):
    """Marketing copies get List-Unsubscribe and the footer; transactional ones are left alone."""
    config = make_config(accounts=[account_data(stream=stream)])
    async with PolicyHarness.open("unsubscribe", config=config) as harness:
        rendering = harness.rendering(newsletter(1), "ann@example.net")
        assert await harness.policy.on_render(rendering) == Continue()
        has_header = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in rendering.content
        assert has_header is (stream == "marketing")


async def test_trace_adds_the_header_and_the_bounce_address():
    """The copy gets X-Optin-Trace and a bounce+TOKEN envelope sender at the inbound domain."""
    async with PolicyHarness.open("trace") as harness:
        rendering = harness.rendering(newsletter(1), "ann@example.net", recipient_id=42)
        assert await harness.policy.on_render(rendering) == Continue()
        assert rendering.content.startswith(b"X-Optin-Trace: ")
        assert rendering.mail_from.startswith("bounce+")
        assert rendering.mail_from.endswith("@relay.test.example")


async def test_dkim_without_a_key_defers_by_default():
    """No key for the From domain: 451 4.7.5 (the default `missing_key: defer`)."""
    async with PolicyHarness.open("dkim") as harness:
        verdict = await harness.policy.on_render(harness.rendering(newsletter(1), "a@example.net"))
        assert isinstance(verdict, Defer)
        assert verdict.rule == "dkim.missing_key"


def _modules(**declarations: dict[str, tuple[str, ...]]) -> dict[str, SimpleNamespace]:
    return {
        name: SimpleNamespace(Policy=SimpleNamespace(name=name, **sides))
        for name, sides in declarations.items()
    }


def test_declared_order_and_its_ties():
    """`after`/`before` order policies; ties keep the given order.

    "*" means every policy that does not itself say "*" on that side.
    """
    modules = _modules(
        sign={"after": ("*",)},
        mark={"after": ("*",), "before": ("sign",)},
        gate={"before": ("*",)},
        count={"after": ("check",)},
        check={},
        extra={},
    )
    order = order_names(["sign", "mark", "count", "check", "extra", "gate"], modules)  # type: ignore[arg-type]
    assert order == ["gate", "check", "count", "extra", "mark", "sign"]


def test_contradictory_declarations_are_an_error():
    """A cycle of declarations names the policies in it."""
    modules = _modules(a={"after": ("b",)}, b={"after": ("a",)}, c={})
    with pytest.raises(ValueError, match="policies a, b: their after/before declarations"):
        order_names(["a", "b", "c"], modules)  # type: ignore[arg-type]


async def test_a_cycle_among_real_policies_is_a_configuration_error(monkeypatch):
    """Building the pipeline names the policies whose declarations contradict each other."""
    monkeypatch.setattr(policy_module("account_state").Policy, "after", ("dkim",))
    async with PolicyHarness.open("from_domain") as harness:
        with pytest.raises(ConfigError) as raised:
            build_pipeline(harness.services)
    (problem,) = raised.value.problems
    assert problem.startswith("policies: policies ")
    assert "account_state" in problem
    assert "form a cycle" in problem
