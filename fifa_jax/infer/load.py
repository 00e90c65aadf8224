"""Load a trained FiFa-MLLM for inference or evaluation, on the CPU or any device.

`--checkpoint` may be
  * a training run's workdir (`config.yaml` + `checkpoints/<step>/`; the newest
    finished step is used) or one step folder `WORKDIR/checkpoints/<step>`;
  * a fifa-jax model folder written by `fifa convert model` (`fifa_jax.json` + `state/`).
The tokenizer is the run's (`model.tokenizer` in its config; the offline demo
tokenizer when unset) unless one is given.

The model comes in the decoding layout (`models/decoding.py`: unrolled layers,
adapters folded in, weights in the compute dtype, so bf16 for the paper preset),
which generates 4.4x faster on an H200 than the training layout; `layout="training"`
returns the checkpoint's own layout (weight round trips, further training).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
from jax.sharding import Mesh

from flax import nnx, traverse_util

from fifa_jax import checkpoint, config as config_lib, mesh as mesh_lib, paths, tokens
from fifa_jax.checkpoint import CheckpointError  # noqa: F401 (raised here; callers catch it)
from fifa_jax.models.decoding import decoding_layout
from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM

LAYOUTS = ("decoding", "training")
PARAM_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class Loaded:
  config: FiFaConfig
  model: FiFaMLLM
  tokenizer: object
  source: str  # what was loaded, for reports
  step: int | None = None
  mesh: Mesh | None = None  # where the weights live, by the training's logical-axis rules


def _run_dir_and_step(path: Path) -> tuple[Path, int | None] | None:
  if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
    return path, None
  if path.name.isdigit() and path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
    return path.parent.parent, int(path.name)
  return None


def load(path: str | Path, tokenizer: str | None = None, *, layout: str = "decoding",
         param_dtype: str | None = None, mesh: Mesh | None = None) -> Loaded:
  """The model, its config and tokenizer from a checkpoint path or URL (see module doc).
  `param_dtype` (decoding layout only): the weights' dtype; default each part's compute dtype.
  `mesh`: the weights are read straight into their shards by the training's logical-axis
  rules (mesh.py), and laid out for decoding by one program sharded the same way: no
  array passes whole through one device or the host's memory."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if param_dtype is not None and param_dtype not in PARAM_DTYPES:
    raise ValueError(f"--param-dtype must be one of {', '.join(PARAM_DTYPES)}, got {param_dtype!r}")
  path = paths.stage_in(path, "checkpoint")  # a gs:// (or other URL) folder: a local copy
  if tokenizer is not None:
    tokenizer = str(paths.stage_in(tokenizer, "tokenizer"))
  loaded = _load(Path(path), tokenizer, mesh)
  if layout == "decoding":
    loaded.model = decoding_layout(loaded.model, param_dtype, mesh=mesh)
    loaded.config = loaded.model.config
  loaded.mesh = mesh
  return loaded


def _load(path: Path, tokenizer: str | None, mesh: Mesh | None = None) -> Loaded:
  """The checkpoint's model in its own (training) layout, sharded over `mesh` if given."""
  if not path.exists():
    raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
  run = _run_dir_and_step(path)
  if run is not None:
    return _load_run(*run, tokenizer, mesh)
  if checkpoint.is_model_folder(path):
    tok = tokens.load_tokenizer(tokenizer)
    shardings = None if mesh is None else lambda state: mesh_lib.state_shardings(state, mesh)
    config, model = checkpoint.restore_model(path, lambda c: FiFaMLLM(c, rngs=nnx.Rngs(0)),
                                             FiFaConfig, kind="fifa", shardings=shardings)
    return Loaded(config, model, tok, source=str(path))
  raise CheckpointError(
      f"{str(path)!r} is not a checkpoint: expected a training workdir (config.yaml and checkpoints/), "
      "a step folder WORKDIR/checkpoints/<step>, or a `fifa convert model` folder (fifa_jax.json)")


def _load_run(run: Path, step: int | None, tokenizer: str | None, mesh: Mesh | None) -> Loaded:
  # A tokenizer given here replaces the run's (whose folder may be on another machine).
  cfg = config_lib.load(run / "config.yaml", [f"model.tokenizer={tokenizer}"] if tokenizer else [])
  tok = tokens.load_tokenizer(cfg.model.tokenizer)
  fcfg = config_lib.model_config(cfg, tok)
  ckpts = run / "checkpoints"
  if step is None:
    step = checkpoint.latest_step(ckpts)
    if step is None:
      raise CheckpointError(f"{run}: no finished checkpoint in {ckpts}")
  abstract = nnx.eval_shape(lambda: FiFaMLLM(fcfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  target = None
  if mesh is not None:  # every leaf read straight into its shard
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nnx.to_pure_dict(state),
                          nnx.to_pure_dict(mesh_lib.state_shardings(state, mesh)))
  absl = logging.getLogger("absl")  # orbax warns that a step has no _CHECKPOINT_METADATA: harmless
  level = absl.level
  absl.setLevel(logging.ERROR)
  try:
    saved = checkpoint.load_params(ckpts, step, parts=("params", "frozen", "rest"), target=target)
  finally:
    absl.setLevel(level)
  # The run split its state into trainable / frozen / rest by its own filter; the
  # parts' paths are disjoint, so their union is the whole model whatever trained.
  flat = lambda tree: traverse_util.flatten_dict(tree, keep_empty_nodes=True)
  whole = traverse_util.unflatten_dict(
      {k: v for part in ("params", "frozen", "rest") for k, v in flat(saved[part]).items()})
  nnx.replace_by_pure_dict(state, checkpoint.from_saveable(whole, nnx.to_pure_dict(state)))
  model = nnx.merge(graphdef, state)
  return Loaded(fcfg, model, tok, source=f"{run} (step {step})", step=step)
