"""Start-up time of the command line: `optin-relay --help` and `optin-relay suppress check`.

Runs each command N times (default 20) as a new process, as a sysadmin's shell would, against a
scratch configuration on SQLite, and prints the median and the fastest wall time, and the CPU
time per call (user + system, from the children's resource usage).

    .venv/bin/python bench/cli_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "relay"]


def scratch_config(folder: Path) -> Path:
    dev = (ROOT / "config" / "dev.yaml").read_text()
    path = folder / "relay.yaml"
    path.write_text(dev.replace("sqlite:///../var/relay.db", f"sqlite:///{folder}/relay.db"))
    return path


def measure(args: list[str], runs: int) -> tuple[float, float, float]:
    walls = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*CLI, *args], check=False, capture_output=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / runs
    return statistics.median(walls), min(walls), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as folder:
        config = scratch_config(Path(folder))
        check = ["suppress", "check", "someone@example.net", "--config", str(config)]
        subprocess.run([*CLI, *check], check=True, capture_output=True, cwd=ROOT)  # migrate once
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {runs} runs each")
        print(f"{'command':<44} {'median s':>9} {'min s':>7} {'CPU s/call':>11}")
        for name, args in (
            ("optin-relay --help", ["--help"]),
            ("optin-relay suppress check", check),
        ):
            median, fastest, cpu = measure(args, runs)
            print(f"{name:<44} {median:>9.3f} {fastest:>7.3f} {cpu:>11.3f}")


if __name__ == "__main__":
    main()
