"""The one dict-to-dataclass decoder: strict keys with nearest-name hints, checked types.

Used for the run config (`config.py`: YAML files and `--set` overrides, including the
`model.vit/box/llama/lora/decoder/pixel` nodes that override the model's own config
dataclasses) and for the model config saved in model folders (`checkpoint.py`).
Hand-written rather than pydantic or draccus: the model configs are plain frozen
dataclasses shared with code that must not import a validation library, and the error
a user sees is one line naming the dotted key, the expected type and the nearest
valid name.  Types understood: bool, int, float (ints accepted), str, `X | None`,
`list[T]`, `dict[str, T]`, `tuple[T, ...]` and fixed tuples (lists accepted), `Any`,
and nested dataclasses (from mappings).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
  """A bad configuration; the message names the dotted key."""


def suggest(key: str, names) -> str:
  near = difflib.get_close_matches(str(key), list(names), n=1)
  return f" (did you mean {near[0]!r}?)" if near else ""


def check(value: Any, tp: Any, where: str) -> Any:
  """`value` as type `tp`, or ConfigError naming `where`."""
  origin = typing.get_origin(tp)
  if tp is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    errors = []
    for arm in typing.get_args(tp):
      if arm is type(None):
        if value is None:
          return None
        continue
      try:
        return check(value, arm, where)
      except ConfigError as e:
        errors.append(e)
    raise errors[0] if errors else ConfigError(f"{where}: must not be null")
  if dataclasses.is_dataclass(tp):
    if isinstance(value, tp):
      return value
    return decode(tp, value, where + ".")
  if origin in (list, tuple):
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{where}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
      items = [check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    else:
      if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
      items = [check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    return items if origin is list else tuple(items)
  if origin is dict:
    if not isinstance(value, dict):
      raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    _, arg = typing.get_args(tp)
    return {str(k): check(v, arg, f"{where}.{k}") for k, v in value.items()}
  if tp is float:
    if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
      try:
        value = float(value)
      except ValueError:
        pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value
  if tp is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{where}: expected true/false, got {value!r}")
    return value
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value
  raise ConfigError(f"{where}: unsupported type {tp}")


def _fields(cls: type, updates: Any, prefix: str) -> dict[str, Any]:
  """The checked values of `updates` for dataclass `cls` (strict keys)."""
  if not isinstance(updates, dict):
    raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  out = {}
  for key, value in updates.items():
    if key not in names:
      raise ConfigError(f"{prefix}{key}: unknown key" + suggest(key, names))
    out[key] = check(value, hints[key], f"{prefix}{key}")
  return out


def decode(cls: type, data: Any, prefix: str = "") -> Any:
  """A `cls` instance from a mapping; missing fields take their defaults, and a missing
  field without one, or values the dataclass itself refuses, are a ConfigError."""
  fields = _fields(cls, data, prefix)
  required = [f.name for f in dataclasses.fields(cls) if f.init
              and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  missing = [n for n in required if n not in fields]
  if missing:
    where = prefix.rstrip(".") or cls.__name__
    raise ConfigError(f"{where}: missing {', '.join(prefix + n for n in missing)}")
  try:
    return cls(**fields)
  except (TypeError, ValueError) as e:  # the dataclass's own checks (__post_init__)
    raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def override(obj: Any, updates: Any, prefix: str = "") -> Any:
  """A copy of dataclass `obj` (frozen or not) with `updates` applied; a nested dataclass
  field is updated key by key from a mapping, not replaced."""
  if not isinstance(updates, dict):
    raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
  changes = {}
  for key, value in updates.items():
    current = getattr(obj, key, None)
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
      changes[key] = override(current, value, f"{prefix}{key}.")
    else:
      changes.update(_fields(type(obj), {key: value}, prefix))
  return dataclasses.replace(obj, **changes)


def read_yaml(path) -> dict:
  """A YAML file's top-level mapping ({} when empty); a ConfigError names the file when it
  cannot be read, is not YAML, or is not a mapping."""
  import yaml  # noqa: PLC0415  (only the commands that read YAML need it)

  try:
    data = yaml.safe_load(Path(path).read_text()) or {}
  except OSError as e:
    raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
  except yaml.YAMLError as e:
    raise ConfigError(f"{path}: not YAML ({e})") from None
  if not isinstance(data, dict):
    raise ConfigError(f"{path}: top level must be a mapping")
  return data
