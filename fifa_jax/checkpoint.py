"""Every checkpoint read and write of fifa-jax: training runs and model folders.

Two on-disk forms, both orbax:

  run checkpoints   WORKDIR/checkpoints/<step>/ with three items (`Checkpointer`):
                      state  the train state (train/state.py): params, frozen, rest
                             (RNG streams, buffers), opt_state, step, nonfinite;
                             arrays saved sharded (OCDBT);
                      data   the grain iterator state, one JSON file per process;
                      meta   JSON: step, wall time, config name, last eval.
                    Saves are asynchronous and atomic (orbax writes a temporary folder
                    and renames it when complete, so a run killed mid-save leaves the
                    previous step as the newest); the newest `keep` are kept.
  model folders     DIR/fifa_jax.json  {"format": "fifa-jax/1", "kind": "llama" | "vit" |
                                        "sam" | "fifa", "config": <the config dataclass>}
                    DIR/state/         the model's weights as a pure dict (nnx.Param,
                                       LoRA adapters and buffers; no RNG state)
                    written by `fifa convert`, read by `fifa infer`/`eval` and
                    `model.init_from` (`save_model`, `restore_model`, `read_meta`).

The rules both share live here once:
  * the newest *finished* step (`latest_step`): a save in progress has a temporary name;
  * RNG keys are stored as their raw uint32 data (`to_saveable`, `from_saveable`);
  * restoring onto any mesh: `Checkpointer.restore` takes the new run's abstract state
    (shapes and shardings) and orbax reshards; `restore_into` reads a model folder
    straight into given abstract arrays, naming every key or shape that does not fit;
  * `load_params` reads a run's model parts as NumPy on the CPU alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from fifa_jax import schema
from fifa_jax.models.two_way import Buffer

FORMAT = "fifa-jax/1"
MARKER = "fifa_jax.json"
# What a model folder stores: the weights and fixed buffers, not the RNG streams.
WEIGHTS = nnx.Any(nnx.Param, Buffer)


class CheckpointError(ValueError):
  """A checkpoint that is missing, malformed or does not fit the model; the message
  names the path and what is wrong."""


# ---------------------------------------------------------------------------
# Config dataclasses <-> JSON (frozen, nested; JSON lists become tuples)


def config_to_dict(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)


def config_from_dict(cls: type, d: dict) -> Any:
  """Rebuild a (nested, frozen) config dataclass from `config_to_dict`'s output, strictly
  (`schema.decode`: an unknown key or a wrong type names its dotted path)."""
  try:
    return schema.decode(cls, d)
  except schema.ConfigError as e:
    raise CheckpointError(f"model config: {e}") from None


# ---------------------------------------------------------------------------
# RNG keys are saved as their raw uint32 data.


def is_key(x) -> bool:
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(state):
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, state)


def from_saveable(state, abstract):
  """Saved values -> keys where `abstract` (the model's own tree) holds keys."""
  return jax.tree.map(lambda x, a: jax.random.wrap_key_data(x) if is_key(a) else x, state, abstract)


def saveable_abstract(abstract):
  def one(a):
    if not is_key(a):
      return a
    data = jax.eval_shape(jax.random.key_data, a)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=NamedSharding(a.sharding.mesh, P()))
  return jax.tree.map(one, abstract)


# ---------------------------------------------------------------------------
# Run checkpoints


class DataStateHandler(ocp.CheckpointHandler):
  """The data iterator's state, one file per process (as grain's own handler, but from
  a state captured when the save was asked for, not when the async writer gets to it)."""

  def save(self, directory: epath.Path, args: DataStateSave):
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: DataStateRestore | None = None):
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if own.exists():
      return json.loads(own.read_text())
    # Another process count: every host takes the same number of batches, so their
    # streams are at the same position and process 0's state holds.
    files = sorted(directory.glob("process_0-of-*.json"))
    if not files:
      raise FileNotFoundError(f"no data-iterator state in {directory}")
    return json.loads(files[0].read_text())

  def metadata(self, directory):
    return None

  def structure(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


class Checkpointer:
  """A training run's checkpoints (`WORKDIR/checkpoints`), local or gs://."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
    # epath: local folders and gs:// alike (a pod slice's hosts need a shared one).
    self.directory = epath.Path(directory) if "://" in str(directory) \
        else epath.Path(Path(directory).absolute())
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": DataStateHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: dict, data_state: dict | None, meta: dict,
           force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_saveable(state)),
        data=DataStateSave(data_state or {}),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract: dict) -> tuple[dict, dict, dict]:
    """(state placed as `abstract`'s shardings, data-iterator state, meta)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(saveable_abstract(abstract)), data=DataStateRestore(),
        meta=ocp.args.JsonRestore()))
    return from_saveable(out["state"], abstract), out["data"], out["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_step(directory: str | os.PathLike) -> int | None:
  """The newest finished step in a run's checkpoints folder (None when there is none)."""
  directory = Path(directory)
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
  return max(steps) if steps else None


def load_params(directory: str | os.PathLike, step: int | None = None,
                parts: tuple[str, ...] = ("params", "frozen"),
                target: dict | None = None) -> dict[str, Any]:
  """Parts of a run's model as NumPy pure dicts, on the CPU alone (any saving mesh).

  Returns {"params": ..., "frozen": ...} by default; merge them into an
  `nnx.eval_shape` model with `nnx.replace_by_pure_dict`.  With `target` (the whole
  model's pure dict of ShapeDtypeStructs with shardings, as `nnx.to_pure_dict` keys
  it) each saved array is read straight into its sharding instead: every device reads
  its own shard, and the whole array is never in one device's or the host's memory.
  """
  directory = Path(directory).absolute()
  if step is None:
    step = latest_step(directory)
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {directory}")
  path = directory / str(step) / "state"
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  wanted = {k: tree[k] for k in parts}
  if target is None:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  else:
    whole = flat_leaves(saveable_abstract(target))
    placed = lambda path, _: whole[tuple(str(k) for k in key_path(path)[1:])]
    restore_args = ocp.checkpoint_utils.construct_restore_args(
        jax.tree_util.tree_map_with_path(placed, wanted))
  out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                                         partial_restore=True))
  return {k: _int_keys(out[k]) for k in parts}


def _int_keys(tree):
  """orbax gives list indices ('0', '1') as strings; nnx pure dicts use ints."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree


# ---------------------------------------------------------------------------
# Model folders


def is_model_folder(path: str | Path) -> bool:
  return (Path(path) / MARKER).exists()


def read_meta(path: str | Path) -> dict:
  marker = Path(path) / MARKER
  if not marker.exists():
    raise CheckpointError(f"{path} is not a fifa-jax model folder (no {MARKER})")
  try:
    meta = json.loads(marker.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{marker}: not valid JSON ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    got = meta.get("format") if isinstance(meta, dict) else meta
    raise CheckpointError(f"{marker}: format {got!r}, expected {FORMAT!r}")
  missing = [k for k in ("kind", "config") if k not in meta]
  if missing:
    raise CheckpointError(f"{marker}: missing {' and '.join(repr(k) for k in missing)}")
  return meta


def save_model(model: nnx.Module, path: str | Path, kind: str, config: Any) -> Path:
  """Write `model`'s weights and config as a model folder (`path/state` must not exist)."""
  path = Path(path).absolute()
  if (path / "state").exists():
    raise CheckpointError(f"{path / 'state'} exists; choose a new folder")
  path.mkdir(parents=True, exist_ok=True)
  state = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "state", state)
    ckptr.wait_until_finished()
  meta = {"format": FORMAT, "kind": kind, "config": config_to_dict(config)}
  (path / MARKER).write_text(json.dumps(meta, indent=2) + "\n")  # last: the folder is complete
  return path


def init_missing(model: nnx.Module, make: Callable[[], nnx.Module]) -> list[tuple]:
  """Give every still-abstract leaf of `model` `make()`'s initial value.

  The constructor runs under jit and returns only the wanted leaves, so XLA drops
  the rest: a 7B model's fresh LoRA costs the LoRA's memory, not 7B.  A leaf whose
  abstract value carries a sharding is made in it.
  """
  todo = {p: v for p, v in nnx.to_flat_state(nnx.state(model))
          if isinstance(v.get_value(), jax.ShapeDtypeStruct)}
  if not todo:
    return []
  name = lambda p: ".".join(map(str, p))

  def init():
    flat = dict(nnx.to_flat_state(nnx.state(make())))
    return {name(p): flat[p].get_value() for p in todo}

  placed = {name(p): getattr(v.get_value(), "sharding", None) for p, v in todo.items()}
  named = all(isinstance(x, NamedSharding) for x in placed.values())
  values = jax.jit(init, out_shardings=placed if named else None)()
  for p, var in todo.items():
    var.set_value(values[name(p)])
  return list(todo)


def restore_model(path: str | Path, make: Callable[[Any], nnx.Module], config_cls: type, *,
                  kind: str | None = None,
                  shardings: Callable[[Any], Any] | None = None) -> tuple[Any, nnx.Module]:
  """(config, model) from a model folder; `make(config)` builds the module (seeding its
  own Rngs); RNG streams are made fresh.  `shardings(state)`: the NamedSharding of each
  leaf of the abstract state (`mesh.state_shardings` bound to a mesh); the weights are
  then read straight into them, never whole on one device or in host memory."""
  path = Path(path).absolute()
  meta = read_meta(path)
  if kind is not None and meta["kind"] != kind:
    raise CheckpointError(f"{path} holds a {meta['kind']!r} model, not {kind!r}")
  try:
    config = config_from_dict(config_cls, meta["config"])
  except CheckpointError as e:
    raise CheckpointError(f"{path / MARKER}: {e}") from None
  model = nnx.eval_shape(lambda: make(config))
  if shardings is not None:  # the abstract leaves carry their shardings, here and for init_missing
    nnx.update(model, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nnx.state(model), shardings(nnx.state(model))))
  state = nnx.state(model, WEIGHTS)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding if shardings is not None else None), nnx.to_pure_dict(state))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path / "state", target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  init_missing(model, lambda: make(config))
  return config, model


def key_path(path) -> tuple[str, ...]:
  """A jax tree path as a tuple of strings (the keys restore_into's target uses)."""
  return tuple(str(getattr(k, "key", k)) for k in path)


def flat_leaves(tree) -> dict[tuple, Any]:
  """{key_path: leaf} of a pytree."""
  return {key_path(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_into(path: str | Path, saved_abstract: dict, target: dict[tuple, Any], *,
                 what: str, ours: str = "model",
                 optional: Callable[[tuple], bool] = lambda k: False) -> dict[tuple, Any]:
  """A model folder's weights restored straight into `target`'s dtypes and shardings.

  saved_abstract: the folder's weights as a pure dict of shapes (from its own config);
  target: {key path: ShapeDtypeStruct with sharding} of the model to fill.  Every key
  or shape that does not fit is named (`what` says which setting pointed here, `ours`
  what the target is called); keys
  of `target` for which `optional` holds may be absent.  Returns {key path: array}.
  """
  saved_flat = flat_leaves(saved_abstract)
  problems = []
  for k, leaf in saved_flat.items():
    if k not in target:
      problems.append(f"{'.'.join(k)}: in the folder, not in the {ours}")
    elif tuple(target[k].shape) != tuple(leaf.shape):
      problems.append(f"{'.'.join(k)}: folder {list(leaf.shape)}, {ours} {list(target[k].shape)}")
  problems += [f"{'.'.join(k)}: not in the folder" for k in target
               if k not in saved_flat and not optional(k)]
  if problems:
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise CheckpointError(f"{what} {path}: {len(problems)} weight(s) do not fit this {ours} "
                          f"(build the folder with --config set to this run's YAML):\n  "
                          + "\n  ".join(problems[:20]) + more)
  item = jax.tree_util.tree_map_with_path(lambda p, _: target[key_path(p)], saved_abstract)
  with ocp.StandardCheckpointer() as ckptr:
    return flat_leaves(ckptr.restore(Path(path).absolute() / "state", item))
