"""What trains, and how: the parameter filter and the optax transformation.

Trainable (Appendix B: "the LLM parameters remain frozen, with fine-tuning
performed using LoRA; parameters of all other modules are learnable"):
  * every `nnx.LoRAParam` (the LLM's adapters, rank 128 in the paper);
  * every `nnx.Param` outside `model.llm`: Face Encoder, Box Encoder, the four
    projectors, Multi-Task Decoder, Pixel Decoder, Det./Cls. heads;
  * with `model.train_llm`, the whole LLM (an LLM with random weights: cpu/tiny);
  * with `model.train_embeddings`, also the LLM's token embeddings and lm_head
    (off by default, as the paper; turn it on when the special tokens' rows
    start from random, i.e. without GLaMM's pretrained embeddings).
Everything else in `model.llm` is frozen: it is split off before `jax.grad`
and has no optimizer state at all (no Adam moments).

The optimizer is AdamW after global-norm clipping; the learning rate warms up
linearly from 0 over `warmup_steps`, then decays linearly to
`lr * end_lr_factor` at the last step (DeepSpeed's WarmupDecayLR, as LISA/GLaMM).
`lr_mult` scales the step of named top-level modules after AdamW, which is the
same as giving them their own learning rate (Adam's step is invariant to the
gradient's scale, and AdamW's decay term is scaled with it).
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from fifa_jax.config import ConfigError, OptimConfig


def trainable_filter(train_embeddings: bool = False, train_llm: bool = False):
  if train_llm:  # a randomly initialised LLM: everything trains
    return nnx.Any(nnx.LoRAParam, nnx.Param)
  outside_llm = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("llm")))
  parts = [nnx.LoRAParam, outside_llm]
  if train_embeddings:
    parts += [nnx.All(nnx.Param, nnx.PathContains("embed_tokens")),
              nnx.All(nnx.Param, nnx.PathContains("lm_head"))]
  return nnx.Any(*parts)


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  warm = max(0, min(cfg.warmup_steps, total_steps))
  decay = optax.linear_schedule(cfg.lr, cfg.lr * cfg.end_lr_factor, max(1, total_steps - warm))
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), decay], [warm])


def scale_by_module(mult: dict[str, float]) -> optax.GradientTransformation:
  """Multiply the updates of top-level modules (keys of the params dict) by `mult`."""

  def init(params):
    del params  # the names are checked against the model by `check_lr_mult`
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return {k: jax.tree.map(lambda u, m=mult[k]: u * m, v) if k in mult else v
            for k, v in updates.items()}, state

  return optax.GradientTransformation(init, update)


def check_lr_mult(cfg: OptimConfig, params: dict) -> None:
  unknown = sorted(set(cfg.lr_mult) - set(params))
  if unknown:
    raise ConfigError(f"optim.lr_mult: {unknown} are not trainable modules of the model; "
                      f"choose from {sorted(params)}")


def make_tx(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(cfg.clip_norm),
           optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay)]
  if cfg.lr_mult:  # only then: checkpoints of runs without it keep their optimizer state's shape
    parts.append(scale_by_module(dict(cfg.lr_mult)))
  return optax.chain(*parts)
