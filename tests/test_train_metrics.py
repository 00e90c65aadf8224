"""The MFU numerator: model FLOPs against XLA's own count of the compiled step."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM
from fifa_jax.models.lora import LoraConfig
from fifa_jax.train import metrics
from fifa_jax.train.losses import text_loss

B, T = 2, 64


def _xla_flops(cfg: LlamaConfig, train_base: bool) -> float:
  """XLA's FLOPs of the gradient step (w.r.t. the adapters, or the whole base)."""
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  graphdef, wrt, rest = nnx.split(model, nnx.Param if train_base else nnx.LoRAParam, ...)
  wrt, rest = nnx.to_pure_dict(wrt), nnx.to_pure_dict(rest)
  ids = jnp.zeros((B, T), jnp.int32)

  def loss(wrt, rest):
    return text_loss(nnx.merge(graphdef, wrt, rest)(ids), ids, jnp.ones_like(ids))

  return metrics.compiled_flops(jax.jit(jax.grad(loss)).lower(wrt, rest).compile())


def _cfg(scan: bool) -> LlamaConfig:
  return LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                     num_attention_heads=4, scan_layers=scan,
                     lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))


@pytest.mark.parametrize("train_base", [False, True])
def test_model_flops_match_xla_on_unrolled_layers(train_base):
  # Unrolled, XLA counts every matmul: the analytic count agrees to a few percent
  # (the rest is elementwise work, the adapters and causal attention's skipped blocks).
  cfg = _cfg(scan=False)
  assert _xla_flops(cfg, train_base) == pytest.approx(
      metrics.model_flops(cfg, B, T, train_base=train_base), rel=0.05)


def test_xla_counts_a_scanned_body_once():
  # Why the MFU does not use XLA's count: with scanned layers it sees one layer of
  # four (plus the head), whatever the trip count.
  cfg = _cfg(scan=True)
  assert _xla_flops(cfg, False) < 0.4 * metrics.model_flops(cfg, B, T)
