"""Typed job configs: pydantic v2 models loaded from YAML, with ``key=value`` overrides.

Every job has one schema, a subclass of :class:`StrictConfig`. Unknown keys and wrong types are
errors that name the key and the file::

    cfg = load_config(SampleConfig, "jobs/configs/sample.yaml", ["seed=3", "videos.count=2"])

Override values are parsed as YAML scalars (``3`` is an int, ``true`` a bool, ``[1, 2]`` a list),
and dotted keys reach into nested sections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "StrictConfig", "apply_overrides", "load_config"]


class StrictConfig(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


C = TypeVar("C", bound=StrictConfig)


class ConfigError(ValueError):
    """A config file or override that does not match its schema; the message names file and key."""


def _format_errors(err: ValidationError, source: str, overrides: dict[str, str]) -> str:
    """One line per error; a key set on the command line is reported as such, not as the file's."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        origin = next(
            (
                f"{source} (command-line override {item!r})"
                for k, item in overrides.items()
                if key == k or key.startswith(k + ".")
            ),
            source,
        )
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{key}'")
        else:
            lines.append(f"{origin}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied (value parsed as YAML)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {item!r}: value is not valid YAML: {exc}") from exc
        node: Any = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[_list_index(node, part, item, source)]
                continue
            part = _existing_key(node, part)
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, (dict, list)):
                raise ConfigError(f"{source}: override {item!r}: '{part}' is not a section")
            node = child
        if isinstance(node, list):
            node[_list_index(node, parts[-1], item, source)] = value
        else:
            node[_existing_key(node, parts[-1])] = value
    return out


def _list_index(node: list, part: str, item: str, source: str) -> int:
    """``models.1.max_tokens=8``: the list index a dotted override names."""
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{source}: override {item!r}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _existing_key(node: dict, part: str):
    """The key of ``node`` that ``part`` names: YAML reads ``3:`` as the int 3, a dotted override as "3"."""
    return next((k for k in node if str(k) == part), part)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_config(schema: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Load ``path`` (YAML mapping) into ``schema``, after applying ``overrides``.

    With ``path=None`` the schema's defaults are the base. Errors raise :class:`ConfigError`.
    """
    source = str(path) if path is not None else f"<{schema.__name__} defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides, f"{source} (command-line override)")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        by_key = {item.partition("=")[0].strip(): item for item in overrides}
        raise ConfigError(_format_errors(exc, source, by_key)) from None
