"""The configuration file: YAML read once, the files it includes, each problem's file and line.

Only this module reads the relay's YAML; relay.config validates what it read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from relay.config import parse_config
from relay.errors import ConfigError

if TYPE_CHECKING:
    from relay.config import Config

# libyaml's safe loader where PyYAML was built with it (about 8x faster), else the pure one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: Path) -> Config:
    """Read and validate the YAML file at `path` and the files it includes.

    `include: [accounts.d/*.yaml]` (paths relative to this file's folder) adds the accounts of
    each matching file, in name order: a file holds one account, or a list of them. Every
    problem names its file and line; one broken file fails the whole configuration (a reload
    then keeps the old one).
    """
    data, main = _read_yaml(path)
    if not isinstance(data, dict):
        return parse_config(data)
    origins: list[tuple[Path, yaml.Node | None]] = [(path, None)] * len(data.get("accounts") or [])
    included = data.pop("include", None)
    patterns = [included] if isinstance(included, str) else included or []
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError([f"{path}: include: expected a list of file patterns"])
    if patterns:
        more, more_origins = _included(path.parent, patterns)
        data["accounts"] = [*(data.get("accounts") or []), *more]
        origins += more_origins

    def where(loc: tuple[int | str, ...]) -> str | None:
        index = loc[1] if len(loc) > 1 and loc[0] == "accounts" else None
        if isinstance(index, int) and index < len(origins) and origins[index][1] is not None:
            source, node = origins[index]
            return f"{source}:{_line(node, loc[2:])}"
        return f"{path}:{_line(main, loc)}"

    return parse_config(data, base_dir=path.parent.resolve(), where=where)


def _included(
    folder: Path, patterns: list[str]
) -> tuple[list[dict[str, Any]], list[tuple[Path, yaml.Node | None]]]:
    """The accounts of the files `patterns` match, and where each came from."""
    accounts: list[dict[str, Any]] = []
    origins: list[tuple[Path, yaml.Node | None]] = []
    problems: list[str] = []
    for pattern in patterns:
        given = Path(pattern)
        base, relative = folder, str(given)
        if given.is_absolute():  # Path.glob takes relative patterns only
            base, relative = Path(given.anchor), str(given.relative_to(given.anchor))
        for name in sorted(base.glob(relative)):
            try:
                more, node = _read_yaml(name)
            except ConfigError as exc:
                problems += exc.problems
                continue
            items = more if isinstance(more, list) else [more]
            nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
            for item, item_node in zip(items, nodes, strict=False):
                if not isinstance(item, dict):
                    line = item_node.start_mark.line + 1 if item_node is not None else 1
                    problems.append(f"{name}:{line}: expected an account (a mapping of its keys)")
                    continue
                accounts.append(item)
                origins.append((name, item_node))
    if problems:
        raise ConfigError(problems)
    return accounts, origins


def _read_yaml(path: Path) -> tuple[object, yaml.Node | None]:
    """The data of a YAML file and its node tree (for line numbers)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    # One parse for both: the data is constructed from the node tree that gives the lines (as
    # yaml.load does, which would parse the text again: half the reading of a large file).
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: not valid YAML: {problem}"]) from exc
    finally:
        loader.dispose()
    return data, node


def _line(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """The line (from 1) of the deepest node on `loc`'s path in `node`'s tree."""
    if node is None:
        return 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1
