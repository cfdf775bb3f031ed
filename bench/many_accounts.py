"""A relay for many accounts: reading the configuration, and finding an account, by their number.

For 1, 1,000 and 10,000 accounts (as `relay.testing.account_data` writes them): the seconds
`load_config` takes to read them from a YAML file and `parse_config` to validate them (start-up
and every SIGHUP reload), and the time to find the last account by id, by SMTP username and by
From domain (every MAIL, AUTH and delivery finds one). Then the reading's cost per account at
10,000 (it should not grow with the number), and each lookup's ratio of 10,000 accounts to 1
(flat lookups stay near 1).

    .venv/bin/python bench/many_accounts.py [--tree PATH]

`--tree` measures another checkout's `relay` package (same virtualenv), so two revisions can
be run one after the other: `git worktree add /tmp/before REV`. A revision without the lookup
by username or domain (or without `relay.testing.config_dict`, for the file) reports those as
not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 1000, 10_000)


def measure(count: int) -> dict[str, float | None]:
    """Parse a configuration of `count` accounts; time the lookups of the last one."""
    from relay.configfile import load_config  # noqa: PLC0415 - after --tree
    from relay.testing import account_data, make_config  # noqa: PLC0415

    accounts = [account_data(f"a{n}") for n in range(count)]
    read: float | None = None
    try:
        from relay.testing import config_dict  # noqa: PLC0415 - not in every revision
    except ImportError:
        pass
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "relay.yaml"
            path.write_text(yaml.safe_dump(config_dict(accounts=accounts)))
            started = time.perf_counter()
            load_config(path)
            read = time.perf_counter() - started
    started = time.perf_counter()
    config = make_config(accounts=accounts)
    parse = time.perf_counter() - started
    last = config.accounts[-1]
    lookups: dict[str, Any] = {
        "by_id": lambda: config.account(last.id),
        "by_username": getattr(config, "account_by_username", None),
        "by_domain": getattr(config, "account_for_domain", None),
    }
    arguments = {"by_id": (), "by_username": (last.username,), "by_domain": (last.from_domains[0],)}
    result: dict[str, float | None] = {
        "read_s": None if read is None else round(read, 3),
        "parse_s": round(parse, 3),
    }
    for name, lookup in lookups.items():
        if lookup is None:
            result[f"{name}_us"] = None
            continue
        found = lookup(*arguments[name])
        assert found is last, name  # noqa: S101 - a benchmark of the wrong answer is worthless
        runs = 200
        seconds = timeit.timeit(lambda f=lookup, a=arguments[name]: f(*a), number=runs) / runs
        result[f"{name}_us"] = round(seconds * 1e6, 2)
    return result


def main() -> int:
    """Measure each size and print a line per figure, then the ratios and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    results = {count: measure(count) for count in SIZES}
    for count, figures in results.items():
        for name, value in figures.items():
            shown = "not measured" if value is None else value
            print(f"{count:>6} accounts: {name:<16} {shown}")
    ratios: dict[str, float | None] = {}
    for name, small in results[SIZES[0]].items():
        big = results[SIZES[-1]][name]
        if not name.endswith("_us"):  # reading grows with the file; per account it should not
            per = None if big is None else round(1000 * big / SIZES[-1], 3)
            print(f"per account at {SIZES[-1]}: {name.removesuffix('_s'):<11} {per} ms")
            continue
        ratios[name] = None if small is None or big is None else round(big / max(small, 1e-9), 1)
        print(f"ratio {SIZES[-1]} to {SIZES[0]}: {name:<16} {ratios[name]}")
    print(json.dumps({"tree": str(args.tree), "results": results, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
