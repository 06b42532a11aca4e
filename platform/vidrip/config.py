"""Typed job configs: pydantic v2 models loaded from YAML, with ``key=value`` overrides.

Every job has one schema, a subclass of :class:`StrictConfig`. Unknown keys and wrong types are
errors that name the key and the file::

    cfg = load_config(SampleConfig, "jobs/configs/sample.yaml", ["seed=3", "videos.count=2"])

Override values are parsed as YAML scalars (``3`` is an int, ``true`` a bool, ``[1, 2]`` a list),
and dotted keys reach into nested sections.

Paths. A field typed :data:`ConfigPath` names another config file (a pipeline step's ``config``, a
DeepSpeed JSON, the Serve config an evaluation deploys). Its value is one of:

- a bare name, without folder or suffix (``zero2``, ``train_tiny``): the config vidrip ships as package
  data (``vidrip/defaults/<name>.yaml`` or ``.json``, read with :mod:`importlib.resources`); the
  library's own defaults are such names, so they work from any folder and from an installed wheel;
- a path: relative in a YAML file, it is relative to that file's folder; on the command line (an
  override) or in code, to the current directory.

``load_config`` also takes a bare name for its ``path`` (``vidrip train --config train_tiny``). Every
other path (work and output folders: ``workdir``, ``out``, ``data_root``, ...) is relative to the
current directory, as written.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

__all__ = [
    "ConfigError",
    "ConfigPath",
    "StrictConfig",
    "apply_overrides",
    "config_file",
    "load_config",
    "located",
    "packaged_configs",
]


class StrictConfig(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


C = TypeVar("C", bound=StrictConfig)


class ConfigError(ValueError):
    """A config file or override that does not match its schema; the message names file and key."""


PACKAGED_SUFFIXES = (".yaml", ".json")


def _packaged_dir() -> Path:
    return Path(str(resources.files("vidrip") / "defaults"))


def packaged_configs() -> list[str]:
    """The names of the configs vidrip ships (``zero2``, ``train_tiny``, ...)."""
    return sorted(p.stem for p in _packaged_dir().iterdir() if p.suffix in PACKAGED_SUFFIXES)


def _is_name(ref: str | Path) -> bool:
    """A bare name (no folder, no suffix) names a packaged config; anything else is a path."""
    text = str(ref)
    return bool(text) and text not in (".", "..") and "/" not in text and "\\" not in text and not Path(text).suffix


def config_file(ref: str | Path) -> Path:
    """The file a :data:`ConfigPath` value names: a packaged config for a bare name, else the path itself."""
    if not _is_name(ref):
        return Path(ref)
    for suffix in PACKAGED_SUFFIXES:
        path = _packaged_dir() / f"{ref}{suffix}"
        if path.is_file():
            return path
    raise ConfigError(
        f"no packaged config named {str(ref)!r} (vidrip ships: {', '.join(packaged_configs())}); "
        f"a file's path needs a folder or a suffix, e.g. ./{ref}"
    )


def located(ref: str | Path) -> tuple[Path, str]:
    """The file ``ref`` names (:func:`config_file`) and how messages name it: a packaged one with its path."""
    path = config_file(ref)
    return path, str(ref) if path == Path(ref) else f"{ref} ({path})"


def _known_name(ref: str) -> str:
    if _is_name(ref):
        config_file(ref)
    return ref


class _FileReference:
    """Marks a field whose value names a config file (see :data:`ConfigPath`)."""


_FILE_REFERENCE = _FileReference()
ConfigPath = Annotated[str, _FILE_REFERENCE, AfterValidator(_known_name)]
"""Another config file: a packaged config's bare name, or a path (relative: to the YAML's folder)."""


def _field_type(field: FieldInfo) -> Any:
    """A model field's type with its Annotated metadata (which pydantic keeps apart for ``x: ConfigPath``)."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _resolve_references(tp: Any, data: Any, folder: Path) -> Any:
    """``data`` (as loaded from a YAML file in ``folder``) with the relative paths of the :data:`ConfigPath`
    fields of type ``tp`` joined to ``folder``; everything else as it was."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        if _FILE_REFERENCE in args[1:] and isinstance(data, str) and not _is_name(data):
            return os.path.normpath(folder / data)  # an absolute path stays as it is
        return _resolve_references(args[0], data, folder)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(data, dict):
        fields = tp.model_fields
        return {
            k: _resolve_references(_field_type(fields[k]), v, folder) if k in fields else v for k, v in data.items()
        }
    if origin in (Union, types.UnionType):
        for arg in args:
            out = _resolve_references(arg, data, folder)
            if out is not data:
                return out
    if origin is dict and isinstance(data, dict):
        return {k: _resolve_references(args[1], v, folder) for k, v in data.items()}
    if origin is list and isinstance(data, list):
        return [_resolve_references(args[0], v, folder) for v in data]
    return data


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
    """Load ``path`` (YAML mapping, or a packaged config's name) into ``schema``, after applying ``overrides``.

    The YAML's relative file references (:data:`ConfigPath` fields) are taken relative to its folder, the
    overrides' relative to the current directory, like every other relative path (work and output
    folders). With ``path=None`` the schema's defaults are the base. Errors raise :class:`ConfigError`.
    """
    source = f"<{schema.__name__} defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p, source = located(path)
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
        data = _resolve_references(schema, loaded, p.resolve().parent)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides, f"{source} (command-line override)")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        by_key = {item.partition("=")[0].strip(): item for item in overrides}
        raise ConfigError(_format_errors(exc, source, by_key)) from None
