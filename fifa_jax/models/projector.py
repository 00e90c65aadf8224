"""Projectors between representation spaces (Section 4.1; Section 5.1: 2-layer MLPs, GELU).

FiFa-MLLM uses four: image -> LLM (I -> I'), box -> LLM (B -> B'), image -> decoder
(I -> I_in) and [SEG] hidden state -> decoder (-> Concept Embedding E).  The layout
is LLaVA's `mlp2x_gelu` (Linear, GELU, Linear).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from fifa_jax.models.layers import gelu, linear


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  in_dim: int
  out_dim: int
  hidden_dim: int | None = None  # None: out_dim, as LLaVA
  # Logical axes of (input, hidden, output) features: chosen per use so a
  # projector into the LLM shards like the LLM's embeddings.
  axes: tuple[str | None, str | None, str | None] = (None, None, None)
  dtype: str = "float32"
  param_dtype: str = "float32"


class Projector(nnx.Module):
  """x [..., in_dim] -> fc2(gelu(fc1(x))) [..., out_dim]."""

  def __init__(self, cfg: ProjectorConfig, *, rngs: nnx.Rngs):
    hidden = cfg.hidden_dim or cfg.out_dim
    a_in, a_hid, a_out = cfg.axes
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.fc1 = linear(cfg.in_dim, hidden, (a_in, a_hid), **kw)
    self.fc2 = linear(hidden, cfg.out_dim, (a_hid, a_out), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(gelu(self.fc1(x)))
