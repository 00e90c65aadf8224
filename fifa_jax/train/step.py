"""One jit-compiled train step (and an eval step) over a (data, fsdp, tensor) mesh.

The step takes the whole state and a global batch, and returns the new state
and a dict of metrics.  The state argument is donated (its buffers are reused
for the new state), in/out shardings come from `state.Setup`, and the batch is
split over data x fsdp.  The same function runs on CPU, GPU and TPU.

Gradient accumulation: the batch is viewed as `grad_accum` micro-batches
(interleaved rows, so each device keeps its own rows) and gradients are
averaged over a `lax.scan`.  Rematerialisation is the model's (`model.remat`
wraps each LLM layer in `nnx.remat`).

Non-finite policy: when the loss or the gradient norm is not finite the update
is skipped (params and optimizer state are kept, the RNG streams move on) and
`nonfinite` counts consecutive skips; the loop stops the run when it reaches
`train.max_nonfinite`, keeping the last good checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from fifa_jax import mesh as mesh_lib, tokens
from fifa_jax.models.fifa import SegSlots
from fifa_jax.train import state as state_lib
from fifa_jax.train.losses import LossWeights, fifa_loss

NUM_TASKS = len(tokens.TASKS)


def _forward_loss(setup, weights, params, frozen, rest, batch, deterministic):
  model = state_lib.merge(setup.graphdef, params, frozen, rest)
  segs = SegSlots(batch["seg_rows"], batch["seg_cols"], batch["seg_valid"])
  out = model(batch["input_ids"], batch["pixels"], boxes=batch["boxes"],
              attention_mask=batch["attention_mask"], segs=segs, deterministic=deterministic)
  loss, parts = fifa_loss(out, batch, weights, num_tasks=NUM_TASKS)
  sums = parts.pop("per_task")
  return loss, (parts, sums, state_lib.rest_state(model, setup.train_filter))


SEG_KEYS = ("seg_rows", "seg_cols", "seg_valid", "masks")


def _micro(batch: dict, n: int, mesh) -> dict:
  """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, ... (keeps rows on their device).

  The [SEG] slots come grouped by micro-batch from each host (pipeline.pack_segs),
  hosts one after another: [hosts, n, S_host/n] -> [n, S/n], rows renumbered.
  """
  def constrain(y):
    spec = P(None, ("data", "fsdp"), *([None] * (y.ndim - 2)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))

  out = {}
  hosts = jax.process_count()
  for k, x in batch.items():
    if k in SEG_KEYS:
      y = x.reshape(hosts, n, -1, *x.shape[1:]).swapaxes(0, 1).reshape(n, -1, *x.shape[1:])
      out[k] = constrain(y // n if k == "seg_rows" else y)
    else:
      out[k] = constrain(x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1))
  return out


def make_train_step(setup: state_lib.Setup, weights: LossWeights, grad_accum: int = 1,
                    schedule=None):
  mesh = setup.mesh

  def step(state, batch):
    params, frozen = state["params"], state["frozen"]
    grad_fn = jax.value_and_grad(
        lambda p, r, b: _forward_loss(setup, weights, p, frozen, r, b, False), has_aux=True)
    if grad_accum == 1:
      (loss, (parts, sums, rest)), grads = grad_fn(params, state["rest"], batch)
    else:
      micro = _micro(batch, grad_accum, mesh)

      def body(carry, mb):
        g_acc, rest = carry
        (loss, (parts, sums, rest)), g = grad_fn(params, rest, mb)
        return (jax.tree.map(jnp.add, g_acc, g), rest), (loss, parts, sums)

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, rest), (losses, partss, sumss) = jax.lax.scan(body, (zeros, state["rest"]), micro)
      grads = jax.tree.map(lambda g: g / grad_accum, grads)
      loss = losses.mean()
      parts = jax.tree.map(lambda x: x.mean(0), partss)
      for k in ("num_masks", "masks_dropped"):  # counts add up over the micro-batches
        if k in partss:
          parts[k] = partss[k].sum(0)
      sums = jax.tree.map(lambda x: x.sum(0), sumss)
    gnorm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    updates, new_opt = setup.tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = {
        "step": state["step"] + 1,
        "nonfinite": jnp.where(ok, 0, state["nonfinite"] + 1).astype(jnp.int32),
        "params": keep(new_params, params), "frozen": frozen, "rest": rest,
        "opt_state": keep(new_opt, state["opt_state"]),
    }
    # The count again in the metrics: the loop reads them a step late, when the state
    # holding it has been donated to the next step.
    metrics = {**parts, "grad_norm": gnorm, "finite": ok, "nonfinite": new_state["nonfinite"],
               "per_task": sums}
    if schedule is not None:
      metrics["lr"] = schedule(state["step"])
    return new_state, metrics

  rep = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(setup.shardings, None), out_shardings=(setup.shardings, rep),
                 donate_argnums=(0,))


def make_eval_step(setup: state_lib.Setup, weights: LossWeights):
  """Teacher-forced losses on a batch, no update (deterministic: no dropout)."""

  def step(state, batch):
    loss, (parts, sums, _) = _forward_loss(setup, weights, state["params"], state["frozen"],
                                           state["rest"], batch, True)
    return {**parts, "per_task": sums}

  return jax.jit(step, in_shardings=(setup.shardings, None),
                 out_shardings=NamedSharding(setup.mesh, P()))


def batch_shardings(mesh, batch: dict) -> dict:
  return {k: mesh_lib.batch_sharding(mesh, v.ndim) for k, v in batch.items()}


def to_global(mesh, batch: dict) -> dict:
  """This host's rows -> global arrays split over data x fsdp (correct on several hosts)."""
  out = {}
  for k, v in batch.items():
    if k == "seg_rows":  # this host's rows follow the rows of the hosts before it
      v = v + jax.process_index() * batch["input_ids"].shape[0]
    sharding = mesh_lib.batch_sharding(mesh, v.ndim)
    global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out
