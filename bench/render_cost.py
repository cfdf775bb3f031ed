"""Per-recipient render cost of a 50 KB HTML newsletter (token, List-Unsubscribe, footer).

Prints microseconds per recipient for the full render and, measured in the same run, for a bare
parse-and-regenerate of the same message with the standard library, and their ratio.

    .venv/bin/python bench/render_cost.py [--recipients 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from email import message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage
from io import BytesIO

from relay.clock import SystemClock
from relay.configaccounts import Brand
from relay.mail.branding import footer
from relay.mail.render import fill, list_unsubscribe_headers, prepare, render
from relay.tokens import TokenCodec, campaign_tag


def newsletter(size: int = 50_000) -> bytes:
    item = (
        '<tr><td style="padding:12px;font-family:Arial"><h2>Spring collection</h2>'
        "<p>Light jackets, linen shirts and canvas shoes, picked for the season.</p>"
        '<a href="https://shop.acme.example/spring?utm_source=news">Shop now</a></td></tr>'
    )
    html = "<html><head><style>td{color:#333}</style></head><body><table>"
    while len(html) < size:
        html += item
    html += "</table></body></html>"
    message = EmailMessage()
    message["From"] = "Acme <news@acme.example>"
    message["To"] = "reader@example.net"
    message["Subject"] = "Our spring collection"
    message.set_content("Spring collection: https://shop.acme.example/spring\n" * 40)
    message.add_alternative(html, subtype="html")
    return message.as_bytes(policy=email_policy.SMTP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=2000)
    args = parser.parse_args()
    content = newsletter()
    tokens = TokenCodec([b"k" * 32], SystemClock(), max_age=365 * 86400)
    brand = Brand(name="Acme News", postal_address="1 Acme Way, Springfield")
    tag = campaign_tag("spring")

    # As the relay does it: prepared once per message, filled per recipient.
    started = time.perf_counter()
    placeholder = "optin-relay-url-bench"
    template = prepare(content, footer(brand, placeholder), placeholder=placeholder)
    for n in range(args.recipients):
        token = tokens.issue("acme", f"reader{n}@example.net", tag)
        url = f"https://relay.example.org/u/{token}"
        mailto = f"unsub+{tokens.unsubscribe_address(n + 1)}@relay.example.org"
        fill(template, list_unsubscribe_headers(url, mailto), {placeholder: url})
    rendered = (time.perf_counter() - started) / args.recipients

    # Every copy rendered from scratch (what a cache miss costs).
    started = time.perf_counter()
    for n in range(args.recipients // 10):
        token = tokens.issue("acme", f"reader{n}@example.net", tag)
        url = f"https://relay.example.org/u/{token}"
        render(content, list_unsubscribe_headers(url, None), footer(brand, url))
    scratch = (time.perf_counter() - started) / (args.recipients // 10)

    started = time.perf_counter()
    for _ in range(args.recipients):
        message = message_from_bytes(content, policy=email_policy.compat32)
        BytesGenerator(BytesIO(), mangle_from_=False).flatten(message)
    baseline = (time.perf_counter() - started) / args.recipients

    result = {
        "message_bytes": len(content),
        "recipients": args.recipients,
        "render_us_per_recipient": round(rendered * 1e6, 1),
        "render_from_scratch_us": round(scratch * 1e6, 1),
        "parse_generate_us": round(baseline * 1e6, 1),
        "ratio_render_to_parse_generate": round(rendered / baseline, 2),
        "recipients_per_second_one_core": round(1 / rendered),
    }
    print(f"message size                     {len(content):>10} bytes")
    print(f"render per recipient             {result['render_us_per_recipient']:>10} us")
    print(f"render from scratch (cache miss) {result['render_from_scratch_us']:>10} us")
    print(f"stdlib parse + generate          {result['parse_generate_us']:>10} us")
    print(f"ratio render / parse+generate    {result['ratio_render_to_parse_generate']:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
