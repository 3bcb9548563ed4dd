"""YAML as sedaug reads it (recipes, sweep files, `--set` values): safe, duplicate keys refused, `1e-3` a float."""

from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from sedaug.errors import UserError, one_line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`) and only true and
    false as booleans (YAML 1.1 also reads yes, no, on and off so: `compile: yes` was silently true)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


class _StrictDumper(yaml.SafeDumper):
    """SafeDumper that quotes a string `_StrictLoader` would read as a float (a recipe named "1e5")."""


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_BOOL = "tag:yaml.org,2002:bool"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
for _cls in (_StrictLoader, _StrictDumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
        list("-+0123456789."),
    )


def dump_yaml(data: Any) -> str:
    """YAML that `parse_yaml` reads back as `data` (keys in their order)."""
    return yaml.dump(data, Dumper=_StrictDumper, sort_keys=False)


def one_line_yaml(value: Any) -> str:
    """`value` as YAML on one line (`[1, 2]`, `{a: 1}`, `'0.1'`), as a message quotes what was given."""
    try:
        text = yaml.dump(value, Dumper=_StrictDumper, default_flow_style=True, width=float("inf"))
    except yaml.YAMLError:  # no YAML value (a numpy number, a Path given from Python)
        return repr(value)
    text = text.strip().removesuffix("\n...")  # a scalar's end-of-document mark
    return repr(value) if "\n" in text else text


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:  # where the parser stopped, not its "<unicode string>" and a caret
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = "; ".join(filter(None, [e.context, e.problem]))
        raise UserError(f"{where}: invalid YAML{at}: {' '.join(what.split())}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where}: invalid YAML: {one_line(e)}") from None


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file (`what`: "recipe", "sweep file"...), parsed as above; unreadable or not text, one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a YAML {what} (byte {e.start} is not UTF-8 text)") from None
    return parse_yaml(text, str(path))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML) to a nested dict, in place, and return it."""
    done: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key.path=value")
        parsed = parse_yaml(value, f"--set {key}")
        if (comment := _comment(value, parsed)) is not None:  # a path `runs/a #2` would silently be `runs/a`
            quoted = f"{key}='" + value.strip().replace("'", "''") + "'"  # YAML's single quotes: no escapes
            shell = f'"{quoted}"' if not set(quoted) & set('"$`\\!') else shlex.quote(quoted)
            example = f" (--set {shell})" if "\n" not in value else ""  # the message stays one line
            raise UserError(f"--set {item!r}: YAML reads {comment!r} as a comment: leave it out, or quote the value"
                            + example)
        try:
            set_key(raw, key, parsed)
        except ValueError as e:
            # An earlier --set that made a section a value is the one to change (--set optim=3 --set optim.lr=0.1).
            earlier = next((d for d in reversed(done) if key.startswith(f"{d.partition('=')[0].strip()}.")), None)
            blame = f" (after --set {earlier!r})" if earlier else ""
            raise UserError(f"--set {item!r}: {e}{blame}") from None
        done.append(item)
    return raw


_MARK = "\ue000"  # a private-use character standing in for one `#`


def _comment(value: str, parsed: Any) -> str | None:
    """The comment YAML dropped from a --set value (a `#` after a space or a line's start, outside quotes: read as
    text instead, it changes what the value is), to its line's end; or None."""

    def unmarked(node: Any) -> Any:
        if isinstance(node, str):
            return node.replace(_MARK, "#")
        if isinstance(node, list):
            return [unmarked(n) for n in node]
        return {unmarked(k): unmarked(v) for k, v in node.items()} if isinstance(node, dict) else node

    for m in re.finditer(r"(?:^|(?<=\s))#", value, flags=re.MULTILINE):
        try:
            as_text = unmarked(parse_yaml(value[: m.start()] + _MARK + value[m.end():], "--set"))
        except UserError:  # text where YAML allows none (after a closing bracket): it was a comment
            as_text = None
        if as_text != parsed:
            return value[m.start():].split("\n", 1)[0].strip()
    return None


# ---------------------------------------------------------------------------------------------- dotted keys


def set_key(raw: dict, key: str, value: Any) -> None:
    """raw[a][b][c] = value for key "a.b.c", creating sections; ValueError when a parent is not a section."""
    *parents, leaf = key.split(".")
    # An item's index below a key (model.cnn_filters.0); a first part that is a number is no key at all.
    if (index := next((i for i, part in enumerate(parents + [leaf]) if i and part.isdigit()), None)) is not None:
        raise ValueError(f"a list's items are not set one by one: give {'.'.join(parents[:index])} the whole list")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


_REQUIRED = object()


def get_key(raw: dict, key: str, default: Any = _REQUIRED) -> Any:
    """raw[a][b][c] for key "a.b.c"; when it is not there, `default`, or without one KeyError (TypeError past a
    leaf)."""
    node: Any = raw
    try:
        for part in key.split("."):
            node = node[part]
    except (KeyError, TypeError):
        if default is _REQUIRED:
            raise
        return default
    return node


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two nested dicts differ, in order of appearance ("(top)": not both dicts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "(top)"]


def blamed_override(key: str, overridden) -> str | None:
    """The `--set` key (of `overridden`) that a problem at dotted `key` comes from: the key itself, below it (a part
    of its value), or above it (a typo in its section's name); None when the file gave that value."""
    return next((o for o in overridden if key and (key == o or key.startswith((f"{o}.", f"{o}["))
                                                    or o.startswith(f"{key}."))), None)


def nearest(name: str, known: list[str]) -> str | None:
    """The key of `known` a typo `name` most likely meant (`epoch` -> epochs, `grace` -> grace_epochs), if any."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    starting = [k for k in known if k.startswith(name)] if len(name) >= 3 else []  # `s` would mean anything
    return close[0] if close else starting[0] if len(starting) == 1 else None
