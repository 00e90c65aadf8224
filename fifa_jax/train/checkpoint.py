"""orbax checkpoints: model, optimizer, step, RNG streams and the data iterator, together.

One `ocp.CheckpointManager` per run directory (`WORKDIR/checkpoints/<step>/`),
three items per step:
  state  the train state (state.py): params, frozen, rest (RNG streams, as raw
         key data), opt_state, step, nonfinite; arrays saved sharded (OCDBT);
  data   the grain iterator state, one JSON file per process;
  meta   JSON: step, wall time, config name, last eval.
Saves are asynchronous (the step loop goes on while arrays are written) and
atomic (orbax writes to a temporary folder and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest); the newest
`keep` are kept.

A checkpoint restores onto any mesh: `restore` takes the *new* setup's
abstract state (shapes + shardings) and orbax reshards.  `load_params` reads
the model parameters as NumPy on the CPU alone (conversion, inference).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P


# ---------------------------------------------------------------------------
# The data iterator's state: one file per process (as grain's own handler does,
# but from a state captured when the save was asked for, not when the async
# writer gets to it).


class DataStateHandler(ocp.CheckpointHandler):

  def save(self, directory: epath.Path, args: "DataStateSave"):
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None):
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if own.exists():
      return json.loads(own.read_text())
    # Another process count: our per-host streams all have the same position
    # (every host takes the same number of batches), so process 0's state holds.
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


# ---------------------------------------------------------------------------
# RNG keys are saved as their raw uint32 data.


def _is_key(x) -> bool:
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(state):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def from_saveable(state, abstract):
  return jax.tree.map(lambda x, a: jax.random.wrap_key_data(x) if _is_key(a) else x, state, abstract)


def saveable_abstract(abstract):
  def one(a):
    if not _is_key(a):
      return a
    data = jax.eval_shape(jax.random.key_data, a)
    return jax.ShapeDtypeStruct(data.shape, data.dtype,
                                sharding=NamedSharding(a.sharding.mesh, P()))
  return jax.tree.map(one, abstract)


# ---------------------------------------------------------------------------


class Checkpointer:

  def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
    # epath: local folders and gs:// alike (a pod slice's hosts need a shared one).
    self.directory = epath.Path(directory) if "://" in str(directory) else epath.Path(Path(directory).absolute())
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
    target = saveable_abstract(abstract)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=DataStateRestore(),
        meta=ocp.args.JsonRestore()))
    return from_saveable(out["state"], abstract), out["data"], out["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(directory: str | os.PathLike, step: int | None = None,
                parts: tuple[str, ...] = ("params", "frozen")) -> dict[str, Any]:
  """The model's parameters as NumPy arrays, on the CPU alone (any saving mesh).

  Returns {"params": ..., "frozen": ...} pure dicts; `jax.tree.map`-merge them
  (or `nnx.replace_by_pure_dict`) into an `nnx.eval_shape` model.
  """
  directory = Path(directory).absolute()
  if step is None:  # finalized steps only: a save in progress has a temporary name
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    step = max(steps)
  path = directory / str(step) / "state"
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  wanted = {k: tree[k] for k in parts}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                                         partial_restore=True))
  return {k: _int_keys(out[k]) for k in parts}


def _int_keys(tree):
  """orbax gives list indices ('0', '1') as strings; nnx pure dicts use ints."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree
