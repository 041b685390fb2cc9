"""Read YAML configs into ``Config``: ``_base_`` inheritance, dotted overrides, strict types.

A config file is plain YAML data (read with ``yaml.safe_load`` only) whose optional
top-level ``_base_`` names one file or a list of files, relative to the including file.
Bases are merged first, in list order and recursively, then the file itself on top:
mappings merge key by key, lists and scalars replace. Overrides such as
``model.test.alpha=0.4`` are applied last; their values are YAML scalars or flow
sequences (``[0.5, 1, 2]``), and ``none`` means null for any optional field.

The merged tree is then converted to the dataclasses of ``iadet.config.schema``: an
unknown key, a wrong type, a number that is not finite (``.inf``, ``.nan``, an integer
beyond the float range) or an out-of-range value raises ``ConfigError`` naming the
dotted key, the file or override that set it, and the closest valid keys or choices.
YAML aliases are allowed, but not one inside the mapping or list it names.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .schema import Config, ConfigError

BASE_KEY = "_base_"
_Sources = dict[str, str]  # dotted key -> where it was last set: a file, or "override 'k=v'"


# ----------------------------------------------------------------------------- files


def _read_yaml(path: Path) -> dict:
    """Parse one file with ``yaml.safe_load``; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(
            f"{path} could not be read as plain YAML data: {e.problem}. iadet configs are "
            f"read with yaml.safe_load, which refuses tags such as !!python/...; write the "
            f"value itself.") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: a bad date, a huge int
        problem = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ConfigError(f"{path} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level, "
                          f"got {type(data).__name__}")
    _check_aliases(data, "", str(path))
    return data


MAX_VALUES = 100_000  # far more than any config holds; YAML aliases can repeat a mapping exponentially


def _check_aliases(data: Any, prefix: str, where: str) -> None:
    """Refuse what YAML aliases can make of plain data: a mapping or list that contains itself
    (``model: &a {head: *a}``), which has no finite value, or a tree of more than
    ``MAX_VALUES`` values. ``prefix``: the dotted key of ``data``; ``where``: the file, or
    "override 'k=v'"."""
    count = 0
    stack = [(data, prefix, ())]  # value, its dotted key, the ids of the mappings/lists holding it
    while stack:
        value, key, holders = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_VALUES} values through "
                              "YAML aliases; write the config out without them")
        if isinstance(value, dict):
            children = [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        if id(value) in holders:
            raise ConfigError(f"the YAML alias in {where} refers to a mapping or list that contains it; a value "
                              "cannot contain itself, write it out", key=key)
        holders += (id(value),)
        stack += [(v, k, holders) for k, v in children]


def _base_paths(data: dict, path: Path) -> list[Path]:
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{BASE_KEY} in {path} must be a path or a list of paths, "
                          f"got {bases!r}")
    resolved = []
    for base in bases:
        base_path = (path.parent / Path(base).expanduser()).resolve()  # absolute stays
        if not base_path.is_file():
            raise ConfigError(f"base config {base!r} (looked for {base_path}) does not exist; "
                              f"it is named in {BASE_KEY} of {path}")
        resolved.append(base_path)
    return resolved


def _load_tree(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, _Sources, list[Path]]:
    """Merge ``path`` over its bases -> (tree, sources of its keys, files in merge order)."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{BASE_KEY} inheritance cycle: {cycle}")
    data = _read_yaml(path)
    tree: dict = {}
    sources: _Sources = {}
    files: list[Path] = []
    for base in _base_paths(data, path):
        base_tree, base_sources, base_files = _load_tree(base, (*chain, path))
        tree = _deep_merge(tree, base_tree)
        sources.update(base_sources)
        files += [f for f in base_files if f not in files]
    sources.update({key: str(path) for key in _dotted_keys(data)})
    return _deep_merge(tree, data), sources, files + [path]


def _deep_merge(base: dict, update: dict) -> dict:
    """A new dict: ``update`` over ``base``; mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys += _dotted_keys(value, dotted + ".")
    return keys


def _resolve_path(path: Union[str, Path]) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"config file not found: {path}")
    return resolved


def config_files(path: Union[str, Path]) -> list[Path]:
    """Every file ``load_config(path)`` reads, absolute, bases first, in merge order."""
    return _load_tree(_resolve_path(path))[2]


# ------------------------------------------------------------------------- overrides


def _parse_override(opt: str) -> tuple[str, Any]:
    if not isinstance(opt, str):
        raise ConfigError(f"override {opt!r} must be a key=value string")
    key, sep, text = opt.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {opt!r} must look like key=value, "
                          f"e.g. model.test.alpha=0.4")
    if not text.strip():
        raise ConfigError(f"override {opt!r} has no value; write {key}=null to clear it")
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: a bad date, a huge int
        problem = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ConfigError(f"override {opt!r}: value is not a YAML scalar or list: {problem}") from None
    _check_aliases(value, key, f"override {opt!r}")
    return key, value


def _apply_overrides(tree: dict, sources: _Sources, opts: list[str]) -> None:
    """Set each ``key=value`` of ``opts`` in ``tree`` (in place), checking the key path."""
    if isinstance(opts, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got the string {opts!r}")
    for opt in opts:
        key, value = _parse_override(opt)
        parts = key.split(".")
        cls = Config
        node = tree
        for depth, part in enumerate(parts):
            hints = _field_types(cls)
            here = ".".join(parts[: depth + 1])
            if part not in hints:
                raise _unknown_key(here, hints, f"override {opt!r}")
            if depth == len(parts) - 1:
                break
            cls = hints[part]
            if not dataclasses.is_dataclass(cls):
                raise ConfigError(f"is a value, not a section, so {key} does not exist "
                                  f"(override {opt!r})", key=here)
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot apply override {opt!r}: the value {child!r} "
                                  f"(set in {sources.get(here, 'the config')}) is not a "
                                  f"mapping", key=here)
            node = child
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = _deep_merge(node[last], value)
        else:
            node[last] = value
        tree_value = value if isinstance(value, dict) else {}
        for sub in [key] + [f"{key}.{k}" for k in _dotted_keys(tree_value)]:
            sources[sub] = f"override {opt!r}"


# ------------------------------------------------------------------------ conversion


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, hints: dict, source: Optional[str]) -> ConfigError:
    section, _, name = key.rpartition(".")
    prefix = f"{section}." if section else ""
    where = f" (set in {source})" if source else ""
    close = difflib.get_close_matches(name, list(hints), n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(prefix + c for c in close)}?" if close else
            f"valid keys{' under ' + section if section else ''}: {', '.join(hints)}")
    return ConfigError(f"unknown key{where}; {hint}", key=key)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys"
    return tp.__name__


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _convert(value: Any, tp: Any, key: str, sources: _Sources) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted (int -> float)."""
    source = _source_of(key, sources)
    where = f" (set in {source})" if source else ""

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(f"expected {_type_name(tp)}, got {_describe(value)}{where}{extra}",
                           key=key)

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, key, sources)
    if origin is Union:  # Optional[X]: null, or "none" in any case, means None
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _convert(value, inner, key, sources)
        except ConfigError:
            if inner is float and _is_number(value):  # a number that is not finite: the precise reason
                raise
            raise fail() from None
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        raise fail(f"; did you mean {close[0]!r}?" if close else "")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        return [_convert(v, args[0], f"{key}[{i}]", sources) for i, v in enumerate(value)]
    if tp is float:
        if _is_number(value):
            try:
                number = float(value)
            except OverflowError:  # an int beyond 1.8e308
                raise ConfigError(f"must be a finite number, got an integer of "
                                  f"{round(value.bit_length() * math.log10(2))} digits{where}", key=key) from None
            if not math.isfinite(number):
                raise ConfigError(f"must be a finite number, got {value}{where}", key=key)
            return number
        if isinstance(value, str) and _is_numeric_text(value):
            raise fail(f"; YAML reads {value!r} as a string, write it with a dot and a "
                       f"signed exponent, e.g. 1.0e-4")
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp in (bool, str):
        if isinstance(value, tp):
            return value
        raise fail()
    raise TypeError(f"iadet.config: no conversion for annotation {tp!r} of {key}")


def _is_numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _source_of(key: str, sources: _Sources) -> Optional[str]:
    """Where ``key`` (or the nearest enclosing key, for list items) was last set."""
    key = key.split("[", 1)[0]
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return None


def _build(cls: type, data: dict, prefix: str, sources: _Sources) -> Any:
    hints = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in hints:
            raise _unknown_key(key, hints, _source_of(key, sources))
        kwargs[name] = _convert(value, hints[name], key, sources)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a value check of __post_init__: e.key is the field name
        if e.key is None:
            raise
        key = f"{prefix}.{e.key}" if prefix else e.key
        source = _source_of(key, sources)
        where = f" (set in {source})" if source else ""
        raise ConfigError(e.reason + where, key=key) from None


# --------------------------------------------------------------------------- public


def load_config(path: Union[str, Path, None] = None, opts: Optional[list[str]] = None) -> Config:
    """Read ``path`` (with its ``_base_`` files), apply ``opts``, return a checked Config.

    ``path=None`` starts from the defaults of ``Config()``; ``opts`` are ``key=value``
    strings such as ``["model.test.alpha=0.4", "model.anchors.ratios=[0.5,1,2]"]``.
    Raises ``ConfigError`` for anything a user must fix.
    """
    if path is None:
        tree, sources = {}, {}
    else:
        tree, sources, _ = _load_tree(_resolve_path(path))
    _apply_overrides(tree, sources, opts or [])
    return _build(Config, tree, "", sources)


def merge_opts(cfg: Config, opts: list[str]) -> Config:
    """A new Config: ``cfg`` with the ``key=value`` overrides ``opts`` applied and checked."""
    tree = config_to_dict(cfg)
    sources: _Sources = {}
    _apply_overrides(tree, sources, opts)
    return _build(Config, tree, "", sources)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict of ``cfg`` (lists, numbers, strings, None): YAML/JSON ready."""
    return dataclasses.asdict(cfg)


class _BlockDumper(yaml.SafeDumper):
    """SafeDumper writing sections as blocks and lists on one line, like the repo configs."""


_BlockDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                         flow_style=True))


def dump_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write ``cfg`` as YAML that ``load_config`` reads back to an equal Config.

    The file is complete (no ``_base_``), so it alone reproduces the run's settings.
    Written to a temporary file first, then renamed, so a crash leaves no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("# Resolved iadet config, complete (no _base_): "
            "iadet.config.load_config(this file) rebuilds it.\n")
    text += yaml.dump(config_to_dict(cfg), Dumper=_BlockDumper, sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
