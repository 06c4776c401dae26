"""Reading a config: the file and its YAML (with the line of every key), ``a.b=value`` overrides, and the one
:class:`~ikd.errors.ConfigError` that names every problem (YAML line, closest known key for a typo).

The models themselves live in :mod:`ikd.config`; nothing here imports it (it imports this module).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

from ikd.errors import ConfigError


# ---- the file and its YAML ------------------------------------------------------------------------
def read_text(path: str | Path) -> str:
    """The text of the config file at ``path``: ConfigError naming it when it is missing, a folder, unreadable, not
    UTF-8 (with the line) or holds no key at all."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("is a folder, not a config file" if p.is_dir() else "file not found", str(path))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"line {line}: not valid UTF-8 text ({exc.reason} at byte {exc.start})", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror or exc})", str(path)) from None
    if not any(ln.strip() and not ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ConfigError("the file is empty (no YAML mapping); write at least one key, e.g. 'seed: 42'", str(path))
    return text


def parse_yaml(text: str, source: str | None) -> tuple[Any, dict[str, int]]:
    """The data of YAML (or JSON) ``text`` and the line of each dotted key; ConfigError for bad YAML (with the line
    and column) or a key set twice."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{at}not valid YAML: {what}", source) from None
    if node is not None:
        line_map(node, "", lines, source)
    return raw, lines


def line_map(node: yaml.Node, prefix: str, lines: dict[str, int], source: str | None = None) -> None:
    """Fill ``lines`` with the line of each key under ``node`` (dotted, after ``prefix``); a key set twice is an
    error (YAML would keep the last value silently)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            if key in lines:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key '{key}' is set twice (first on line {lines[key]})",
                    source,
                )
            lines[key] = key_node.start_mark.line + 1
            line_map(value_node, key + ".", lines, source)


# ---- overrides ------------------------------------------------------------------------------------
def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str | None) -> dict:
    """Return a copy of ``raw`` with each ``a.b=value`` applied; the value is parsed as YAML."""
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r} must look like section.key=value")
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = parsed
    if problems:
        raise ConfigError(problems, source)
    return out


def mark_overrides(lines: Mapping[str, int | str], overrides: list[str] | tuple[str, ...]) -> dict[str, int | str]:
    """``lines`` with each overridden key (and the keys under it) blamed on its override, ``--set a.b=value``,
    instead of the YAML line the override replaced."""
    out = dict(lines)
    for item in overrides:
        key = item.partition("=")[0].strip()
        for k in [k for k in out if k == key or k.startswith(key + ".")]:
            del out[k]
        out[key] = f"--set {item}"
    return out


def where(key: str, lines: Mapping[str, int | str]) -> str:
    """Where the value of dotted ``key`` came from, as a message prefix: its YAML line, the override that set it or
    a section above it, or nothing."""
    found = lines.get(key)
    if isinstance(found, int):
        return f"line {found}: "
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = lines.get(".".join(parts[:n]))
        if isinstance(found, str):
            return f"{found}: "
    return ""


# ---- error reporting ------------------------------------------------------------------------------
def line_errors(exc: ValidationError, prefix: tuple[str, ...]) -> list[InitErrorDetails]:
    """A ValidationError's errors as line errors again (to re-raise them together), their keys under ``prefix``."""
    out: list[InitErrorDetails] = []
    for e in exc.errors():
        line: InitErrorDetails = {"type": e["type"], "loc": (*prefix, *e["loc"]), "input": e["input"]}
        if "ctx" in e:
            line["ctx"] = e["ctx"]
        out.append(line)
    return out


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model``, nested sections included, and the sections a model adds through an
    ``extra_sections()`` classmethod (the strategies' sections of ``distill``)."""
    keys = []
    nested = {name: field.annotation for name, field in model.model_fields.items()}
    extra = getattr(model, "extra_sections", None)
    if extra is not None:
        nested |= extra()
    for name, ann in nested.items():
        keys.append(prefix + name)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(known_keys(ann, prefix + name + "."))
    return keys


#: Keys of ``distill`` that became strategy options (``distill.<strategy>.<key>``), by their old name.
_RENAMED = {"prokt_gamma": "gamma"}


def _moved_to_sections(key: str, known: list[str]) -> list[str]:
    """For ``distill.<k>`` where ``k`` is now an option of one or more strategies: ``distill.<strategy>.<k>``."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] != "distill":
        return []
    name = _RENAMED.get(parts[1], parts[1])
    return [k for k in known if k.count(".") == 2 and k.startswith("distill.") and k.endswith("." + name)]


def describe(exc: ValidationError, lines: Mapping[str, int | str], model: type[BaseModel]) -> list[str]:
    """One line per problem of ``exc`` (a validation of ``model``): the YAML line or the ``--set`` override where
    there is one (:func:`mark_overrides`), the key, and for an unknown key the closest known one."""
    known = known_keys(model)
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        key = ".".join(loc)
        at = where(key, lines)
        if err["type"] == "extra_forbidden":
            moved = _moved_to_sections(key, known)
            if moved:
                problems.append(
                    f"{at}unknown key '{key}': strategy options live in the strategy's own section: "
                    + ", ".join(f"'{k}'" for k in moved)
                )
                continue
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if not near:  # a typo in the last part only
                section = ".".join(loc[:-1])
                cands = [k.rsplit(".", 1)[-1] for k in known if k.startswith(section + ".")] if section else known
                tail = difflib.get_close_matches(loc[-1], cands, n=1, cutoff=0.5)
                near = [f"{section}.{tail[0]}" if section else tail[0]] if tail else []
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            problems.append(f"{at}unknown key '{key}'{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            problems.append(f"{at}{key or 'config'}: {msg}{got}")
    return problems
