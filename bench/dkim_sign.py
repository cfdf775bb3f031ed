"""DKIM signatures per second: stock dkimpy RSA-2048, the relay's signer, and Ed25519.

All three sign the same rendered newsletter in one run; the ratio relay/stock is printed.

    .venv/bin/python bench/dkim_sign.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import time

import dkim

from relay.mail.signing import Signer, generate_key, make_key, signed_headers

MESSAGE = (
    b"From: Acme <news@acme.example>\r\nTo: reader@example.net\r\nSubject: Spring collection\r\n"
    b"Date: Mon, 1 Mar 2027 09:00:00 +0000\r\nMessage-ID: <1@acme.example>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://relay.example.org/u/TOKEN>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
) + b"Our spring collection has arrived, with a few pieces picked for you.\r\n" * 60


def rate(work, seconds: float) -> float:
    count = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        work()
        count += 1
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rsa_pem = generate_key("rsa-sha256")
    rsa = make_key("acme.example", "r1", "rsa-sha256", rsa_pem)
    ed = make_key("acme.example", "e1", "ed25519-sha256", generate_key("ed25519-sha256"))
    include = signed_headers(MESSAGE)

    def stock() -> None:
        dkim.sign(
            MESSAGE,
            b"r1",
            b"acme.example",
            rsa.dkimpy_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )

    relay_rsa = Signer([rsa])
    relay_ed = Signer([ed])
    result = {
        "message_bytes": len(MESSAGE),
        "stock_dkimpy_rsa2048_per_s": round(rate(stock, args.seconds)),
        "relay_rsa2048_per_s": round(
            rate(lambda: relay_rsa.sign(MESSAGE, "acme.example"), args.seconds)
        ),
        "relay_ed25519_per_s": round(
            rate(lambda: relay_ed.sign(MESSAGE, "acme.example"), args.seconds)
        ),
    }
    result["ratio_relay_to_stock_rsa"] = round(
        result["relay_rsa2048_per_s"] / result["stock_dkimpy_rsa2048_per_s"], 1
    )
    print(
        f"stock dkimpy, RSA-2048           {result['stock_dkimpy_rsa2048_per_s']:>8} signatures/s"
    )
    print(f"relay signer, RSA-2048 (OpenSSL) {result['relay_rsa2048_per_s']:>8} signatures/s")
    print(f"relay signer, Ed25519            {result['relay_ed25519_per_s']:>8} signatures/s")
    print(f"ratio relay / stock (RSA)        {result['ratio_relay_to_stock_rsa']:>8}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
