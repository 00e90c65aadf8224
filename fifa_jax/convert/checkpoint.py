"""The fifa-jax side of conversion: a folder any converter writes and reads.

  <dir>/fifa_jax.json   {"format": "fifa-jax/1", "kind": "llama" | "vit" | "sam" | "fifa",
                         "config": <the model's config dataclass as a dict>}
  <dir>/state/          orbax StandardCheckpointer of the model's weights as a pure
                        dict (nnx.Param, LoRA adapters and buffers; no RNG state)

The training issue's orbax CheckpointManager restores `state/` as the model item
(`nnx.state(model, WEIGHTS).to_pure_dict()` with the same tree).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from fifa_jax.convert.stream import WEIGHTS, ConversionError, init_missing

FORMAT = "fifa-jax/1"
MARKER = "fifa_jax.json"


def config_to_dict(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)


def config_from_dict(cls: type, d: dict) -> Any:
  """Rebuild a (nested, frozen) config dataclass; JSON lists become tuples."""
  hints = typing.get_type_hints(cls)
  kw = {}
  for f in dataclasses.fields(cls):
    if f.name not in d:
      continue
    kw[f.name] = _value(hints[f.name], d[f.name])
  return cls(**kw)


def _value(hint: Any, v: Any) -> Any:
  if v is None:
    return None
  options = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
      typing.get_origin(hint) is typing.Union else (hint,)
  for t in options:
    if dataclasses.is_dataclass(t) and isinstance(v, dict):
      return config_from_dict(t, v)
  return _tuples(v)


def _tuples(v: Any) -> Any:
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def is_checkpoint(path: str | Path) -> bool:
  return (Path(path) / MARKER).exists()


def read_meta(path: str | Path) -> dict:
  marker = Path(path) / MARKER
  if not marker.exists():
    raise ConversionError(f"{path} is not a fifa-jax checkpoint (no {MARKER})")
  meta = json.loads(marker.read_text())
  if meta.get("format") != FORMAT:
    raise ConversionError(f"{marker}: format {meta.get('format')!r}, expected {FORMAT!r}")
  return meta


def save(model: nnx.Module, path: str | Path, kind: str, config: Any) -> Path:
  """Write `model`'s weights and config under `path` (which must not exist yet)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  path = Path(path).absolute()
  if (path / "state").exists():
    raise ConversionError(f"{path / 'state'} exists; choose a new folder")
  path.mkdir(parents=True, exist_ok=True)
  state = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "state", state)
    ckptr.wait_until_finished()
  meta = {"format": FORMAT, "kind": kind, "config": config_to_dict(config)}
  (path / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
  return path


def restore(path: str | Path, make: Any, config_cls: type, *,
            kind: str | None = None) -> tuple[Any, nnx.Module]:
  """(config, model) from `save`'s folder; `make(config)` builds the module."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  path = Path(path).absolute()
  meta = read_meta(path)
  if kind is not None and meta["kind"] != kind:
    raise ConversionError(f"{path} holds a {meta['kind']!r} model, not {kind!r}")
  config = config_from_dict(config_cls, meta["config"])
  model = nnx.eval_shape(lambda: make(config))  # `make(config)` must seed its own Rngs
  state = nnx.state(model, WEIGHTS)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path / "state", target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  init_missing(model, lambda: make(config))  # RNG state
  return config, model


def kinds() -> dict[str, tuple[type, Any]]:
  """kind -> (config class, make(config)); imported lazily (models pull in jax)."""
  from fifa_jax.convert.sam import SamDecoder, SamDecoderConfig  # noqa: PLC0415
  from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM  # noqa: PLC0415
  from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415
  from fifa_jax.models.vit import ViTConfig, VisionTransformer  # noqa: PLC0415

  return {"llama": (LlamaConfig, lambda c: LlamaForCausalLM(c, rngs=nnx.Rngs(0))),
          "vit": (ViTConfig, lambda c: VisionTransformer(c, rngs=nnx.Rngs(0))),
          "sam": (SamDecoderConfig, lambda c: SamDecoder(c, rngs=nnx.Rngs(0))),
          "fifa": (FiFaConfig, lambda c: FiFaMLLM(c, rngs=nnx.Rngs(0)))}


def load(path: str | Path, kind: str | None = None) -> tuple[str, Any, nnx.Module]:
  """Any fifa-jax folder -> (kind, config, model)."""
  meta = read_meta(path)
  table = kinds()
  if meta["kind"] not in table:
    raise ConversionError(f"{path}: unknown kind {meta['kind']!r}")
  cls, make = table[meta["kind"]]
  config, model = restore(path, make, cls, kind=kind)
  return meta["kind"], config, model
