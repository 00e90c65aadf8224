"""LoRA for the LLM's linear layers, adapters as `nnx.LoRAParam`.

`LoraLinear` is an `nnx.Linear` (same `kernel` path, so the base weights convert
by name) with an optional low-rank branch: y = x W + scale * dropout(x) A B, with
scale = alpha / rank.  B starts at zero, so a fresh adapter leaves the base
model's output unchanged.

The adapters are `nnx.LoRAParam`, a subclass of `nnx.Param`: select them with
`LORA`, and the frozen base with `BASE` (plain `nnx.Param` matches both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fifa_jax import mesh as mesh_lib

# Projections of a LLaMA block that may carry an adapter (peft's names).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LORA = nnx.LoRAParam
BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The paper fixes only the rank (128). alpha / rank = 2 and dropout 0.05 follow
  LISA/GLaMM (r 8, alpha 16, dropout 0.05), which FiFa starts from."""
  rank: int = 128
  alpha: float = 256.0
  dropout: float = 0.05
  target_modules: tuple[str, ...] = ("q_proj", "v_proj")

  def __post_init__(self):
    if self.rank <= 0:
      raise ValueError(f"LoRA rank must be positive, got {self.rank}")
    targets = tuple(self.target_modules)
    unknown = set(targets) - set(TARGETS)
    if unknown:
      raise ValueError(f"unknown LoRA target modules {sorted(unknown)}; choose from {TARGETS}")
    object.__setattr__(self, "target_modules", targets)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def applies_to(self, name: str) -> bool:
    return name in self.target_modules


class LoraLinear(nnx.Linear):
  """Bias-free `nnx.Linear` ([in, out] kernel) with an optional LoRA branch."""

  def __init__(self, in_features: int, out_features: int, *,
               axes: tuple[str | None, str | None], lora: LoraConfig | None = None,
               dtype=None, param_dtype=jnp.float32,
               kernel_init: nnx.Initializer = nnx.initializers.normal(0.02),
               rngs: nnx.Rngs):
    super().__init__(in_features, out_features, use_bias=False, dtype=dtype,
                     param_dtype=param_dtype,
                     kernel_init=mesh_lib.logical(kernel_init, axes), rngs=rngs)
    self.lora = lora
    if lora is None:
      self.lora_a = self.lora_b = self.lora_dropout = None
      return
    # A like peft (kaiming_uniform with a=sqrt(5): U(+-1/sqrt(in))); B zero.
    a_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    self.lora_a = nnx.LoRAParam(
        a_init(rngs.params(), (in_features, lora.rank), param_dtype),
        out_sharding=(axes[0], "lora_rank"), eager_sharding=False)
    self.lora_b = nnx.LoRAParam(jnp.zeros((lora.rank, out_features), param_dtype),
                                out_sharding=("lora_rank", axes[1]), eager_sharding=False)
    self.lora_dropout = nnx.Dropout(lora.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    # Matmuls on [tokens, features]: the weight gradients then contract one axis, not
    # (batch, seq), which XLA:CPU runs about twice as fast (bench/RESULTS.md).
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    y = super().__call__(x)
    if self.lora is not None:
      dtype = y.dtype
      h = self.lora_dropout(x, deterministic=deterministic or self.lora.dropout == 0.0)
      h = h.astype(dtype) @ self.lora_a[...].astype(dtype)
      h = (h * jnp.asarray(self.lora.scale, dtype)) @ self.lora_b[...].astype(dtype)  # scale the rank-r side
      y = y + h
    return y.reshape(*lead, y.shape[-1])


def lora_layers(model: nnx.Module) -> list[tuple[tuple, LoraLinear]]:
  return [(path, m) for path, m in nnx.iter_graph(model)
          if isinstance(m, LoraLinear) and m.lora is not None]


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Fold every adapter into its base kernel in place: W += scale * A B, then B = 0.

  The model computes the same function afterwards, and its `BASE` state is the
  merged checkpoint in the HF layout (what export writes).
  """
  for _, layer in lora_layers(model):
    delta = layer.lora_a[...] @ layer.lora_b[...] * layer.lora.scale
    layer.kernel[...] = (layer.kernel[...] + delta.astype(layer.kernel[...].dtype))
    layer.lora_b[...] = jnp.zeros_like(layer.lora_b[...])
  return model


def count_params(model: nnx.Module, wrt=nnx.Param) -> int:
  state = nnx.state(model, wrt)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def adapter_names(targets: Sequence[str] | str) -> tuple[str, ...]:
  """'q_proj,v_proj' or 'all' (all seven) -> a target tuple for LoraConfig."""
  if isinstance(targets, str):
    targets = TARGETS if targets == "all" else tuple(t.strip() for t in targets.split(",") if t.strip())
  return tuple(targets)
