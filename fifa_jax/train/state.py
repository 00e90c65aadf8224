"""The train state as plain pytrees, its shardings, and its creation on the mesh.

state = {"step": int32, "nonfinite": int32 (consecutive skipped steps),
         "params": trainable params, "frozen": frozen params,
         "rest": everything else in the model (RNG streams, buffers),
         "opt_state": optax state over "params" only}

All model parts are *pure dicts* (`nnx.to_pure_dict`), so a checkpoint is
readable without the model code and `nnx.merge(graphdef, params, frozen, rest)`
rebuilds the module inside jit.  The state is created by a jitted init with
out-shardings from the logical-axis rules, so no parameter ever exists
unsharded (what lets the paper-size model start on a pod slice).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fifa_jax import checkpoint, mesh as mesh_lib
from fifa_jax.config import Config, model_config  # noqa: F401 (model_config: re-exported)
from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM
from fifa_jax.train import optim


def split(model: nnx.Module, train_filter):
  """graphdef and (trainable, frozen, rest) nnx States."""
  return nnx.split(model, train_filter, nnx.Param, ...)


def merge(graphdef, params, frozen, rest) -> nnx.Module:
  return nnx.merge(graphdef, params, frozen, rest)


def rest_state(model: nnx.Module, train_filter) -> dict:
  return nnx.to_pure_dict(split(model, train_filter)[3])


@dataclasses.dataclass
class Setup:
  """Everything static about a run's state: build once, reuse for init/restore/step."""
  fcfg: FiFaConfig
  graphdef: object
  train_filter: object
  tx: optax.GradientTransformation
  shardings: dict
  abstract: dict  # ShapeDtypeStructs with shardings

  @property
  def mesh(self) -> Mesh:
    return self.shardings["step"].mesh


def _pure_shardings(state: nnx.State, mesh: Mesh) -> dict:
  return nnx.to_pure_dict(mesh_lib.state_shardings(state, mesh))


def make_setup(cfg: Config, fcfg: FiFaConfig, mesh: Mesh) -> Setup:
  filt = optim.trainable_filter(cfg.model.train_embeddings, cfg.model.train_llm)
  tx = optim.make_tx(cfg.optim, cfg.train.steps)
  abs_model = nnx.eval_shape(lambda: FiFaMLLM(fcfg, rngs=nnx.Rngs(0)))
  graphdef, p, f, r = split(abs_model, filt)
  optim.check_lr_mult(cfg.optim, nnx.to_pure_dict(p))
  rep = NamedSharding(mesh, P())
  p_sh = _pure_shardings(p, mesh)
  abs_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(p))
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abs_opt, p_sh,
                                 transform_non_params=lambda _: rep)
  shardings = {"step": rep, "nonfinite": rep, "params": p_sh,
               "frozen": _pure_shardings(f, mesh), "rest": _pure_shardings(r, mesh),
               "opt_state": opt_sh}
  abs_state = jax.eval_shape(lambda: _init_fn(fcfg, filt, tx, 0))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abs_state, shardings)
  return Setup(fcfg=fcfg, graphdef=graphdef, train_filter=filt, tx=tx, shardings=shardings,
               abstract=abstract)


def _init_fn(fcfg, filt, tx, seed):
  model = FiFaMLLM(fcfg, rngs=nnx.Rngs(seed))
  _, p, f, r = split(model, filt)
  p, f, r = (nnx.to_pure_dict(s) for s in (p, f, r))
  return {"step": jnp.zeros((), jnp.int32), "nonfinite": jnp.zeros((), jnp.int32),
          "params": p, "frozen": f, "rest": r, "opt_state": tx.init(p)}


def init_state(setup: Setup, seed: int, jit: bool | None = None) -> dict:
  """A fresh state in its shardings.

  Large models are created by a jitted init with out-shardings (nothing ever
  unsharded); small ones eagerly on the host and then placed, because compiling
  the init costs more than running it there (about 20 s against 2 s for tiny on CPU).
  Both give the same values.
  """
  if jit is None:
    jit = count(setup.abstract["frozen"]) + count(setup.abstract["params"]) > 50_000_000
  fn = lambda: _init_fn(setup.fcfg, setup.train_filter, setup.tx, seed)
  with jax.set_mesh(setup.mesh):
    if jit:
      return jax.jit(fn, out_shardings=setup.shardings)()
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      host = fn()
    return jax.device_put(host, setup.shardings)


def count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def load_initial_weights(setup: Setup, state: dict, path: str) -> dict:
  """`state` with its model weights replaced by a fifa-jax model folder's (`model.init_from`).

  The folder (kind "fifa", e.g. from `fifa convert model --farl --llama --sam`) is
  restored by orbax straight into the run's shardings, so no host holds the whole
  model.  Its shapes must equal the run's (same LLM, vocabulary and LoRA rank);
  otherwise every mismatch is named.  The optimizer state stays fresh.
  """
  meta = checkpoint.read_meta(path)
  if meta["kind"] != "fifa":
    raise checkpoint.CheckpointError(
        f"model.init_from: {path} holds a {meta['kind']!r} model; a whole FiFa-MLLM folder is "
        f"needed (`fifa convert model ... -o DIR`)")
  saved_cfg = checkpoint.config_from_dict(FiFaConfig, meta["config"])
  saved = nnx.to_pure_dict(nnx.state(
      nnx.eval_shape(lambda: FiFaMLLM(saved_cfg, rngs=nnx.Rngs(0))), checkpoint.WEIGHTS))
  part_of, target = {}, {}
  for part in ("params", "frozen", "rest"):
    for k, v in checkpoint.flat_leaves(setup.abstract[part]).items():
      part_of[k], target[k] = part, v
  # RNG streams ("rest" leaves the folder lacks) stay as initialised.
  restored = checkpoint.restore_into(path, saved, target, what="model.init_from", ours="run",
                                     optional=lambda k: part_of[k] == "rest")
  out = dict(state)
  for part in ("params", "frozen", "rest"):
    out[part] = jax.tree_util.tree_map_with_path(
        lambda p, v: restored.get(checkpoint.key_path(p), v), state[part])
  return out
