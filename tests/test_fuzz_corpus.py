"""The fuzz targets over their kept seeds: every input that ever mattered stays handled.

`make fuzz` explores; this replays, in every `make test`, the seeds of `tests/fuzz/corpus/` and
the fixtures each target starts from (crashes found by fuzzing are added there when fixed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

from targets import TARGETS, seed_files


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_passes_its_target(name):
    """Each seed runs through its target without breaking a promise."""
    seeds = seed_files(name)
    assert len(seeds) >= 8, seeds
    for seed in seeds:
        TARGETS[name](seed.read_bytes())


def test_the_render_target_catches_a_broken_promise(monkeypatch):
    """Without the wire form, the long-lines seed breaks the 998-octet promise, and it says so."""
    import targets

    monkeypatch.setattr(targets, "wire_form", lambda content, **_: content)
    seed = Path(__file__).parent / "fuzz" / "corpus" / "render" / "long-lines.eml"
    with pytest.raises(AssertionError, match="octets on the wire"):
        targets.render(seed.read_bytes())
