"""The docs are held to the code: every policy, setting, config key and module is documented.

Also the layout's own rules: only relay/storage touches a database driver, no module imports
another in a cycle, and no test module imports another.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from typing import Any

from conftest import ROOT
from pydantic import BaseModel

from relay.config import Config
from relay.mail.signing import generate_key
from relay.policyfiles import policy_module, policy_names

DOCS = ROOT / "docs"
DRIVERS = {"asyncpg", "aiosqlite", "sqlite3", "psycopg", "psycopg2"}


def sections(text: str, level: str) -> dict[str, str]:
    """The text under each `LEVEL `name`` heading, by name, up to the next heading at or above.

    Several names may share one heading: `## `inbound`, `web``.
    """
    found: dict[str, str] = {}
    pattern = re.compile(
        rf"^{level} (`[a-z_]+(?:\[\])?`(?:, `[a-z_]+(?:\[\])?`)*)\s*$", re.MULTILINE
    )
    matches = list(pattern.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end]
        stop = re.search(rf"^#{{1,{len(level) - 1}}} ", body, flags=re.MULTILINE)
        for name in re.findall(r"`([a-z_]+)(?:\[\])?`", match.group(1)):
            found[name] = body[: stop.start()] if stop else body
    return found


def named(key: str, text: str) -> bool:
    """Whether `key` stands in backticks in `text`, alone or in a dotted or listed key."""
    return re.search(rf"`[^`\n]*\b{re.escape(key)}\b[^`\n]*`", text) is not None


def test_every_policy_is_documented_with_its_settings():
    """docs/policies.md has a section per policy naming each of its settings, and no other."""
    documented = sections((DOCS / "policies.md").read_text(), "###")
    assert set(documented) == set(policy_names())
    for name in policy_names():
        settings: type[BaseModel] = policy_module(name).Settings
        missing = [key for key in settings.model_fields if not named(key, documented[name])]
        assert missing == [], f"policies.{name}: undocumented settings {missing}"


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of a configuration model, nested models' keys under their parent's."""
    paths = []
    for key, field in model.model_fields.items():
        paths.append(f"{prefix}{key}")
        for inner in _models(field.annotation):
            paths.extend(field_paths(inner, f"{prefix}{key}."))
    return paths


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in getattr(annotation, "__args__", ()) for found in _models(arg)]


def test_every_config_key_is_documented():
    """Each key of the configuration is named in its top-level section of configuration.md."""
    text = (DOCS / "configuration.md").read_text()
    documented = sections(text, "##")
    paths = field_paths(Config)
    assert len(paths) > 100
    missing = []
    for path in paths:
        top, *rest = path.split(".")
        if not rest:  # a top-level key: a section of its own, or named where it belongs
            known = top in documented or named(top, text)
        else:
            known = top in documented and named(rest[-1], documented[top])
        if not known:
            missing.append(path)
    assert missing == []


def test_the_example_sets_every_documented_key(tmp_path, tls_files):
    """config/relay.example.yaml names every key, and `check-config` passes on it.

    Named: set, or commented out where the operator must choose (upstream credentials, the
    terms). `check-config` runs on it once its TLS and DKIM files exist.
    """
    text = (ROOT / "config" / "relay.example.yaml").read_text()
    tops = list(re.finditer(r"^(?:# )?([a-z_]+):", text, re.MULTILINE))
    blocks = {
        match.group(1): text[match.start() : tops[i + 1].start() if i + 1 < len(tops) else None]
        for i, match in enumerate(tops)
    }
    missing = []
    for path in field_paths(Config):
        top, *rest = path.split(".")
        block = blocks.get(top, "")
        leaf = rest[-1] if rest else top
        if not re.search(rf"^[ \t]*(?:#[ \t]*)?(?:- )?{leaf}:", block, re.MULTILINE):
            missing.append(path)
    assert missing == []

    cert, key = tls_files
    keys = {
        key_file: generate_key("rsa-sha256")
        for key_file in re.findall(r"/etc/\S+dkim\S+\.pem", text)
    }
    for number, (name, pem) in enumerate(keys.items()):
        (tmp_path / f"dkim{number}.pem").write_bytes(pem)
        text = text.replace(name, str(tmp_path / f"dkim{number}.pem"))
    text = text.replace("/etc/optin-relay/tls/fullchain.pem", str(cert))
    text = text.replace("/etc/optin-relay/tls/privkey.pem", str(key))
    text = text.replace("sqlite:////var/lib/optin-relay/relay.db", f"sqlite:///{tmp_path}/r.db")
    (tmp_path / "relay.yaml").write_text(text)
    checked = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", str(tmp_path / "relay.yaml")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout


def modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for folder in ("relay", "policies")
        for path in (ROOT / folder).rglob("*.py")
    }


def test_architecture_lists_every_module():
    """docs/architecture.md's table names exactly the modules of relay/ and policies/."""
    text = (DOCS / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `((?:relay|policies)/[a-z_/]+\.py)` \|", text, re.MULTILINE))
    assert listed == modules()


def imports(path: str) -> set[str]:
    """The modules `path` imports (absolute imports; at any depth, TYPE_CHECKING included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_storage_touches_a_database_driver():
    """asyncpg, aiosqlite and sqlite3 are imported under relay/storage/ and nowhere else."""
    users = {
        path for path in modules() if any(name.split(".")[0] in DRIVERS for name in imports(path))
    }
    assert users
    assert {path for path in users if not path.startswith("relay/storage/")} == set()


def test_no_import_cycles():
    """No module reaches itself through imports (type-only imports count too)."""
    names = {
        path.removesuffix(".py").removesuffix("/__init__").replace("/", "."): path
        for path in modules()
    }
    graph = {
        name: {i for i in imports(path) if i in names and i != name} for name, path in names.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = [*trail[trail.index(name) :], name]
            raise AssertionError(" -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_test_modules_stand_alone():
    """No test module imports another: shared builders live in tests/ helpers (not test_*).

    A test module that imports another runs that module's fixtures and collection side effects
    too, and ties the two together: moving or renaming a test breaks a stranger.
    """
    tests = ROOT / "tests"
    helpers = {path.stem for path in tests.glob("*.py") if not path.stem.startswith("test_")}
    assert {"conftest", "messages", "receiver", "reports"} <= helpers
    found = {
        f"{path.name} imports {name}"
        for path in sorted(tests.rglob("test_*.py"))
        for name in imports(path.relative_to(ROOT).as_posix())
        if name.split(".")[0].startswith("test_")
    }
    assert found == set()


def test_docs_stay_inside_the_repository():
    """README and docs link to nothing outside the checkout."""
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        assert "../shared" not in path.read_text(), path


def test_releases_are_numbered_and_name_their_commits():
    """pyproject.toml and `optin-relay --version` say the newest release of the CHANGELOG.

    Each released section names the commit it is (tags may not travel with a clone), and that
    commit is in the history.
    """
    import tomllib

    from relay import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"(?m)^## \[([^\]]+)\](.*)\n\n(.*)", changelog)
    assert sections[0][0] == "Unreleased"
    released = sections[1:]
    assert released, "no release in the CHANGELOG"
    assert project["version"] == __version__ == released[0][0]
    for version, dated, first_line in released:
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", dated), version
        commit = re.match(r"Commit ([0-9a-f]{7,40})\.", first_line)
        assert commit, f"{version}: its first line names its commit"
        found = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit.group(1)}^{{commit}}"],
            check=False,
        )
        assert found.returncode == 0, f"{version}: commit {commit.group(1)} is not in the history"
    printed = subprocess.run(
        [sys.executable, "-m", "relay", "--version"], capture_output=True, text=True, check=True
    )
    assert printed.stdout.strip() == f"optin-relay {__version__}"
