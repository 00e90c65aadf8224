"""GRPO (DeepSeekMath's Group Relative Policy Optimisation) for the learned aggregator.

One step, for B prompts each sampled G times with the project's generator:

  rewards r  ->  advantages A = (r - mean_group) / (std_group + 1e-4)    (rewards.group_advantages)
  ratio_t    =   exp(logp_t - logp_old_t)          per completion token t
  kl_t       =   exp(ref_t - logp_t) - (ref_t - logp_t) - 1     (k3, non-negative)
  loss       =   mean over completions of  mean over their tokens of
                 -min(ratio_t A, clip(ratio_t, 1 - eps, 1 + eps) A) + beta kl_t

as trl's GRPOTrainer (loss_type "grpo") and tunix compute it.  `logp_old` is the
policy that sampled (detached); with one update per batch the ratio is 1 and only
its gradient matters.  The reference is the policy GRPO starts from, frozen.

Sequences are [prompt (left-padded to P) | completion (C, right-padded)], so the
logits at positions P-1 .. P+C-2 predict the completion's tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Batch(NamedTuple):
  """N = B x G sequences of one step."""
  tokens: jax.Array  # [N, P + C] int32: prompt then completion
  attention: jax.Array  # [N, P + C] bool: real tokens (prompt padding and after-stop are False)
  completion: jax.Array  # [N, C] bool: completion tokens that count (up to the stop, included)
  advantages: jax.Array  # [N] float32
  pixels: jax.Array | None = None  # [N, S, S, 3] for a policy with a vision tower


def token_logprobs(logits: jax.Array, tokens: jax.Array, prompt_len: int) -> jax.Array:
  """log p(completion token t) [N, C] from logits [N, P + C, V] of the whole sequence."""
  pred = logits[:, prompt_len - 1:-1].astype(jnp.float32)
  target = tokens[:, prompt_len:]
  return jnp.take_along_axis(jax.nn.log_softmax(pred, axis=-1), target[..., None], axis=-1)[..., 0]


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Schulman's k3 estimator of KL(policy || reference) per token (>= 0)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array,
              mask: jax.Array, *, clip_eps: float = 0.2, beta: float = 0.04
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The clipped surrogate with a KL penalty; logp/old/ref/mask [N, C], advantages [N]."""
  mask = mask.astype(jnp.float32)
  ratio = jnp.exp(logp - old_logp)
  a = advantages[:, None].astype(jnp.float32)
  surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * a)
  kl = kl_k3(logp, ref_logp)
  per_token = -surrogate + beta * kl
  lengths = jnp.maximum(mask.sum(-1), 1.0)
  loss = ((per_token * mask).sum(-1) / lengths).mean()
  tokens = jnp.maximum(mask.sum(), 1.0)
  clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)
  stats = {"kl": (kl * mask).sum() / tokens, "clip_fraction": (clipped * mask).sum() / tokens}
  return loss, stats


def sft_loss(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """Cross-entropy on the reference completions (the cold start before GRPO)."""
  mask = mask.astype(jnp.float32)
  return -(logp * mask).sum() / jnp.maximum(mask.sum(), 1.0)

