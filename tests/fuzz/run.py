"""Coverage-guided fuzzing of one target with atheris (libFuzzer): `make fuzz` runs every target.

    .venv/bin/python tests/fuzz/run.py TARGET [libFuzzer options...]

The target's seeds are `tests/fuzz/corpus/TARGET/` and the fixtures of its kind (`SEEDS`); what
the run finds goes to
`var/fuzz/TARGET/` and never into the repository unless a person adds it. A crash writes its
input as `var/fuzz/crash-*` and exits non-zero: copy that file into the corpus when fixing it,
so `tests/test_fuzz_corpus.py` keeps it fixed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

with atheris.instrument_imports(include=["relay", "policies", "email", "targets"]):
    from targets import SEEDS, TARGETS


def main() -> None:
    """Fuzz the target named first on the command line."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    name = sys.argv[1]
    found = ROOT / "var" / "fuzz" / name
    found.mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], *sys.argv[2:], f"-artifact_prefix={found.parent}/", str(found)]
    args += [str(folder) for folder in SEEDS[name]]
    atheris.Setup(args, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
