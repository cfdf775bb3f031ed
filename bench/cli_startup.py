"""Start-up time of the command line: `optin-relay --help` and `optin-relay suppress check`.

Each command runs N times (default 20) as a new process, as a sysadmin's shell would, against a
scratch configuration on SQLite; the median and fastest wall time and the CPU time per call
(user + system, from the children's resource usage) are printed. With `--against REV` the same
commands of that git revision (checked out in a scratch folder, same virtualenv) run interleaved
with these, so both share the machine's noise, and the ratio is printed.

    .venv/bin/python bench/cli_startup.py [--runs 20] [--against e52978d]
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tree:
    """A source tree whose `python -m relay` is measured."""

    name: str
    path: Path
    walls: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def run(self, label: str, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.path)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "relay", *args],
            check=False,
            capture_output=True,
            env=env,
            cwd=self.path,  # `-m` puts the working folder first on the path
        )
        self.walls.setdefault(label, []).append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        self.cpu[label] = self.cpu.get(label, 0.0) + used


def scratch_config(folder: Path) -> Path:
    dev = (ROOT / "config" / "dev.yaml").read_text()
    dev = dev.replace("sqlite:///../var/relay.db", f"sqlite:///{folder}/relay.db")
    path = folder / "relay.yaml"
    path.write_text(dev.replace("../var/", f"{ROOT}/var/"))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--against", help="a git revision to measure in the same run")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = scratch_config(folder)
        commands = {
            "optin-relay --help": ["--help"],
            "optin-relay suppress check": [
                "suppress",
                "check",
                "someone@example.net",
                "--config",
                str(config),
            ],
        }
        trees = [Tree("this tree", ROOT)]
        if options.against:
            checkout = folder / "against"
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(ROOT),
                    "worktree",
                    "add",
                    "--detach",
                    str(checkout),
                    options.against,
                ],
                check=True,
                capture_output=True,
            )
            trees.append(Tree(options.against, checkout))
        try:
            for tree in trees:  # migrate once, outside the measurement
                tree.run("warm-up", commands["optin-relay suppress check"])
            for _ in range(options.runs):
                for label, args in commands.items():
                    for tree in trees:
                        tree.run(label, args)
        finally:
            if options.against:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
                    check=False,
                    capture_output=True,
                )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {options.runs} runs each")
    print(f"{'command':<28} {'tree':<12} {'median s':>9} {'min s':>7} {'CPU s/call':>11}")
    for label in commands:
        medians = []
        for tree in trees:
            walls = tree.walls[label]
            medians.append(statistics.median(walls))
            cpu = tree.cpu[label] / len(walls)
            print(
                f"{label:<28} {tree.name:<12} {medians[-1]:>9.3f} {min(walls):>7.3f} {cpu:>11.3f}"
            )
        if len(medians) == 2:
            print(f"{label:<28} {'ratio':<12} {medians[1] / medians[0]:>9.2f}x faster")


if __name__ == "__main__":
    main()
